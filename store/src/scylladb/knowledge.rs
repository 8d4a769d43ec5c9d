//! The KnowledgeStore area on ScyllaDB (not yet written).

use scylla::client::session::Session;

use super::schema::Migration;
use crate::StoreResult;

pub(super) const MIGRATION: Migration = Migration {
    version: 4,
    description: "knowledge",
    statements: &[],
};

pub(super) struct Statements {}

impl Statements {
    pub(super) async fn prepare(_session: &Session) -> StoreResult<Statements> {
        Ok(Statements {})
    }
}

impl super::ScyllaStore {
    /// Whether jar `id` exists (the marketplace lists only existing jars).
    pub(super) async fn jar_exists(&self, _id: crate::JarId) -> StoreResult<bool> {
        Err(crate::StoreError::Internal(
            "knowledge area not written yet".into(),
        ))
    }
}
