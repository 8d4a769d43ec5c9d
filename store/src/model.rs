//! The records the store keeps. Plain data: no behaviour beyond conversions.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifier of a user.
pub type UserId = Uuid;

/// Milliseconds since the Unix epoch (UTC). The store's only notion of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since_epoch.as_millis() as i64)
    }

    /// This instant moved by `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Normalised (trimmed, lowercase) email; unique.
    pub email: String,
    pub name: String,
    /// Argon2id hash in PHC string format.
    pub password_hash: String,
    pub role: Role,
    /// A deactivated user cannot log in and has no sessions.
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A login session. The bearer token is never stored, only its SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Public id of the session (shown to its user as `session_id`).
    pub id: Uuid,
    /// Hex SHA-256 of the bearer token.
    pub token_hash: String,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// A lease on a key (a conversation, a jar shard): the holder is its single owner until
/// `expires_at`. Every write the owner makes carries the `epoch`; a write with an older
/// epoch is rejected, which fences off a holder that lost the lease without noticing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub owner: String,
    pub epoch: u64,
    pub expires_at: Timestamp,
}

/// A window into a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
}
