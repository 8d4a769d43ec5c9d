//! Moving an embedded deployment to another store (`sting store copy`): every record of a
//! SQLite store written into a target store through the target's own [`Store`] operations, so
//! that every table the target derives from a record (a ScyllaDB listing table, an index) is
//! written as the live system would write it.
//!
//! - **Resumable.** The copy runs in stages (users, sessions, ...), each walking its records in
//!   a stable order. After every page the position is saved in a checkpoint file, and every
//!   write is repeatable (an existing record is updated or left, a chunk save replaces), so a
//!   copy stopped anywhere resumes where it stopped and ends in the same state.
//! - **Verified.** [`verify`] reads every record back from both stores, compares counts and a
//!   SHA-256 digest per table, and names the first record that differs.
//!
//! The source must not be written meanwhile: stop the nodes first. Leases and WebAuthn
//! ceremonies are not copied: both live for minutes and mean nothing to a stopped deployment.

use std::fmt::Debug;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::prelude::*;
use crate::{
    ConversationQuery, ConversationSort, HoneyJar, JarQuery, Listing, OrderStatus, Page, SortOrder,
    SqliteStore, StoreError, StoreResult, Timestamp, User,
};

/// Records read per page of the source.
const PAGE: u32 = 200;
/// Messages written per save: bounds a ScyllaDB batch.
const MESSAGES_PER_SAVE: u32 = 100;
/// The lease owner the copy writes conversations under.
const COPY_OWNER: &str = "sting-store-copy";
const COPY_LEASE_MS: i64 = 300_000;

/// The stages of a copy, in order: each relies on the ones before it (documents on jars,
/// ratings on orders, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Users,
    Sessions,
    Passkeys,
    Jars,
    Documents,
    Listings,
    Orders,
    Ratings,
    Conversations,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Users,
        Stage::Sessions,
        Stage::Passkeys,
        Stage::Jars,
        Stage::Documents,
        Stage::Listings,
        Stage::Orders,
        Stage::Ratings,
        Stage::Conversations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Users => "users",
            Stage::Sessions => "sessions",
            Stage::Passkeys => "passkeys",
            Stage::Jars => "jars",
            Stage::Documents => "documents",
            Stage::Listings => "listings",
            Stage::Orders => "orders",
            Stage::Ratings => "ratings",
            Stage::Conversations => "conversations",
        }
    }
}

/// Where a copy stands: saved after every page, read back to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// What the copy writes to; a checkpoint for another target is not resumed.
    pub target: String,
    /// The stage in progress (`None`: all done).
    pub stage: Option<Stage>,
    /// How many of the stage's units (records, or the users / jars whose records it copies)
    /// are copied.
    pub done: u64,
}

/// What a copy reports as it goes.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: Stage,
    /// Units of the stage copied so far.
    pub done: u64,
    /// Records written in this stage (a user's passkeys, a jar's documents and chunks...).
    pub records: u64,
}

/// Copies every record of `source` into `target`, resuming from `checkpoint_path` when it
/// holds a checkpoint for the same `target_name`. Calls `progress` after every page.
pub async fn copy(
    source: &SqliteStore,
    target: &dyn Store,
    target_name: &str,
    checkpoint_path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> StoreResult<()> {
    let mut checkpoint = match read_checkpoint(checkpoint_path)? {
        Some(saved) if saved.target == target_name => saved,
        _ => Checkpoint {
            target: target_name.to_owned(),
            stage: Some(Stage::Users),
            done: 0,
        },
    };
    let copier = Copier { source, target };
    while let Some(stage) = checkpoint.stage {
        let mut records = 0;
        loop {
            let page = Page {
                limit: PAGE,
                offset: checkpoint.done,
            };
            let (units, written) = copier.copy_page(stage, page).await?;
            checkpoint.done += units;
            records += written;
            write_checkpoint(checkpoint_path, &checkpoint)?;
            progress(Progress {
                stage,
                done: checkpoint.done,
                records,
            });
            if units < u64::from(PAGE) {
                break;
            }
        }
        let next = Stage::ALL.iter().position(|s| *s == stage).map(|i| i + 1);
        checkpoint.stage = next.and_then(|i| Stage::ALL.get(i).copied());
        checkpoint.done = 0;
        write_checkpoint(checkpoint_path, &checkpoint)?;
    }
    Ok(())
}

fn read_checkpoint(path: &Path) -> StoreResult<Option<Checkpoint>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| StoreError::Internal(format!("copy checkpoint {path:?}: {err}"))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(StoreError::Internal(format!(
            "reading the copy checkpoint {path:?}: {err}"
        ))),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a checkpoint.
fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> StoreResult<()> {
    let fail = |err: std::io::Error| {
        StoreError::Internal(format!("writing the copy checkpoint {path:?}: {err}"))
    };
    let json = serde_json::to_vec_pretty(checkpoint)
        .map_err(|err| StoreError::Internal(format!("copy checkpoint: {err}")))?;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, json).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

struct Copier<'a> {
    source: &'a SqliteStore,
    target: &'a dyn Store,
}

impl Copier<'_> {
    /// Copies one page of `stage`'s units; returns how many units the page held and how many
    /// records were written.
    async fn copy_page(&self, stage: Stage, page: Page) -> StoreResult<(u64, u64)> {
        let source = self.source;
        let target = self.target;
        let mut written = 0;
        let units = match stage {
            Stage::Users => {
                let (users, _) = source.list_users(page).await?;
                for user in &users {
                    match target.user(user.id).await? {
                        Some(copied) if &copied == user => {}
                        Some(_) => target.update_user(user).await?,
                        None => target.create_user(user).await?,
                    }
                    written += 1;
                }
                users.len()
            }
            Stage::Sessions => {
                let sessions = source.export_sessions(page).await?;
                for session in &sessions {
                    if target.session(&session.token_hash).await?.is_none() {
                        target.create_session(session).await?;
                    }
                    written += 1;
                }
                sessions.len()
            }
            Stage::Passkeys => {
                let (users, _) = source.list_users(page).await?;
                for user in &users {
                    for passkey in source.passkeys_of(user.id).await? {
                        if target.passkey(&passkey.credential_id).await?.is_none() {
                            target.create_passkey(&passkey).await?;
                        }
                        written += 1;
                    }
                }
                users.len()
            }
            Stage::Jars => {
                let (jars, _) = source.list_jars(&all_jars(page)).await?;
                for jar in &jars {
                    match target.jar(jar.id).await? {
                        Some(_) => target.update_jar(jar).await?,
                        // Counts start at zero: the documents stage moves them as it saves
                        // chunks, as ingestion does.
                        None => {
                            target
                                .create_jar(&HoneyJar {
                                    document_count: 0,
                                    embedding_count: 0,
                                    ..jar.clone()
                                })
                                .await?
                        }
                    }
                    written += 1;
                }
                jars.len()
            }
            Stage::Documents => {
                let (jars, _) = source.list_jars(&all_jars(page)).await?;
                for jar in &jars {
                    written += self.copy_documents(jar).await?;
                }
                jars.len()
            }
            Stage::Listings => {
                let listings = source.export_listings(page).await?;
                for listing in &listings {
                    match target.listing(listing.id).await? {
                        Some(_) => target.update_listing(listing).await?,
                        // Ratings start at zero: the ratings stage moves them.
                        None => {
                            target
                                .create_listing(&Listing {
                                    rating_sum: 0,
                                    rating_count: 0,
                                    ..listing.clone()
                                })
                                .await?
                        }
                    }
                    written += 1;
                }
                listings.len()
            }
            Stage::Orders => {
                let (orders, _) = source.list_orders(None, page).await?;
                for order in &orders {
                    // Idempotent per (buyer, key): a second run returns the first order, which
                    // a payment since the first run still has to reach.
                    let placed = target.place_order(order).await?;
                    if let (OrderStatus::Paid, Some(paid_at)) = (order.status, order.paid_at) {
                        if placed.status != OrderStatus::Paid {
                            target.mark_order_paid(order.id, paid_at).await?;
                        }
                    }
                    written += 1;
                }
                orders.len()
            }
            Stage::Ratings => {
                let ratings = source.export_ratings(page).await?;
                for rating in &ratings {
                    // Replaces the buyer's rating: repeating it moves nothing.
                    target
                        .rate_listing(
                            rating.listing_id,
                            rating.buyer_id,
                            rating.stars,
                            rating.rated_at,
                        )
                        .await?;
                    written += 1;
                }
                ratings.len()
            }
            Stage::Conversations => {
                let (users, _) = source.list_users(page).await?;
                for user in &users {
                    written += self.copy_conversations(user).await?;
                }
                users.len()
            }
        };
        Ok((units as u64, written))
    }

    async fn copy_documents(&self, jar: &HoneyJar) -> StoreResult<u64> {
        let mut written = 0;
        let mut offset = 0;
        loop {
            let page = Page {
                limit: PAGE,
                offset,
            };
            let (documents, _) = self.source.list_documents(jar.id, page).await?;
            for document in &documents {
                if self.target.document(document.id).await?.is_none() {
                    self.target.create_document(document).await?;
                }
                // Replaces what an interrupted run saved, and moves the jar's counts by the
                // difference only.
                let chunks = self.source.document_chunks(document.id).await?;
                self.target.save_chunks(document, &chunks).await?;
                written += 1 + chunks.len() as u64;
            }
            if documents.len() < PAGE as usize {
                return Ok(written);
            }
            offset += u64::from(PAGE);
        }
    }

    async fn copy_conversations(&self, user: &User) -> StoreResult<u64> {
        let mut written = 0;
        let mut offset = 0;
        loop {
            let (conversations, _) = self
                .source
                .list_conversations(user.id, &all_conversations(offset))
                .await?;
            for conversation in &conversations {
                let key = crate::conversation_lease_key(conversation.id);
                let lease = self
                    .target
                    .acquire_lease(&key, COPY_OWNER, COPY_LEASE_MS, Timestamp::now())
                    .await?;
                let mut create = self.target.conversation(conversation.id).await?.is_none();
                let mut from_seq = 1;
                loop {
                    let messages = self
                        .source
                        .messages(conversation.id, from_seq, MESSAGES_PER_SAVE)
                        .await?;
                    // Re-writing a message with the same seq and id is a no-op.
                    self.target
                        .save_conversation(&lease, conversation, &messages, create)
                        .await?;
                    create = false;
                    written += messages.len() as u64;
                    match messages.last() {
                        Some(last) if messages.len() == MESSAGES_PER_SAVE as usize => {
                            from_seq = last.seq + 1
                        }
                        _ => break,
                    }
                }
                self.target.release_lease(&lease).await?;
                written += 1;
            }
            if conversations.len() < PAGE as usize {
                return Ok(written);
            }
            offset += u64::from(PAGE);
        }
    }
}

/// Every jar, in the store's listing order.
fn all_jars(page: Page) -> JarQuery {
    JarQuery {
        reader: None,
        visibility: None,
        owner: None,
        tag: None,
        search: None,
        page,
    }
}

/// A user's conversations, oldest first (a creation order later writes cannot reshuffle).
fn all_conversations(offset: u64) -> ConversationQuery {
    ConversationQuery {
        sort: ConversationSort::CreatedAt,
        order: SortOrder::Asc,
        search: None,
        page: Page {
            limit: PAGE,
            offset,
        },
    }
}

/// One table compared between the source and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCheck {
    pub table: &'static str,
    pub source_count: u64,
    pub target_count: u64,
    /// SHA-256 over the table's records, in the source's order, as each store reads them.
    pub source_digest: String,
    pub target_digest: String,
    /// The first record that differs, when one does.
    pub first_difference: Option<String>,
}

impl TableCheck {
    pub fn matches(&self) -> bool {
        self.source_count == self.target_count
            && self.source_digest == self.target_digest
            && self.first_difference.is_none()
    }
}

/// Counts and digests one table's records from both sides.
struct Tally {
    table: &'static str,
    source_count: u64,
    target_count: u64,
    source: Sha256,
    target: Sha256,
    first_difference: Option<String>,
}

impl Tally {
    fn new(table: &'static str) -> Tally {
        Tally {
            table,
            source_count: 0,
            target_count: 0,
            source: Sha256::new(),
            target: Sha256::new(),
            first_difference: None,
        }
    }

    /// Adds a record as the source holds it and as the target does (`None`: missing there).
    fn add<T: Debug + PartialEq>(&mut self, key: impl Debug, source: &T, target: Option<&T>) {
        self.source_count += 1;
        self.source.update(format!("{source:?}\n"));
        if let Some(target) = target {
            self.target_count += 1;
            self.target.update(format!("{target:?}\n"));
        }
        if self.first_difference.is_none() && target != Some(source) {
            self.first_difference = Some(match target {
                None => format!("{key:?} is missing"),
                Some(_) => format!("{key:?} differs"),
            });
        }
    }

    fn finish(self) -> TableCheck {
        TableCheck {
            table: self.table,
            source_count: self.source_count,
            target_count: self.target_count,
            source_digest: hex(self.source.finalize().as_slice()),
            target_digest: hex(self.target.finalize().as_slice()),
            first_difference: self.first_difference,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads every record from both stores and compares them table by table. Sessions, passkeys
/// and ratings have no listing of their own in the store contract: they are looked up by key
/// (ratings through the listings' sums and counts, which they determine).
pub async fn verify(source: &SqliteStore, target: &dyn Store) -> StoreResult<Vec<TableCheck>> {
    let mut users = Tally::new("users");
    let mut sessions = Tally::new("sessions");
    let mut passkeys = Tally::new("passkeys");
    let mut conversations = Tally::new("conversations");
    let mut messages = Tally::new("messages");
    let mut jars = Tally::new("jars");
    let mut documents = Tally::new("documents");
    let mut chunks = Tally::new("chunks");
    let mut listings = Tally::new("listings");
    let mut orders = Tally::new("orders");

    let mut offset = 0;
    loop {
        let page = Page {
            limit: PAGE,
            offset,
        };
        let (page_users, _) = source.list_users(page).await?;
        for user in &page_users {
            users.add(user.id, user, target.user(user.id).await?.as_ref());
            let mine = source.passkeys_of(user.id).await?;
            let theirs = target.passkeys_of(user.id).await?;
            for passkey in &mine {
                let copied = theirs
                    .iter()
                    .find(|p| p.credential_id == passkey.credential_id);
                passkeys.add(&passkey.credential_id, passkey, copied);
            }
            let mut conversation_offset = 0;
            loop {
                let query = all_conversations(conversation_offset);
                let (page_conversations, _) = source.list_conversations(user.id, &query).await?;
                for conversation in &page_conversations {
                    let copied = target.conversation(conversation.id).await?;
                    conversations.add(conversation.id, conversation, copied.as_ref());
                    let mut from_seq = 1;
                    loop {
                        let mine = source.messages(conversation.id, from_seq, PAGE).await?;
                        let theirs = target.messages(conversation.id, from_seq, PAGE).await?;
                        for message in &mine {
                            let copied = theirs.iter().find(|m| m.seq == message.seq);
                            messages.add((conversation.id, message.seq), message, copied);
                        }
                        match mine.last() {
                            Some(last) if mine.len() == PAGE as usize => from_seq = last.seq + 1,
                            _ => break,
                        }
                    }
                }
                if page_conversations.len() < PAGE as usize {
                    break;
                }
                conversation_offset += u64::from(PAGE);
            }
        }
        if page_users.len() < PAGE as usize {
            break;
        }
        offset += u64::from(PAGE);
    }

    offset = 0;
    loop {
        let page_sessions = source
            .export_sessions(Page {
                limit: PAGE,
                offset,
            })
            .await?;
        for session in &page_sessions {
            let copied = target.session(&session.token_hash).await?;
            sessions.add(&session.token_hash, session, copied.as_ref());
        }
        if page_sessions.len() < PAGE as usize {
            break;
        }
        offset += u64::from(PAGE);
    }

    offset = 0;
    loop {
        let page = Page {
            limit: PAGE,
            offset,
        };
        let (page_jars, _) = source.list_jars(&all_jars(page)).await?;
        for jar in &page_jars {
            jars.add(jar.id, jar, target.jar(jar.id).await?.as_ref());
            let mut document_offset = 0;
            loop {
                let page = Page {
                    limit: PAGE,
                    offset: document_offset,
                };
                let (page_documents, _) = source.list_documents(jar.id, page).await?;
                for document in &page_documents {
                    let copied = target.document(document.id).await?;
                    documents.add(document.id, document, copied.as_ref());
                    let mine = source.document_chunks(document.id).await?;
                    let theirs = target.document_chunks(document.id).await?;
                    for chunk in &mine {
                        let copied = theirs.iter().find(|c| c.seq == chunk.seq);
                        chunks.add((document.id, chunk.seq), chunk, copied);
                    }
                }
                if page_documents.len() < PAGE as usize {
                    break;
                }
                document_offset += u64::from(PAGE);
            }
        }
        if page_jars.len() < PAGE as usize {
            break;
        }
        offset += u64::from(PAGE);
    }

    offset = 0;
    loop {
        let page = Page {
            limit: PAGE,
            offset,
        };
        let page_listings = source.export_listings(page).await?;
        for listing in &page_listings {
            let copied = target.listing(listing.id).await?;
            listings.add(listing.id, listing, copied.as_ref());
        }
        let (page_orders, _) = source.list_orders(None, page).await?;
        for order in &page_orders {
            orders.add(order.id, order, target.order(order.id).await?.as_ref());
        }
        if page_listings.len() < PAGE as usize && page_orders.len() < PAGE as usize {
            break;
        }
        offset += u64::from(PAGE);
    }

    Ok([
        users,
        sessions,
        passkeys,
        conversations,
        messages,
        jars,
        documents,
        chunks,
        listings,
        orders,
    ]
    .into_iter()
    .map(Tally::finish)
    .collect())
}
