use crate::Timestamp;

/// Failures of a store operation, by meaning rather than by backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The addressed record does not exist.
    #[error("{entity} not found")]
    NotFound { entity: &'static str },
    /// A uniqueness rule would be broken (e.g. an email already in use).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Another owner holds the lease until `expires_at`.
    #[error("lease {key} is held by {owner} until {expires_at:?}")]
    LeaseHeld {
        key: String,
        owner: String,
        expires_at: Timestamp,
    },
    /// The caller's lease (owner + epoch) is no longer the current one.
    #[error("lease {key} with epoch {epoch} is stale")]
    StaleLease { key: String, epoch: u64 },
    /// The backend is temporarily unable to answer (busy, locked, unreachable); retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: corrupt data, I/O failure, a bug.
    #[error("store internal error: {0}")]
    Internal(String),
}
