//! The MarketStore area on ScyllaDB (not yet written).

use scylla::client::session::Session;

use super::schema::Migration;
use crate::StoreResult;

pub(super) const MIGRATION: Migration = Migration {
    version: 5,
    description: "market",
    statements: &[],
};

pub(super) struct Statements {}

impl Statements {
    pub(super) async fn prepare(_session: &Session) -> StoreResult<Statements> {
        Ok(Statements {})
    }
}

impl super::ScyllaStore {
    /// Removes a deleted jar's listings and their ratings (orders stay, as the buyers'
    /// history); called by `delete_jar`.
    pub(super) async fn delete_jar_listings(&self, _jar: crate::JarId) -> StoreResult<()> {
        Err(crate::StoreError::Internal(
            "market area not written yet".into(),
        ))
    }
}
