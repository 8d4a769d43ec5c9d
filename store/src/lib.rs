//! `sting-store`: the source of truth of a Sting node or cluster.
//!
//! Everything durable (users, sessions, leases, conversations and their messages, honey jars,
//! documents, chunks with their embeddings)
//! goes through the [`Store`] trait. Actors are caches with behaviour: they rebuild from the
//! store and acknowledge a client only after the store accepted the write.
//!
//! The trait is shaped for ScyllaDB's constraints so both backends can honour it:
//! every read is by partition key (or a bounded, time-ordered page of one), there are no joins,
//! and the only read-modify-write is the lease, a conditional write (an LWT on ScyllaDB, a
//! transaction on SQLite). The embedded SQLite backend ([`SqliteStore`]) is the default.
//!
//! One contract suite (`tests`) is written once against `&dyn Store` and run per backend.

pub mod copy;
mod error;
mod model;
mod scylladb;
mod sqlite;
#[cfg(test)]
mod tests;

use async_trait::async_trait;

pub use error::StoreError;
pub(crate) use model::{check_chunks, check_messages, embedding_from_bytes, embedding_to_bytes};
pub use model::{
    conversation_lease_key, Ceremony, CeremonyKind, Chunk, Conversation, ConversationId,
    ConversationQuery, ConversationSort, Document, DocumentId, DocumentStatus, HoneyJar, JarId,
    JarQuery, JarSettings, Lease, License, LicenseType, Listing, ListingId, ListingQuery,
    ListingSort, ListingStatus, Message, MessageRole, MessageStatus, Order, OrderId, OrderStatus,
    Page, Passkey, PruningRecord, Rating, Role, Session, SortOrder, Timestamp, User, UserId,
    Visibility,
};
pub use scylladb::{Replication, ReplicationClass, ScyllaConfig, ScyllaStore};
pub use sqlite::SqliteStore;

/// The store traits, to call any store method on a `dyn Store`.
pub mod prelude {
    pub use crate::{
        ConversationStore, IdentityStore, KnowledgeStore, LeaseStore, MarketStore, Store,
    };
}

/// What a networked backend's driver counted since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientStats {
    /// Requests sent (each page of a paged read counts).
    pub requests: u64,
    /// Requests that failed after the retry policy gave up.
    pub errors: u64,
    /// Retries the retry policy made (idempotent requests only).
    pub retries: u64,
    pub request_timeouts: u64,
    pub connection_timeouts: u64,
    /// Open connections (one per shard per node on ScyllaDB).
    pub connections: u64,
    /// Request latency in milliseconds: mean and 99th percentile.
    pub latency_mean_ms: u64,
    pub latency_p99_ms: u64,
}

/// Result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The persistence contract every backend implements: the area traits below, and these.
///
/// All methods are cancel-safe in the sense that a dropped future either committed its write
/// or left nothing behind: no partial writes. The areas are separate traits so that a backend
/// is written, and contract-tested, area by area. On a `dyn Store` every method is at hand; on
/// a backend's own type, `use sting_store::prelude::*`.
#[async_trait]
pub trait Store:
    IdentityStore
    + LeaseStore
    + ConversationStore
    + KnowledgeStore
    + MarketStore
    + Send
    + Sync
    + 'static
{
    /// A short human name of the backend, for status pages ("sqlite", "scylla").
    fn backend_name(&self) -> &'static str;

    /// Checks that the backend answers a trivial query.
    async fn ping(&self) -> StoreResult<()>;

    /// Makes every acknowledged write durable and compacts logs (called at shutdown).
    async fn flush(&self) -> StoreResult<()>;

    /// The client's own counters for a networked backend (the ScyllaDB driver's), exported to
    /// Prometheus; `None` for an embedded one.
    fn client_stats(&self) -> Option<ClientStats> {
        None
    }
}

/// Accounts, login sessions and passkeys.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    // ---- users ----

    /// Creates a user. Fails with [`StoreError::Conflict`] when the email is taken.
    async fn create_user(&self, user: &User) -> StoreResult<()>;

    /// Reads a user by id.
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;

    /// Reads a user by (already normalised) email.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;

    /// Replaces a user's mutable fields (email, name, role, active, password hash).
    /// Fails with [`StoreError::NotFound`] for an unknown id and [`StoreError::Conflict`]
    /// when the new email belongs to another user.
    async fn update_user(&self, user: &User) -> StoreResult<()>;

    /// One page of users in creation order, and the total number of users.
    async fn list_users(&self, page: Page) -> StoreResult<(Vec<User>, u64)>;

    // ---- sessions ----

    /// Stores a new session (keyed by the hash of its token; the token itself is never stored).
    async fn create_session(&self, session: &Session) -> StoreResult<()>;

    /// Reads a session by token hash, expired or not (the caller decides).
    async fn session(&self, token_hash: &str) -> StoreResult<Option<Session>>;

    /// Slides a session's expiry. Returns `false` when the session no longer exists
    /// (revoked meanwhile), in which case nothing is written.
    async fn touch_session(
        &self,
        token_hash: &str,
        expires_at: Timestamp,
        last_seen_at: Timestamp,
    ) -> StoreResult<bool>;

    /// Deletes one session. Deleting a missing session is not an error.
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;

    /// Deletes every session of a user and returns the token hashes that were deleted.
    async fn delete_user_sessions(&self, user_id: UserId) -> StoreResult<Vec<String>>;

    /// Deletes sessions that expired before `now`; returns how many went.
    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64>;

    // ---- passkeys (WebAuthn credentials) and their ceremonies ----

    /// Registers a passkey. [`StoreError::Conflict`] when the credential id is registered
    /// already (to anyone): a credential belongs to one account.
    async fn create_passkey(&self, passkey: &Passkey) -> StoreResult<()>;

    /// Reads a passkey by credential id.
    async fn passkey(&self, credential_id: &str) -> StoreResult<Option<Passkey>>;

    /// A user's passkeys, oldest first. Bounded by what one user registers.
    async fn passkeys_of(&self, user_id: UserId) -> StoreResult<Vec<Passkey>>;

    /// Records a login with a passkey: its new signature counter and serialised credential.
    /// A compare-and-set: [`StoreError::Conflict`] when `sign_count` does not go above the
    /// stored counter (unless both are 0: authenticators without a counter), which betrays
    /// a cloned authenticator or a replay racing this one. [`StoreError::NotFound`] when the
    /// passkey was deleted meanwhile.
    async fn record_passkey_use(
        &self,
        credential_id: &str,
        sign_count: u32,
        credential: &str,
        at: Timestamp,
    ) -> StoreResult<()>;

    /// Deletes one of `user_id`'s passkeys; `false` when they have none with this id.
    async fn delete_passkey(&self, user_id: UserId, credential_id: &str) -> StoreResult<bool>;

    /// Stores a ceremony, replacing one with the same id, and forgets ceremonies that
    /// expired before `now` (so abandoned ones do not pile up).
    async fn put_ceremony(&self, ceremony: &Ceremony, now: Timestamp) -> StoreResult<()>;

    /// Takes a ceremony out: it is deleted whether or not it expired, and returned only when
    /// it is still valid at `now`. At most one caller ever gets it (challenges are single-use).
    async fn take_ceremony(&self, id: &str, now: Timestamp) -> StoreResult<Option<Ceremony>>;
}

/// Single ownership of a key (a conversation, a jar shard), fenced by epochs.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease on `key` for `owner` until `now + ttl_ms`.
    ///
    /// Succeeds when the lease is free, expired, or already held by `owner` (then it is
    /// extended and keeps its epoch). A change of holder increments the epoch, which never
    /// goes back, even across release. Fails with [`StoreError::LeaseHeld`] while another
    /// owner holds an unexpired lease.
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease>;

    /// Extends a lease still held with the same owner and epoch; otherwise
    /// [`StoreError::StaleLease`] and nothing is written.
    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64, now: Timestamp) -> StoreResult<Lease>;

    /// Gives a lease up so that another owner can take it at once. A stale lease
    /// (other owner or epoch) is refused with [`StoreError::StaleLease`] and changes nothing.
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// The current state of a lease, if it was ever taken.
    async fn lease(&self, key: &str) -> StoreResult<Option<Lease>>;

    /// Takes `observed` over for `owner` before it expires, with the next epoch: for when the
    /// cluster declared its holder down. A compare-and-set on owner and epoch (an LWT on
    /// ScyllaDB): when the lease changed since it was observed, [`StoreError::StaleLease`] and
    /// nothing is written. The old holder's writes are refused from then on.
    async fn take_over_lease(
        &self,
        observed: &Lease,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease>;
}

/// Conversations and their messages, written by their owner only, fenced by its lease.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    /// Writes a conversation's record together with its new messages, in one atomic step,
    /// provided `lease` is still the current tenure of the conversation's lease
    /// ([`StoreError::StaleLease`] otherwise, and nothing is written).
    ///
    /// `create` inserts the record ([`StoreError::Conflict`] when it exists); otherwise the
    /// record must exist ([`StoreError::NotFound`] once the conversation was deleted, so a
    /// deletion is never undone by a late write). Re-writing a message with the same
    /// `(conversation_id, seq)` and id is a no-op, which makes retries safe.
    async fn save_conversation(
        &self,
        lease: &Lease,
        conversation: &Conversation,
        new_messages: &[Message],
        create: bool,
    ) -> StoreResult<()>;

    /// Reads a conversation's record.
    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>>;

    /// One page of a user's conversations matching `query`, in its order, and how many match.
    async fn list_conversations(
        &self,
        user_id: UserId,
        query: &ConversationQuery,
    ) -> StoreResult<(Vec<Conversation>, u64)>;

    /// Up to `limit` messages of a conversation with `seq >= from_seq`, in order.
    async fn messages(
        &self,
        conversation_id: ConversationId,
        from_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>>;

    /// Deletes a conversation with all its messages and its summary. Returns whether it
    /// existed. Not fenced: the user's decision wins over an owner's later writes, which
    /// then fail with [`StoreError::NotFound`].
    async fn delete_conversation(&self, id: ConversationId) -> StoreResult<bool>;
}

/// Honey jars, their documents and the documents' chunks.
#[async_trait]
pub trait KnowledgeStore: Send + Sync + 'static {
    /// Creates a jar ([`StoreError::Conflict`] when the id exists).
    async fn create_jar(&self, jar: &HoneyJar) -> StoreResult<()>;

    /// Reads a jar.
    async fn jar(&self, id: JarId) -> StoreResult<Option<HoneyJar>>;

    /// Replaces a jar's mutable fields (name, description, visibility, tags, settings,
    /// shared_with, wrapped_key, updated_at); counts are left alone.
    /// [`StoreError::NotFound`] for an unknown id.
    async fn update_jar(&self, jar: &HoneyJar) -> StoreResult<()>;

    /// Deletes a jar with all its documents and chunks, in one step. Returns whether it existed.
    async fn delete_jar(&self, id: JarId) -> StoreResult<bool>;

    /// One page of the jars matching `query` (newest first), and how many match.
    async fn list_jars(&self, query: &JarQuery) -> StoreResult<(Vec<HoneyJar>, u64)>;

    /// Every jar `reader` may read (owned, shared with them, public), without paging: the
    /// candidate set of a search. Bounded by what one user can reach.
    async fn readable_jars(&self, reader: UserId) -> StoreResult<Vec<HoneyJar>>;

    /// Creates a document record ([`StoreError::NotFound`] when its jar is gone).
    async fn create_document(&self, document: &Document) -> StoreResult<()>;

    /// Reads a document.
    async fn document(&self, id: DocumentId) -> StoreResult<Option<Document>>;

    /// Replaces a document's record (status, progress, counts, metadata...).
    /// [`StoreError::NotFound`] once it was deleted, so a late pipeline write never
    /// resurrects it.
    async fn update_document(&self, document: &Document) -> StoreResult<()>;

    /// One page of a jar's documents (newest first), and how many it has.
    async fn list_documents(&self, jar_id: JarId, page: Page) -> StoreResult<(Vec<Document>, u64)>;

    /// Documents with a given status across all jars, oldest first (at most `limit`): at start,
    /// the ones a crash left `processing`.
    async fn documents_with_status(
        &self,
        status: DocumentStatus,
        limit: u32,
    ) -> StoreResult<Vec<Document>>;

    /// Deletes a document and its chunks, taking them off its jar's counts in the same step.
    /// Returns the deleted record, if it existed.
    async fn delete_document(&self, id: DocumentId) -> StoreResult<Option<Document>>;

    /// Stores a document's chunks (with embeddings) and its updated record together, in one
    /// step, replacing chunks stored before (a re-run of the pipeline), and moves its jar's
    /// counts by the difference in the same step: saving the same chunks again changes no
    /// count. [`StoreError::NotFound`] when the document was deleted meanwhile (nothing is
    /// written).
    async fn save_chunks(&self, document: &Document, chunks: &[Chunk]) -> StoreResult<()>;

    /// A document's chunks in order.
    async fn document_chunks(&self, document_id: DocumentId) -> StoreResult<Vec<Chunk>>;

    /// A page of a jar's chunks, ordered by (document_id, seq), strictly after `after` (a
    /// cursor: the last chunk of the previous page): how a shard index is rebuilt.
    async fn jar_chunks(
        &self,
        jar_id: JarId,
        after: Option<(DocumentId, u32)>,
        limit: u32,
    ) -> StoreResult<Vec<Chunk>>;
}

/// The marketplace: listings, orders (a paid order is a license) and ratings.
#[async_trait]
pub trait MarketStore: Send + Sync + 'static {
    /// Creates a listing ([`StoreError::NotFound`] when its jar is gone,
    /// [`StoreError::Conflict`] when the id exists).
    async fn create_listing(&self, listing: &Listing) -> StoreResult<()>;

    /// Reads a listing (active or withdrawn).
    async fn listing(&self, id: ListingId) -> StoreResult<Option<Listing>>;

    /// Replaces a listing's mutable fields (title, description, price, currency, category,
    /// license type, preview, status, updated_at); the jar, seller and ratings are left alone.
    async fn update_listing(&self, listing: &Listing) -> StoreResult<()>;

    /// One page of the *active* listings matching `query`, and how many match.
    async fn list_listings(&self, query: &ListingQuery) -> StoreResult<(Vec<Listing>, u64)>;

    /// Records an order once per (buyer, idempotency key): when the buyer used the key before,
    /// the first order comes back and nothing is written. [`StoreError::Conflict`] when the
    /// buyer already has another order (not cancelled) for the listing.
    async fn place_order(&self, order: &Order) -> StoreResult<Order>;

    /// Reads an order.
    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>>;

    /// Marks an order paid at `at` (again: unchanged), which makes it a license.
    /// [`StoreError::Conflict`] for a cancelled order.
    async fn mark_order_paid(&self, id: OrderId, at: Timestamp) -> StoreResult<Order>;

    /// One page of a buyer's orders (newest first), and how many they have.
    async fn orders_of(&self, buyer: UserId, page: Page) -> StoreResult<(Vec<Order>, u64)>;

    /// One page of every buyer's orders, oldest first (the queue of invoices to settle), only
    /// those with `status` when given, and how many match.
    async fn list_orders(
        &self,
        status: Option<OrderStatus>,
        page: Page,
    ) -> StoreResult<(Vec<Order>, u64)>;

    /// A buyer's licenses: their paid orders. Bounded by what one user buys.
    async fn licenses_of(&self, buyer: UserId) -> StoreResult<Vec<License>>;

    /// Sets `buyer`'s rating (1–5 stars) of a listing, replacing theirs, and moves the
    /// listing's sum and count in the same step; returns the listing.
    async fn rate_listing(
        &self,
        listing: ListingId,
        buyer: UserId,
        stars: u8,
        at: Timestamp,
    ) -> StoreResult<Listing>;
}
