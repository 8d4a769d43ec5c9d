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

/// Which of a user's conversations a listing returns, in which order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationQuery {
    pub sort: ConversationSort,
    pub order: SortOrder,
    /// Case-insensitive substring of the title.
    pub search: Option<String>,
    pub page: Page,
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

/// Identifier of a honey jar (a knowledge collection).
pub type JarId = Uuid;
/// Identifier of a document in a honey jar.
pub type DocumentId = Uuid;

/// Who may read a honey jar (its owner and admins always may).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// The owner only.
    Private,
    /// The owner and the users it is shared with.
    Shared,
    /// Every authenticated user.
    Public,
}

impl Visibility {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Public => "public",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Visibility> {
        match s {
            "private" => Some(Visibility::Private),
            "shared" => Some(Visibility::Shared),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }
}

/// A honey jar's switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JarSettings {
    /// Whether readers other than the owner may search and ask it.
    pub allow_search: bool,
    /// Whether it may be exported (HJX).
    pub allow_export: bool,
    /// Whether its document originals are encrypted at rest.
    pub encryption_enabled: bool,
}

/// A knowledge collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoneyJar {
    pub id: JarId,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    pub visibility: Visibility,
    pub tags: Vec<String>,
    pub settings: JarSettings,
    /// Users a `Shared` jar is shared with (ignored for other visibilities).
    pub shared_with: Vec<UserId>,
    /// The jar's data key wrapped (encrypted) by the node's key, when encryption is enabled.
    pub wrapped_key: Option<Vec<u8>>,
    /// Documents with stored chunks (processed) and their chunks' embeddings; kept by
    /// [`crate::Store::save_chunks`] and [`crate::Store::delete_document`] together with the
    /// chunks, so they cannot drift from them.
    pub document_count: u64,
    pub embedding_count: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Which jars a listing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JarQuery {
    /// Only jars this user may read; `None` for every jar (admins).
    pub reader: Option<UserId>,
    pub visibility: Option<Visibility>,
    pub owner: Option<UserId>,
    /// Jars carrying this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of the name or description.
    pub search: Option<String>,
    pub page: Page,
}

/// Where a document is in the ingestion pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentStatus {
    Processing,
    Processed,
    Failed,
}

impl DocumentStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentStatus::Processing => "processing",
            DocumentStatus::Processed => "processed",
            DocumentStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<DocumentStatus> {
        match s {
            "processing" => Some(DocumentStatus::Processing),
            "processed" => Some(DocumentStatus::Processed),
            "failed" => Some(DocumentStatus::Failed),
            _ => None,
        }
    }
}

/// A document uploaded into a jar. Its original is kept beside the store (a blob file); its
/// text lives in its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: DocumentId,
    pub jar_id: JarId,
    /// Who uploaded it.
    pub uploader_id: UserId,
    /// Sanitised file name.
    pub filename: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Bytes of the original.
    pub size: u64,
    pub mime_type: String,
    /// "pdf", "docx", "markdown", "html", "text", "json" or "csv" (detected from the content).
    pub kind: String,
    /// Hex SHA-256 of the original.
    pub sha256: String,
    pub status: DocumentStatus,
    /// 0–100 while processing.
    pub progress: u8,
    /// Why processing failed.
    pub error: Option<String>,
    pub chunk_count: u64,
    pub embedding_count: u64,
    pub processing_ms: Option<u64>,
    /// Times processing was started on it: a document that keeps taking its node down is
    /// failed after a few, not resumed forever.
    pub processing_attempts: u32,
    pub pages: Option<u32>,
    pub word_count: u64,
    /// ISO 639-1 code when detected.
    pub language: Option<String>,
    pub uploaded_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Document {
    /// The record of an original just uploaded into `jar_id` by `uploader_id`: `processing`,
    /// titled by its file name, of unknown kind, with nothing extracted yet.
    pub fn new_upload(
        jar_id: JarId,
        uploader_id: UserId,
        filename: String,
        size: u64,
        sha256: String,
    ) -> Document {
        let now = Timestamp::now();
        Document {
            id: Uuid::new_v4(),
            jar_id,
            uploader_id,
            title: filename.clone(),
            filename,
            description: String::new(),
            tags: Vec::new(),
            size,
            mime_type: "application/octet-stream".into(),
            kind: "unknown".into(),
            sha256,
            status: DocumentStatus::Processing,
            progress: 0,
            error: None,
            chunk_count: 0,
            embedding_count: 0,
            processing_ms: None,
            processing_attempts: 0,
            pages: None,
            word_count: 0,
            language: None,
            uploaded_at: now,
            updated_at: now,
        }
    }
}

/// A piece of a document's text with its embedding: what search finds.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub document_id: DocumentId,
    pub jar_id: JarId,
    /// Position in the document, from 0.
    pub seq: u32,
    pub text: String,
    /// Page (from 1) where the chunk starts, for paged formats.
    pub page: Option<u32>,
    /// The heading of the section the chunk belongs to.
    pub section: Option<String>,
    pub token_count: u32,
    /// Unit vector from the jar's embedding model.
    pub embedding: Vec<f32>,
}

// ---- marketplace ----

/// Identifier of a marketplace listing.
pub type ListingId = Uuid;
/// Identifier of a purchase order.
pub type OrderId = Uuid;

/// What a license lets its buyer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseType {
    /// The buyer alone, and only the documents the jar held when the order was paid.
    SingleUse,
    /// The buyer alone, including documents the owner adds later.
    Personal,
}

impl LicenseType {
    pub fn as_str(self) -> &'static str {
        match self {
            LicenseType::SingleUse => "single_use",
            LicenseType::Personal => "personal",
        }
    }

    pub fn parse(s: &str) -> Option<LicenseType> {
        match s {
            "single_use" => Some(LicenseType::SingleUse),
            "personal" => Some(LicenseType::Personal),
            _ => None,
        }
    }
}

/// Whether a listing can be bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListingStatus {
    Active,
    /// Taken off the market by its seller; licenses already granted stay valid.
    Withdrawn,
}

impl ListingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ListingStatus::Active => "active",
            ListingStatus::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<ListingStatus> {
        match s {
            "active" => Some(ListingStatus::Active),
            "withdrawn" => Some(ListingStatus::Withdrawn),
            _ => None,
        }
    }
}

/// A jar offered for sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub id: ListingId,
    pub jar_id: JarId,
    pub seller_id: UserId,
    pub title: String,
    pub description: String,
    /// In minor units of `currency` (cents for USD): money is never a float.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    pub category: String,
    pub license_type: LicenseType,
    pub preview_enabled: bool,
    pub status: ListingStatus,
    /// Sum and number of buyers' ratings (1–5 each).
    pub rating_sum: u64,
    pub rating_count: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// How listings are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingSort {
    Price,
    /// Mean rating (unrated listings last).
    Rating,
    CreatedAt,
}

/// Which listings a marketplace page shows (active ones only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingQuery {
    pub category: Option<String>,
    pub price_min_minor: Option<i64>,
    pub price_max_minor: Option<i64>,
    /// Mean rating at least this, in hundredths (350 = 3.5 stars).
    pub rating_min_centi: Option<u64>,
    /// Case-insensitive substring of the title or description.
    pub search: Option<String>,
    pub sort: ListingSort,
    pub order: SortOrder,
    pub page: Page,
}

/// Where a purchase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Recorded; the invoice is to be paid (the built-in payment provider).
    PendingInvoice,
    Paid,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingInvoice => "pending_invoice",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "pending_invoice" => Some(OrderStatus::PendingInvoice),
            "paid" => Some(OrderStatus::Paid),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }
}

/// A purchase of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub listing_id: ListingId,
    pub jar_id: JarId,
    pub buyer_id: UserId,
    /// The buyer's key for retries: the same key returns this order again.
    pub idempotency_key: String,
    /// The price when bought.
    pub amount_minor: i64,
    pub currency: String,
    pub license_type: LicenseType,
    pub payment_method: String,
    /// Billing details as given (JSON object text).
    pub billing: String,
    pub status: OrderStatus,
    pub created_at: Timestamp,
    /// When it was paid (the license's documents cut-off for `single_use`).
    pub paid_at: Option<Timestamp>,
}

/// An embedding as stored: little-endian f32 bytes, exact bit for bit.
pub fn embedding_to_bytes(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The embedding stored as `bytes`; `None` when they are not whole f32s.
pub fn embedding_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Refuses chunks that belong to another document (or another jar): they would be stored
/// under keys their own document's deletion never reaches. Refuses two chunks with one `seq`
/// too: one would silently replace the other.
pub fn check_chunks(document: &Document, chunks: &[Chunk]) -> crate::StoreResult<()> {
    if let Some(stray) = chunks
        .iter()
        .find(|c| c.document_id != document.id || c.jar_id != document.jar_id)
    {
        return Err(crate::StoreError::Internal(format!(
            "chunk {} of document {} in jar {} saved with document {} in jar {}",
            stray.seq, stray.document_id, stray.jar_id, document.id, document.jar_id
        )));
    }
    let mut seqs: Vec<u32> = chunks.iter().map(|c| c.seq).collect();
    seqs.sort_unstable();
    match seqs.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(crate::StoreError::Internal(format!(
            "chunk {} of document {} saved twice in one save",
            pair[0], document.id
        ))),
        None => Ok(()),
    }
}

/// Refuses messages of another conversation in a save of `conversation`.
pub fn check_messages(conversation: &Conversation, messages: &[Message]) -> crate::StoreResult<()> {
    match messages
        .iter()
        .find(|m| m.conversation_id != conversation.id)
    {
        Some(stray) => Err(crate::StoreError::Internal(format!(
            "message {} belongs to conversation {}, not {}",
            stray.id, stray.conversation_id, conversation.id
        ))),
        None => Ok(()),
    }
}

/// A buyer's rating of a listing (one per buyer; a new one replaces it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    pub listing_id: ListingId,
    pub buyer_id: UserId,
    /// 1 to 5.
    pub stars: u8,
    pub rated_at: Timestamp,
}

impl Order {
    /// The license a paid order grants.
    pub fn license(&self) -> License {
        License {
            order_id: self.id,
            listing_id: self.listing_id,
            jar_id: self.jar_id,
            buyer_id: self.buyer_id,
            license_type: self.license_type,
            granted_at: self.paid_at.unwrap_or(self.created_at),
        }
    }
}

/// A buyer's right to read a jar: an order that was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    pub order_id: OrderId,
    pub listing_id: ListingId,
    pub jar_id: JarId,
    pub buyer_id: UserId,
    pub license_type: LicenseType,
    pub granted_at: Timestamp,
}

/// A passkey (WebAuthn credential) registered to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passkey {
    /// The credential id the authenticator chose, base64url without padding (unique).
    pub credential_id: String,
    pub user_id: UserId,
    /// The user handle given to the authenticator at registration, base64url.
    pub user_handle: String,
    /// The owner's label for it ("laptop", "phone").
    pub name: String,
    /// The credential's COSE public key, as JSON (algorithm, curve, coordinates).
    pub public_key: String,
    /// The highest signature counter seen; an assertion must go above it (unless both are 0).
    pub sign_count: u32,
    /// Transports the authenticator reported ("usb", "internal", "hybrid", ...).
    pub transports: Vec<String>,
    /// The WebAuthn library's own serialised credential; opaque to the store.
    pub credential: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

/// Which WebAuthn ceremony a challenge belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    Registration,
    Authentication,
}

impl CeremonyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Registration => "registration",
            CeremonyKind::Authentication => "authentication",
        }
    }

    pub fn parse(s: &str) -> Option<CeremonyKind> {
        match s {
            "registration" => Some(CeremonyKind::Registration),
            "authentication" => Some(CeremonyKind::Authentication),
            _ => None,
        }
    }
}

/// A WebAuthn challenge in flight: kept server-side until it is answered once or expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceremony {
    pub id: String,
    pub kind: CeremonyKind,
    /// The user the ceremony is for (registering, or logging in).
    pub user_id: UserId,
    /// What else must match when it is answered: the registering session's token hash, or ""
    /// for a login (the ceremony id itself is the secret then).
    pub binding: String,
    /// The WebAuthn library's serialised ceremony state (challenge, allowed credentials).
    pub state: String,
    pub expires_at: Timestamp,
}
