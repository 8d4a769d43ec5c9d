//! The IdentityStore area on ScyllaDB (not yet written).

use scylla::client::session::Session;

use super::schema::Migration;
use crate::StoreResult;

pub(super) const MIGRATION: Migration = Migration {
    version: 2,
    description: "identity",
    statements: &[],
};

pub(super) struct Statements {}

impl Statements {
    pub(super) async fn prepare(_session: &Session) -> StoreResult<Statements> {
        Ok(Statements {})
    }
}
