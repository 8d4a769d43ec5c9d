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

/// Identifier of a conversation (a random UUID, so ids cannot be guessed).
pub type ConversationId = Uuid;

/// A conversation's record: what listings show and what its actor needs besides messages.
/// Written only by the conversation's owner, under its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: ConversationId,
    pub user_id: UserId,
    /// Derived from the first user message.
    pub title: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Model of the latest answer (token usage is counted with its tokenizer).
    pub model: String,
    /// Messages are numbered 1..=message_count without gaps.
    pub message_count: u64,
    /// A preview of the latest message.
    pub last_message: String,
    /// Running summary of the pruned messages, injected into the prompt.
    pub summary: Option<String>,
    /// Messages with `seq <= pruned_through` are summarised and no longer sent to the model
    /// (they stay in the history, marked pruned). 0 when nothing was pruned.
    pub pruned_through: u64,
    pub last_pruning: Option<PruningRecord>,
}

/// What the latest pruning did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruningRecord {
    pub timestamp: Timestamp,
    pub messages_pruned: u64,
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// True when the conversation outgrew its budget and was pruned before a request.
    pub automatic: bool,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
}

impl MessageRole {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<MessageRole> {
        match s {
            "user" => Some(MessageRole::User),
            "assistant" => Some(MessageRole::Assistant),
            _ => None,
        }
    }
}

/// How a message came to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Complete,
    /// The client stopped the generation; the message holds the partial answer.
    Cancelled,
}

impl MessageStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Complete => "complete",
            MessageStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<MessageStatus> {
        match s {
            "complete" => Some(MessageStatus::Complete),
            "cancelled" => Some(MessageStatus::Cancelled),
            _ => None,
        }
    }
}

/// One message of a conversation. Immutable once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub conversation_id: ConversationId,
    /// Position in the conversation, from 1.
    pub seq: u64,
    pub id: Uuid,
    pub role: MessageRole,
    pub content: String,
    /// The model that wrote an assistant message.
    pub model: Option<String>,
    pub status: MessageStatus,
    pub created_at: Timestamp,
}

/// Which timestamp orders a conversation listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationSort {
    CreatedAt,
    UpdatedAt,
}

/// Direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// The lease key that fences writes to a conversation.
pub fn conversation_lease_key(id: ConversationId) -> String {
    format!("conversation:{id}")
}
