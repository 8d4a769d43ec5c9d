//! Conversations and their messages. Only the conversation's owner writes them, fenced by its
//! lease: a save checks the lease's tenure, then writes the record with a lightweight
//! transaction carrying the lease epoch (`IF epoch <= ?`), so a writer whose lease was taken
//! over finds a higher epoch there once the new owner has written. Deletion leaves a tombstone
//! the transactions see, so a late write never brings a conversation back.
//!
//! The record is written first; a save's messages and listing rows follow it, as plain
//! idempotent statements, so the record may for a moment count messages not yet readable, and
//! a retry of the same save writes whatever is missing. `store/SCYLLA.md` says what is weaker
//! than SQLite's one transaction.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use uuid::Uuid;

use super::schema::Migration;
use super::{
    applied, contended, corrupt, maybe_row, page_of, prepare, prepare_serial_read, read_paged,
    rows, unavailable, ScyllaStore,
};
use crate::{
    conversation_lease_key, Conversation, ConversationId, ConversationQuery, ConversationSort,
    ConversationStore, Lease, Message, MessageRole, MessageStatus, PruningRecord, SortOrder,
    StoreError, StoreResult, Timestamp, UserId,
};

pub(super) const MIGRATION: Migration = Migration {
    version: 3,
    description: "conversations",
    statements: &[
        // The record. Every change is a lightweight transaction: creation `IF NOT EXISTS`,
        // saves `IF epoch <= ?` (the fence), deletion sets `deleted` and keeps the row.
        // `previous_updated_at` is the listing position a save moved away from, deleted again
        // by the next save in case that move was lost.
        "CREATE TABLE IF NOT EXISTS conversations (
            id uuid PRIMARY KEY,
            user_id uuid,
            title text,
            created_at bigint,
            updated_at bigint,
            previous_updated_at bigint,
            model text,
            message_count bigint,
            last_message text,
            summary text,
            pruned_through bigint,
            pruning frozen<tuple<bigint, bigint, bigint, bigint, boolean>>,
            epoch bigint,
            deleted boolean
        )",
        // 1,000 messages per partition (bucket = seq / 1000), newest first.
        "CREATE TABLE IF NOT EXISTS messages (
            conversation_id uuid,
            bucket bigint,
            seq bigint,
            id uuid,
            role text,
            content text,
            model text,
            status text,
            created_at bigint,
            PRIMARY KEY ((conversation_id, bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq DESC)",
        // A user's conversations by creation: the key never moves, so this table is also what
        // counts them and what a title search reads.
        "CREATE TABLE IF NOT EXISTS conversations_by_created (
            user_id uuid,
            created_at bigint,
            id uuid,
            title text,
            updated_at bigint,
            PRIMARY KEY ((user_id), created_at, id)
        ) WITH CLUSTERING ORDER BY (created_at DESC, id DESC)",
        // A user's conversations by last update: a save that changes `updated_at` moves the row.
        "CREATE TABLE IF NOT EXISTS conversations_by_updated (
            user_id uuid,
            updated_at bigint,
            id uuid,
            PRIMARY KEY ((user_id), updated_at, id)
        ) WITH CLUSTERING ORDER BY (updated_at DESC, id DESC)",
    ],
};

/// Messages per `messages` partition.
const MESSAGES_PER_BUCKET: u64 = 1_000;
/// The most seqs one `IN` restriction names.
const IN_LIMIT: usize = 100;

/// A save that lost a race on the record is decided again from the new state, at most this often.
const CAS_ATTEMPTS: usize = 5;

/// The most conversations one user's listing partition is read for (a title search).
const USER_CONVERSATIONS_CAP: usize = 100_000;

/// Message partitions a deletion drops at once.
const BUCKET_DELETES_IN_FLIGHT: usize = 16;

const RECORD_COLUMNS: &str = "id, user_id, title, created_at, updated_at, previous_updated_at, \
    model, message_count, last_message, summary, pruned_through, pruning, epoch, deleted";

/// `PruningRecord` as stored: (timestamp, messages_pruned, tokens_before, tokens_after,
/// automatic).
type PruningTuple = (i64, i64, i64, i64, bool);

/// A `conversations` row. A tombstone keeps only what its clean-up needs: the text is nulled.
#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
struct ConversationRow {
    id: Uuid,
    user_id: Uuid,
    title: Option<String>,
    created_at: i64,
    updated_at: i64,
    previous_updated_at: i64,
    model: Option<String>,
    message_count: i64,
    last_message: Option<String>,
    summary: Option<String>,
    pruned_through: i64,
    pruning: Option<PruningTuple>,
    epoch: i64,
    deleted: bool,
}

/// A `messages` row, as `messages` reads it.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
struct MessageRow {
    seq: i64,
    id: Uuid,
    role: String,
    content: String,
    model: Option<String>,
    status: String,
    created_at: i64,
}

/// Which message holds a seq: what a save checks its new messages against.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
struct MessageIdRow {
    seq: i64,
    id: Uuid,
}

/// A `conversations_by_created` row.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
struct CreatedEntry {
    created_at: i64,
    id: Uuid,
    title: String,
    updated_at: i64,
}

/// A `conversations_by_updated` row.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
struct UpdatedEntry {
    updated_at: i64,
    id: Uuid,
}

pub(super) struct Statements {
    /// At LOCAL_SERIAL: what a save or a deletion decides from (sees transactions in flight).
    record_serial: PreparedStatement,
    record: PreparedStatement,
    create: PreparedStatement,
    /// The fenced save: `IF epoch <= ? AND deleted = false AND updated_at = ?`.
    update: PreparedStatement,
    tombstone: PreparedStatement,
    insert_message: PreparedStatement,
    message_ids: PreparedStatement,
    /// Ascending from a seq within one bucket: a reversed slice of a `seq DESC` partition.
    messages_from: PreparedStatement,
    delete_bucket: PreparedStatement,
    upsert_created: PreparedStatement,
    delete_created: PreparedStatement,
    insert_updated: PreparedStatement,
    delete_updated: PreparedStatement,
    count: PreparedStatement,
    all_created: PreparedStatement,
    created_asc: PreparedStatement,
    created_desc: PreparedStatement,
    updated_asc: PreparedStatement,
    updated_desc: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session) -> StoreResult<Statements> {
        let select_record = format!("SELECT {RECORD_COLUMNS} FROM conversations WHERE id = ?");
        let record_serial = prepare_serial_read(session, &select_record).await?;
        let created = "SELECT created_at, id, title, updated_at FROM conversations_by_created
                       WHERE user_id = ?";
        let updated = "SELECT updated_at, id FROM conversations_by_updated WHERE user_id = ?";
        Ok(Statements {
            record_serial,
            record: prepare(session, &select_record, true).await?,
            create: prepare(
                session,
                "INSERT INTO conversations (id, user_id, title, created_at, updated_at,
                 previous_updated_at, model, message_count, last_message, summary,
                 pruned_through, pruning, epoch, deleted)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, false)
                 IF NOT EXISTS",
                false,
            )
            .await?,
            update: prepare(
                session,
                "UPDATE conversations SET title = ?, updated_at = ?, previous_updated_at = ?,
                 model = ?, message_count = ?, last_message = ?, summary = ?,
                 pruned_through = ?, pruning = ?, epoch = ?
                 WHERE id = ?
                 IF epoch <= ? AND deleted = false AND updated_at = ?",
                false,
            )
            .await?,
            tombstone: prepare(
                session,
                "UPDATE conversations SET deleted = true, title = null, model = null,
                 last_message = null, summary = null, pruning = null
                 WHERE id = ? IF deleted = false",
                false,
            )
            .await?,
            insert_message: prepare(
                session,
                "INSERT INTO messages (conversation_id, bucket, seq, id, role, content, model,
                 status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                true,
            )
            .await?,
            message_ids: prepare(
                session,
                "SELECT seq, id FROM messages WHERE conversation_id = ? AND bucket = ?
                 AND seq IN ?",
                true,
            )
            .await?,
            messages_from: prepare(
                session,
                "SELECT seq, id, role, content, model, status, created_at FROM messages
                 WHERE conversation_id = ? AND bucket = ? AND seq >= ?
                 ORDER BY seq ASC LIMIT ?",
                true,
            )
            .await?,
            delete_bucket: prepare(
                session,
                "DELETE FROM messages WHERE conversation_id = ? AND bucket = ?",
                true,
            )
            .await?,
            upsert_created: prepare(
                session,
                "INSERT INTO conversations_by_created (user_id, created_at, id, title, updated_at)
                 VALUES (?, ?, ?, ?, ?)",
                true,
            )
            .await?,
            delete_created: prepare(
                session,
                "DELETE FROM conversations_by_created
                 WHERE user_id = ? AND created_at = ? AND id = ?",
                true,
            )
            .await?,
            insert_updated: prepare(
                session,
                "INSERT INTO conversations_by_updated (user_id, updated_at, id) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            delete_updated: prepare(
                session,
                "DELETE FROM conversations_by_updated
                 WHERE user_id = ? AND updated_at = ? AND id = ?",
                true,
            )
            .await?,
            count: prepare(
                session,
                "SELECT COUNT(*) FROM conversations_by_created WHERE user_id = ?",
                true,
            )
            .await?,
            all_created: prepare(session, created, true).await?,
            created_asc: prepare(
                session,
                &format!("{created} ORDER BY created_at ASC, id ASC LIMIT ?"),
                true,
            )
            .await?,
            created_desc: prepare(
                session,
                &format!("{created} ORDER BY created_at DESC, id DESC LIMIT ?"),
                true,
            )
            .await?,
            updated_asc: prepare(
                session,
                &format!("{updated} ORDER BY updated_at ASC, id ASC LIMIT ?"),
                true,
            )
            .await?,
            updated_desc: prepare(
                session,
                &format!("{updated} ORDER BY updated_at DESC, id DESC LIMIT ?"),
                true,
            )
            .await?,
        })
    }
}

/// The `messages` partition of a seq.
fn bucket(seq: u64) -> i64 {
    (seq / MESSAGES_PER_BUCKET) as i64
}

/// The buckets `messages(from_seq, ..)` reads, in order, when the record counts
/// `message_count` messages: from the bucket of `from_seq` to the one of the last message.
fn buckets_to_read(from_seq: u64, message_count: u64) -> std::ops::RangeInclusive<i64> {
    bucket(from_seq)..=bucket(from_seq.max(message_count))
}

/// Whether `title` contains `search` as SQLite's `title LIKE '%search%' ESCAPE '\'` decides it
/// (wildcards escaped): a substring, ASCII letters matched in any case, all else exactly.
fn title_matches(title: &str, search: &str) -> bool {
    title
        .to_ascii_lowercase()
        .contains(&search.to_ascii_lowercase())
}

fn stale_lease(lease: &Lease) -> StoreError {
    StoreError::StaleLease {
        key: lease.key.clone(),
        epoch: lease.epoch,
    }
}

fn not_found() -> StoreError {
    StoreError::NotFound {
        entity: "conversation",
    }
}

impl ConversationRow {
    /// Where `conversations_by_updated` may list the record: at its `updated_at`, and where the
    /// latest save moved it from, in case that move was lost.
    fn listed_positions(&self) -> Vec<i64> {
        let mut positions = vec![self.updated_at];
        if self.previous_updated_at != self.updated_at {
            positions.push(self.previous_updated_at);
        }
        positions
    }

    /// The conversation, or `None` for a tombstone.
    fn into_conversation(self) -> StoreResult<Option<Conversation>> {
        if self.deleted {
            return Ok(None);
        }
        let (Some(title), Some(model), Some(last_message)) =
            (self.title, self.model, self.last_message)
        else {
            return Err(corrupt(
                "conversation row",
                format!("{} lacks its title, model or last message", self.id),
            ));
        };
        Ok(Some(Conversation {
            id: self.id,
            user_id: self.user_id,
            title,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            model,
            message_count: self.message_count as u64,
            last_message,
            summary: self.summary,
            pruned_through: self.pruned_through as u64,
            last_pruning: self.pruning.map(
                |(timestamp, messages_pruned, tokens_before, tokens_after, automatic)| {
                    PruningRecord {
                        timestamp: Timestamp(timestamp),
                        messages_pruned: messages_pruned as u64,
                        tokens_before: tokens_before as u64,
                        tokens_after: tokens_after as u64,
                        automatic,
                    }
                },
            ),
        }))
    }
}

impl MessageRow {
    fn into_message(self, conversation_id: ConversationId) -> StoreResult<Message> {
        let what = "message row";
        Ok(Message {
            conversation_id,
            seq: self.seq as u64,
            id: self.id,
            role: MessageRole::parse(&self.role)
                .ok_or_else(|| corrupt(what, format!("unknown role {:?}", self.role)))?,
            content: self.content,
            model: self.model,
            status: MessageStatus::parse(&self.status)
                .ok_or_else(|| corrupt(what, format!("unknown status {:?}", self.status)))?,
            created_at: Timestamp(self.created_at),
        })
    }
}

/// What a save writes, decided from the record as read.
#[derive(Debug, PartialEq)]
struct SavePlan {
    /// The owner and creation time of the record (a save never changes them, as on SQLite).
    user_id: Uuid,
    created_at: i64,
    /// The `updated_at` the update is conditional on; `None` for a creation.
    expected_updated_at: Option<i64>,
    previous_updated_at: i64,
    /// Positions in `conversations_by_updated` to delete: where the record was listed before,
    /// and where the save before moved it from (again, in case that move was lost).
    stale_positions: Vec<i64>,
}

/// Decides a save from the record `current` (read at LOCAL_SERIAL), with SQLite's errors:
/// a creation over a record is a `Conflict`, an update without one `NotFound`. Deleted
/// conversations are `NotFound` either way (on SQLite a creation could reuse a deleted id;
/// ids are random, and a late creation must not undo a deletion either).
fn plan_save(
    current: Option<&ConversationRow>,
    conversation: &Conversation,
    lease: &Lease,
    create: bool,
) -> StoreResult<SavePlan> {
    let updated_at = conversation.updated_at.0;
    match current {
        Some(row) if row.deleted => Err(not_found()),
        Some(_) if create => Err(StoreError::Conflict(format!(
            "conversation {} exists",
            conversation.id
        ))),
        None if create => Ok(SavePlan {
            user_id: conversation.user_id,
            created_at: conversation.created_at.0,
            expected_updated_at: None,
            previous_updated_at: updated_at,
            stale_positions: Vec::new(),
        }),
        None => Err(not_found()),
        Some(row) if row.epoch > lease.epoch as i64 => Err(stale_lease(lease)),
        Some(row) => {
            let previous_updated_at = match row.updated_at == updated_at {
                true => row.previous_updated_at,
                false => row.updated_at,
            };
            let mut stale_positions = row.listed_positions();
            stale_positions.retain(|&position| position != updated_at);
            Ok(SavePlan {
                user_id: row.user_id,
                created_at: row.created_at,
                expected_updated_at: Some(row.updated_at),
                previous_updated_at,
                stale_positions,
            })
        }
    }
}

/// The messages of one save, one per seq: the same message twice is written once, two
/// different messages at one seq are a `Conflict` (as SQLite's second insert would be).
fn distinct_messages(messages: &[Message]) -> StoreResult<Vec<&Message>> {
    let mut by_seq: BTreeMap<u64, &Message> = BTreeMap::new();
    for message in messages {
        match by_seq.get(&message.seq) {
            Some(first) if first.id != message.id => {
                return Err(StoreError::Conflict(format!(
                    "message {} of conversation {} is {}, not {}",
                    message.seq, message.conversation_id, first.id, message.id
                )))
            }
            Some(_) => {}
            None => {
                by_seq.insert(message.seq, message);
            }
        }
    }
    Ok(by_seq.into_values().collect())
}

impl ScyllaStore {
    /// The record of `id`, tombstones included: at LOCAL_SERIAL when `serial`.
    async fn conversation_row(
        &self,
        id: ConversationId,
        serial: bool,
    ) -> StoreResult<Option<ConversationRow>> {
        let statement = match serial {
            true => &self.conversations.record_serial,
            false => &self.conversations.record,
        };
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "conversation row")
    }

    /// Fails unless `lease` is still the current tenure (same owner and epoch), as SQLite's
    /// `check_tenure`.
    async fn check_tenure(&self, lease: &Lease) -> StoreResult<()> {
        match self.read_lease(&lease.key).await? {
            Some(current) if current.owner == lease.owner && current.epoch == lease.epoch => Ok(()),
            _ => Err(stale_lease(lease)),
        }
    }

    /// The messages of a save not yet stored; a stored message at one of their seqs with
    /// another id is a `Conflict`. A read before the write is enough: only the fenced owner
    /// writes messages.
    async fn unwritten_messages<'m>(
        &self,
        conversation_id: ConversationId,
        messages: &[&'m Message],
    ) -> StoreResult<Vec<&'m Message>> {
        let mut by_bucket: BTreeMap<i64, Vec<&'m Message>> = BTreeMap::new();
        for &message in messages {
            by_bucket
                .entry(bucket(message.seq))
                .or_default()
                .push(message);
        }
        let mut unwritten = Vec::new();
        // ScyllaDB refuses an `IN` of more than 100 clustering keys
        // (`max_clustering_key_restrictions_per_query`).
        let groups = by_bucket.into_iter().flat_map(|(bucket, messages)| {
            messages
                .chunks(IN_LIMIT)
                .map(|group| (bucket, group.to_vec()))
                .collect::<Vec<_>>()
        });
        for (bucket, messages) in groups {
            let seqs: Vec<i64> = messages.iter().map(|m| m.seq as i64).collect();
            let result = self
                .session
                .execute_unpaged(
                    &self.conversations.message_ids,
                    (conversation_id, bucket, seqs),
                )
                .await
                .map_err(unavailable)?;
            let stored: BTreeMap<i64, Uuid> = rows::<MessageIdRow>(result, "message ids")?
                .into_iter()
                .map(|row| (row.seq, row.id))
                .collect();
            for message in messages {
                match stored.get(&(message.seq as i64)) {
                    None => unwritten.push(message),
                    Some(&id) if id == message.id => {}
                    Some(id) => {
                        return Err(StoreError::Conflict(format!(
                            "message {} of conversation {} is {id}, not {}",
                            message.seq, conversation_id, message.id
                        )))
                    }
                }
            }
        }
        Ok(unwritten)
    }

    /// Writes the record as `plan` says; false when the condition failed (decide again).
    async fn write_record(
        &self,
        lease: &Lease,
        c: &Conversation,
        plan: &SavePlan,
    ) -> StoreResult<bool> {
        let pruning: Option<PruningTuple> = c.last_pruning.as_ref().map(|p| {
            (
                p.timestamp.0,
                p.messages_pruned as i64,
                p.tokens_before as i64,
                p.tokens_after as i64,
                p.automatic,
            )
        });
        let epoch = lease.epoch as i64;
        let result = match plan.expected_updated_at {
            None => {
                self.session
                    .execute_unpaged(
                        &self.conversations.create,
                        (
                            c.id,
                            plan.user_id,
                            &c.title,
                            plan.created_at,
                            c.updated_at.0,
                            plan.previous_updated_at,
                            &c.model,
                            c.message_count as i64,
                            &c.last_message,
                            &c.summary,
                            c.pruned_through as i64,
                            pruning,
                            epoch,
                        ),
                    )
                    .await
            }
            Some(expected_updated_at) => {
                self.session
                    .execute_unpaged(
                        &self.conversations.update,
                        (
                            &c.title,
                            c.updated_at.0,
                            plan.previous_updated_at,
                            &c.model,
                            c.message_count as i64,
                            &c.last_message,
                            &c.summary,
                            c.pruned_through as i64,
                            pruning,
                            epoch,
                            c.id,
                            epoch,
                            expected_updated_at,
                        ),
                    )
                    .await
            }
        };
        applied(result.map_err(unavailable)?)
    }

    async fn write_messages(&self, messages: &[&Message]) -> StoreResult<()> {
        futures::future::try_join_all(messages.iter().map(|m| {
            let model = match &m.model {
                Some(model) => MaybeUnset::Set(model.as_str()),
                // Unset rather than null: no cell tombstone per user message.
                None => MaybeUnset::Unset,
            };
            self.session.execute_unpaged(
                &self.conversations.insert_message,
                (
                    m.conversation_id,
                    bucket(m.seq),
                    m.seq as i64,
                    m.id,
                    m.role.as_str(),
                    &m.content,
                    model,
                    m.status.as_str(),
                    m.created_at.0,
                ),
            )
        }))
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Lists the saved record: its creation row (rewritten whole, so it heals on the next
    /// save) and its move in `conversations_by_updated` (a batch on the user's partition, so
    /// the insert and the deletes apply together).
    async fn write_listings(&self, c: &Conversation, plan: &SavePlan) -> StoreResult<()> {
        let statements = &self.conversations;
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values = vec![(plan.user_id, c.updated_at.0, c.id)];
        batch.append_statement(statements.insert_updated.clone());
        for &position in &plan.stale_positions {
            batch.append_statement(statements.delete_updated.clone());
            values.push((plan.user_id, position, c.id));
        }
        let created = self.session.execute_unpaged(
            &statements.upsert_created,
            (
                plan.user_id,
                plan.created_at,
                c.id,
                &c.title,
                c.updated_at.0,
            ),
        );
        let moved = self.session.batch(&batch, values);
        futures::future::try_join(created, moved)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes what a deleted conversation left besides its tombstone: its listing rows and
    /// its message partitions. Idempotent; run by the deletion, by a retried deletion, and by
    /// a save that finds its conversation deleted under it.
    async fn clean_up_deleted(&self, tombstone: &ConversationRow) -> StoreResult<()> {
        let statements = &self.conversations;
        let (user_id, id) = (tombstone.user_id, tombstone.id);
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values = Vec::new();
        for position in tombstone.listed_positions() {
            batch.append_statement(statements.delete_updated.clone());
            values.push((user_id, position, id));
        }
        let unlisted = futures::future::try_join(
            self.session.execute_unpaged(
                &statements.delete_created,
                (user_id, tombstone.created_at, id),
            ),
            self.session.batch(&batch, values),
        );
        unlisted.await.map_err(unavailable)?;
        let last_bucket = bucket(tombstone.message_count as u64);
        futures::stream::iter(0..=last_bucket)
            .map(|bucket| {
                self.session
                    .execute_unpaged(&statements.delete_bucket, (id, bucket))
            })
            .buffer_unordered(BUCKET_DELETES_IN_FLIGHT)
            .try_for_each(|_| futures::future::ok(()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// The live conversations of `listed` (id, and the `updated_at` its listing row says when
    /// that row must match the record), in order. Rows of deleted conversations and positions
    /// a lost move left behind are skipped.
    async fn listed_conversations(
        &self,
        listed: Vec<(Uuid, Option<i64>)>,
    ) -> StoreResult<Vec<Conversation>> {
        let records = futures::future::try_join_all(
            listed
                .iter()
                .map(|&(id, _)| self.conversation_row(id, false)),
        )
        .await?;
        let mut conversations = Vec::new();
        for ((_, listed_updated_at), record) in listed.into_iter().zip(records) {
            let Some(record) = record else { continue };
            if listed_updated_at.is_some_and(|at| at != record.updated_at) {
                continue;
            }
            if let Some(conversation) = record.into_conversation()? {
                conversations.push(conversation);
            }
        }
        Ok(conversations)
    }

    /// A user's conversations whose title contains `search`, in the query's order, and how
    /// many there are: their creation rows, read whole (one user's conversations) and
    /// filtered here, as SQLite's `LIKE` would.
    async fn search_conversations(
        &self,
        user_id: UserId,
        query: &ConversationQuery,
        search: &str,
    ) -> StoreResult<(Vec<Conversation>, u64)> {
        let mut entries: Vec<CreatedEntry> = read_paged(
            &self.session,
            &self.conversations.all_created,
            (user_id,),
            USER_CONVERSATIONS_CAP,
            "conversations_by_created",
        )
        .await?;
        entries.retain(|entry| title_matches(&entry.title, search));
        // SQLite's order: the sort column, then the id (as text, which orders as the bytes do).
        entries.sort_by_key(|entry| match query.sort {
            ConversationSort::CreatedAt => (entry.created_at, entry.id),
            ConversationSort::UpdatedAt => (entry.updated_at, entry.id),
        });
        if query.order == SortOrder::Desc {
            entries.reverse();
        }
        let total = entries.len() as u64;
        let listed = page_of(entries, query.page)
            .into_iter()
            .map(|entry| (entry.id, None))
            .collect();
        Ok((self.listed_conversations(listed).await?, total))
    }
}

#[async_trait]
impl ConversationStore for ScyllaStore {
    async fn save_conversation(
        &self,
        lease: &Lease,
        conversation: &Conversation,
        new_messages: &[Message],
        create: bool,
    ) -> StoreResult<()> {
        crate::check_messages(conversation, new_messages)?;
        // A lease on another key, even a current one, does not fence this conversation.
        if lease.key != conversation_lease_key(conversation.id) {
            return Err(stale_lease(lease));
        }
        self.check_tenure(lease).await?;
        let messages = distinct_messages(new_messages)?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.conversation_row(conversation.id, true).await?;
            let plan = plan_save(current.as_ref(), conversation, lease, create)?;
            let unwritten = self.unwritten_messages(conversation.id, &messages).await?;
            if !self.write_record(lease, conversation, &plan).await? {
                // Created, deleted, taken over or saved since the read: decide again.
                continue;
            }
            self.write_messages(&unwritten).await?;
            self.write_listings(conversation, &plan).await?;
            // A deletion between the record's write and these may have cleaned up before
            // they landed: clean up after them too.
            if let Some(row) = self.conversation_row(conversation.id, false).await? {
                if row.deleted {
                    self.clean_up_deleted(&row).await?;
                }
            }
            return Ok(());
        }
        Err(contended(
            format!("conversation {}", conversation.id),
            CAS_ATTEMPTS,
        ))
    }

    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        match self.conversation_row(id, false).await? {
            Some(row) => row.into_conversation(),
            None => Ok(None),
        }
    }

    async fn list_conversations(
        &self,
        user_id: UserId,
        query: &ConversationQuery,
    ) -> StoreResult<(Vec<Conversation>, u64)> {
        if let Some(search) = query.search.as_deref().filter(|s| !s.is_empty()) {
            return self.search_conversations(user_id, query, search).await;
        }
        let result = self
            .session
            .execute_unpaged(&self.conversations.count, (user_id,))
            .await
            .map_err(unavailable)?;
        let (total,): (i64,) = maybe_row(result, "conversation count")?.unwrap_or((0,));
        let total = total as u64;
        if query.page.limit == 0 || query.page.offset >= total {
            return Ok((Vec::new(), total));
        }
        // The first offset + limit rows of the listing, in its order; the page is their tail.
        let wanted = query
            .page
            .offset
            .saturating_add(query.page.limit as u64)
            .min(i32::MAX as u64);
        let values = (user_id, wanted as i32);
        let cap = wanted as usize;
        let statements = &self.conversations;
        let listed: Vec<(Uuid, Option<i64>)> = match query.sort {
            ConversationSort::CreatedAt => {
                let statement = match query.order {
                    SortOrder::Asc => &statements.created_asc,
                    SortOrder::Desc => &statements.created_desc,
                };
                let entries: Vec<CreatedEntry> = read_paged(
                    &self.session,
                    statement,
                    values,
                    cap,
                    "conversations_by_created",
                )
                .await?;
                page_of(entries, query.page)
                    .into_iter()
                    .map(|entry| (entry.id, None))
                    .collect()
            }
            ConversationSort::UpdatedAt => {
                let statement = match query.order {
                    SortOrder::Asc => &statements.updated_asc,
                    SortOrder::Desc => &statements.updated_desc,
                };
                let entries: Vec<UpdatedEntry> = read_paged(
                    &self.session,
                    statement,
                    values,
                    cap,
                    "conversations_by_updated",
                )
                .await?;
                page_of(entries, query.page)
                    .into_iter()
                    .map(|entry| (entry.id, Some(entry.updated_at)))
                    .collect()
            }
        };
        Ok((self.listed_conversations(listed).await?, total))
    }

    async fn messages(
        &self,
        conversation_id: ConversationId,
        from_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(record) = self.conversation_row(conversation_id, false).await? else {
            return Ok(Vec::new());
        };
        if record.deleted {
            return Ok(Vec::new());
        }
        let limit = limit as usize;
        let from = from_seq.min(i64::MAX as u64) as i64;
        let mut messages = Vec::new();
        for bucket in buckets_to_read(from_seq, record.message_count as u64) {
            let wanted = (limit - messages.len()).min(MESSAGES_PER_BUCKET as usize);
            let rows: Vec<MessageRow> = read_paged(
                &self.session,
                &self.conversations.messages_from,
                (conversation_id, bucket, from, wanted as i32),
                wanted,
                "messages",
            )
            .await?;
            for row in rows {
                messages.push(row.into_message(conversation_id)?);
            }
            if messages.len() == limit {
                break;
            }
        }
        Ok(messages)
    }

    async fn delete_conversation(&self, id: ConversationId) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(&self.conversations.tombstone, (id,))
            .await
            .map_err(unavailable)?;
        let deleted_now = applied(result)?;
        // The tombstone never changes again: clean up from what it says. A deletion that
        // found one already (a retry) cleans up again, in case the first one was cut short.
        match self.conversation_row(id, true).await? {
            Some(row) if row.deleted => {
                self.clean_up_deleted(&row).await?;
                Ok(deleted_now)
            }
            // Never existed, or created after the tombstone's condition failed.
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use scylla::frame::response::result::NativeType::{BigInt, Boolean, Text, Uuid as UuidType};
    use scylla::frame::response::result::{ColumnType, NativeType};

    use super::super::tests::roundtrip;
    use super::*;

    fn native(name: &'static str, typ: NativeType) -> (&'static str, ColumnType<'static>) {
        (name, ColumnType::Native(typ))
    }

    fn sample_row() -> ConversationRow {
        ConversationRow {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            title: Some("Hive plans".into()),
            created_at: 1_000,
            updated_at: 3_000,
            previous_updated_at: 2_000,
            model: Some("model-a".into()),
            message_count: 4,
            last_message: Some("message 4".into()),
            summary: Some("earlier on".into()),
            pruned_through: 2,
            pruning: Some((1_500, 2, 900, 300, true)),
            epoch: 3,
            deleted: false,
        }
    }

    fn sample_conversation(row: &ConversationRow) -> Conversation {
        row.clone().into_conversation().unwrap().unwrap()
    }

    fn lease(epoch: u64) -> Lease {
        Lease {
            key: "conversation:x".into(),
            owner: "node-a".into(),
            epoch,
            expires_at: Timestamp(10_000),
        }
    }

    #[test]
    fn buckets_hold_a_thousand_seqs() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(999), 0);
        assert_eq!(bucket(1_000), 1);
        assert_eq!(bucket(2_500), 2);
        assert_eq!(bucket(u64::MAX), (u64::MAX / 1_000) as i64);
    }

    #[test]
    fn message_reads_visit_the_buckets_from_the_first_seq_to_the_last_message() {
        assert_eq!(buckets_to_read(1, 2), 0..=0);
        assert_eq!(buckets_to_read(0, 0), 0..=0);
        // Messages written beyond the record's count (its bucket) are still found.
        assert_eq!(buckets_to_read(1, 0), 0..=0);
        assert_eq!(buckets_to_read(1, 2_500), 0..=2);
        assert_eq!(buckets_to_read(1_999, 2_500), 1..=2);
        assert_eq!(buckets_to_read(5_000, 12), 5..=5);
    }

    #[test]
    fn title_search_matches_as_sqlite_like_does() {
        // The SQLite backend's filter: `title LIKE '%search%' ESCAPE '\'`, wildcards escaped.
        let sqlite = rusqlite::Connection::open_in_memory().unwrap();
        let sqlite_matches = |title: &str, search: &str| -> bool {
            let mut pattern = String::from("%");
            for c in search.chars() {
                if matches!(c, '%' | '_' | '\\') {
                    pattern.push('\\');
                }
                pattern.push(c);
            }
            pattern.push('%');
            sqlite
                .query_row(
                    "SELECT ?1 LIKE ?2 ESCAPE '\\'",
                    [title, pattern.as_str()],
                    |row| row.get(0),
                )
                .unwrap()
        };
        let cases = [
            // Any case, anywhere in the title.
            ("Winter HIVE check", "hive", true),
            ("Hive plans", "HIVE p", true),
            ("Hive", "hives", false),
            // Wildcards and the escape character are literal.
            ("Lavender 100%_done", "%_", true),
            ("Lavender 100 done", "%", false),
            ("Hive plans", "h_ve", false),
            ("back\\slash", "\\", true),
            ("backslash", "\\", false),
            // Only ASCII letters fold; other characters match exactly.
            ("ÉTÉ", "été", false),
            ("ÉTÉ", "ÉtÉ", true),
            ("straße", "STRASSE", false),
            ("anything", "", true),
            ("", "", true),
        ];
        for (title, search, expected) in cases {
            assert_eq!(
                sqlite_matches(title, search),
                expected,
                "SQLite: {title:?} {search:?}"
            );
            assert_eq!(
                title_matches(title, search),
                expected,
                "{title:?} {search:?}"
            );
        }
    }

    #[test]
    fn tombstones_read_as_absent_and_rows_convert_whole() {
        let row = sample_row();
        let conversation = row.clone().into_conversation().unwrap().unwrap();
        assert_eq!(conversation.title, "Hive plans");
        assert_eq!(conversation.message_count, 4);
        assert_eq!(
            conversation.last_pruning,
            Some(PruningRecord {
                timestamp: Timestamp(1_500),
                messages_pruned: 2,
                tokens_before: 900,
                tokens_after: 300,
                automatic: true,
            })
        );
        let tombstone = ConversationRow {
            deleted: true,
            title: None,
            model: None,
            last_message: None,
            summary: None,
            pruning: None,
            ..row.clone()
        };
        assert_eq!(tombstone.into_conversation().unwrap(), None);
        let broken = ConversationRow { title: None, ..row };
        assert!(matches!(
            broken.into_conversation(),
            Err(StoreError::Internal(_))
        ));
    }

    #[test]
    fn saves_are_decided_as_on_sqlite() {
        let row = sample_row();
        let conversation = sample_conversation(&row);
        let deleted = ConversationRow {
            deleted: true,
            ..row.clone()
        };
        for create in [true, false] {
            let result = plan_save(Some(&deleted), &conversation, &lease(3), create);
            assert!(
                matches!(result, Err(StoreError::NotFound { .. })),
                "{result:?}"
            );
        }
        let result = plan_save(Some(&row), &conversation, &lease(3), true);
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
        let result = plan_save(None, &conversation, &lease(3), false);
        assert!(
            matches!(result, Err(StoreError::NotFound { .. })),
            "{result:?}"
        );
        let result = plan_save(Some(&row), &conversation, &lease(2), false);
        assert!(
            matches!(result, Err(StoreError::StaleLease { epoch: 2, .. })),
            "{result:?}"
        );

        let created = plan_save(None, &conversation, &lease(1), true).unwrap();
        assert_eq!(
            created,
            SavePlan {
                user_id: conversation.user_id,
                created_at: 1_000,
                expected_updated_at: None,
                previous_updated_at: 3_000,
                stale_positions: vec![],
            }
        );
    }

    #[test]
    fn saves_move_the_listing_and_repair_a_lost_move() {
        let row = sample_row(); // updated_at 3_000, moved there from 2_000
        let moved = Conversation {
            updated_at: Timestamp(4_000),
            // A save never changes the owner or the creation time, as on SQLite.
            user_id: Uuid::new_v4(),
            created_at: Timestamp(9),
            ..sample_conversation(&row)
        };
        let plan = plan_save(Some(&row), &moved, &lease(4), false).unwrap();
        assert_eq!(
            plan,
            SavePlan {
                user_id: row.user_id,
                created_at: 1_000,
                expected_updated_at: Some(3_000),
                previous_updated_at: 3_000,
                stale_positions: vec![3_000, 2_000],
            }
        );
        // A retry after the record was written: the position it left is deleted again.
        let retried = ConversationRow {
            updated_at: 4_000,
            previous_updated_at: 3_000,
            ..row.clone()
        };
        let plan = plan_save(Some(&retried), &moved, &lease(4), false).unwrap();
        assert_eq!(plan.previous_updated_at, 3_000);
        assert_eq!(plan.stale_positions, vec![3_000]);
        // Never delete the position being written.
        let back = Conversation {
            updated_at: Timestamp(2_000),
            ..moved
        };
        let plan = plan_save(Some(&row), &back, &lease(4), false).unwrap();
        assert_eq!(plan.stale_positions, vec![3_000]);
    }

    #[test]
    fn a_save_writes_each_seq_once() {
        let conversation = Uuid::new_v4();
        let message = |seq, id| Message {
            conversation_id: conversation,
            seq,
            id,
            role: MessageRole::User,
            content: String::new(),
            model: None,
            status: MessageStatus::Complete,
            created_at: Timestamp(1),
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let twice = [message(2, a), message(1, b), message(2, a)];
        let distinct = distinct_messages(&twice).unwrap();
        assert_eq!(
            distinct.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let clash = [message(1, a), message(1, b)];
        assert!(matches!(
            distinct_messages(&clash),
            Err(StoreError::Conflict(_))
        ));
    }

    #[test]
    fn conversation_rows_roundtrip_through_the_driver_serialization() {
        let pruning = ColumnType::Tuple(vec![
            ColumnType::Native(BigInt),
            ColumnType::Native(BigInt),
            ColumnType::Native(BigInt),
            ColumnType::Native(BigInt),
            ColumnType::Native(Boolean),
        ]);
        let columns = [
            native("id", UuidType),
            native("user_id", UuidType),
            native("title", Text),
            native("created_at", BigInt),
            native("updated_at", BigInt),
            native("previous_updated_at", BigInt),
            native("model", Text),
            native("message_count", BigInt),
            native("last_message", Text),
            native("summary", Text),
            native("pruned_through", BigInt),
            ("pruning", pruning),
            native("epoch", BigInt),
            native("deleted", Boolean),
        ];
        let row = sample_row();
        assert_eq!(roundtrip(&row, &columns), row);
        let tombstone = ConversationRow {
            deleted: true,
            title: None,
            model: None,
            last_message: None,
            summary: None,
            pruning: None,
            ..row
        };
        assert_eq!(roundtrip(&tombstone, &columns), tombstone);
    }

    #[test]
    fn message_rows_roundtrip_through_the_driver_serialization() {
        let row = MessageRow {
            seq: 1_001,
            id: Uuid::new_v4(),
            role: "assistant".into(),
            content: "message 1001".into(),
            model: Some("model-a".into()),
            status: "cancelled".into(),
            created_at: 2_001,
        };
        let columns = [
            native("seq", BigInt),
            native("id", UuidType),
            native("role", Text),
            native("content", Text),
            native("model", Text),
            native("status", Text),
            native("created_at", BigInt),
        ];
        assert_eq!(roundtrip(&row, &columns), row);
        let user = MessageRow {
            model: None,
            role: "user".into(),
            ..row
        };
        let user = roundtrip(&user, &columns);
        let id = Uuid::new_v4();
        let message = user.into_message(id).unwrap();
        assert_eq!((message.role, message.model), (MessageRole::User, None));
        assert_eq!(message.status, MessageStatus::Cancelled);
        let unknown = MessageRow {
            seq: 1,
            id,
            role: "system".into(),
            content: String::new(),
            model: None,
            status: "complete".into(),
            created_at: 1,
        };
        assert!(matches!(
            unknown.into_message(id),
            Err(StoreError::Internal(_))
        ));

        let ids = MessageIdRow {
            seq: 7,
            id: Uuid::new_v4(),
        };
        let id_columns = [native("seq", BigInt), native("id", UuidType)];
        assert_eq!(roundtrip(&ids, &id_columns), ids);
    }

    #[test]
    fn listing_rows_roundtrip_through_the_driver_serialization() {
        let created = CreatedEntry {
            created_at: 1_000,
            id: Uuid::new_v4(),
            title: "Winter HIVE check".into(),
            updated_at: 3_000,
        };
        let columns = [
            native("created_at", BigInt),
            native("id", UuidType),
            native("title", Text),
            native("updated_at", BigInt),
        ];
        assert_eq!(roundtrip(&created, &columns), created);
        let updated = UpdatedEntry {
            updated_at: 3_000,
            id: Uuid::new_v4(),
        };
        let columns = [native("updated_at", BigInt), native("id", UuidType)];
        assert_eq!(roundtrip(&updated, &columns), updated);
    }
}
