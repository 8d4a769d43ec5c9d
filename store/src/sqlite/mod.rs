//! The embedded SQLite backend: one file in the data dir, WAL mode, so that several `sting`
//! processes on one host can share it. Blocking SQLite calls run on tokio's blocking pool.
//! Writes go through one connection (SQLite has a single writer anyway, and serialising them
//! in-process avoids busy retries); reads spread over a few reader connections.

mod export;
mod knowledge;
mod marketplace;
mod migrations;
mod passkeys;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use uuid::Uuid;

use crate::prelude::*;
use crate::{
    conversation_lease_key, Ceremony, Chunk, Conversation, ConversationId, ConversationQuery,
    ConversationSort, Document, DocumentId, DocumentStatus, HoneyJar, JarId, JarQuery, Lease,
    License, Listing, ListingId, ListingQuery, Message, MessageRole, MessageStatus, Order, OrderId,
    OrderStatus, Page, Passkey, PruningRecord, Role, Session, SortOrder, StoreError, StoreResult,
    Timestamp, User, UserId,
};

const READER_CONNECTIONS: usize = 4;
/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Store`] on an embedded SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|err| StoreError::Internal(format!("open task failed: {err}")))?
    }

    fn open_blocking(path: PathBuf) -> StoreResult<SqliteStore> {
        let mut writer = open_connection(&path)?;
        migrations::migrate(&mut writer).map_err(map_err)?;
        let readers = (0..READER_CONNECTIONS)
            .map(|_| open_connection(&path).map(Mutex::new))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let slot = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = lock(&inner.readers[slot])?;
            f(&conn).map_err(map_err)
        })
        .await
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer connection; commits when `f`
    /// returns `Ok`, rolls back otherwise (no partial writes).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let mut conn = lock(&inner.writer)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let value = f(&tx)?;
            tx.commit().map_err(map_err)?;
            Ok(value)
        })
        .await
    }
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(map_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(map_err)?;
    // In WAL mode NORMAL is durable across application crashes; only a power loss may drop
    // the last transactions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(map_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(map_err)?;
    Ok(conn)
}

async fn run_blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| StoreError::Internal(format!("store task failed: {err}")))?
}

fn lock(conn: &Mutex<Connection>) -> StoreResult<std::sync::MutexGuard<'_, Connection>> {
    // A panic while holding the lock cannot leave a half-applied transaction behind
    // (it rolls back on drop), so a poisoned connection is still usable.
    Ok(conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn map_err(err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(err.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(err.to_string())
        }
        _ => StoreError::Internal(err.to_string()),
    }
}

fn parse_uuid(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(err))
    })
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, active, created_at, updated_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(4)?;
    Ok(User {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        email: row.get(1)?,
        name: row.get(2)?,
        password_hash: row.get(3)?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("unknown role {role:?}").into(),
            )
        })?,
        active: row.get(5)?,
        created_at: Timestamp(row.get(6)?),
        updated_at: Timestamp(row.get(7)?),
    })
}

pub(super) const SESSION_COLUMNS: &str =
    "id, token_hash, user_id, created_at, expires_at, last_seen_at";

pub(super) fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        token_hash: row.get(1)?,
        user_id: parse_uuid(&row.get::<_, String>(2)?)?,
        created_at: Timestamp(row.get(3)?),
        expires_at: Timestamp(row.get(4)?),
        last_seen_at: Timestamp(row.get(5)?),
    })
}

const CONVERSATION_COLUMNS: &str = "id, user_id, title, created_at, updated_at, model,
    message_count, last_message, summary, pruned_through, pruning_at, pruning_messages,
    pruning_tokens_before, pruning_tokens_after, pruning_automatic";

fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    let last_pruning = match row.get::<_, Option<i64>>(10)? {
        None => None,
        Some(at) => Some(PruningRecord {
            timestamp: Timestamp(at),
            messages_pruned: row.get::<_, i64>(11)? as u64,
            tokens_before: row.get::<_, i64>(12)? as u64,
            tokens_after: row.get::<_, i64>(13)? as u64,
            automatic: row.get(14)?,
        }),
    };
    Ok(Conversation {
        id: parse_uuid(&row.get::<_, String>(0)?)?,
        user_id: parse_uuid(&row.get::<_, String>(1)?)?,
        title: row.get(2)?,
        created_at: Timestamp(row.get(3)?),
        updated_at: Timestamp(row.get(4)?),
        model: row.get(5)?,
        message_count: row.get::<_, i64>(6)? as u64,
        last_message: row.get(7)?,
        summary: row.get(8)?,
        pruned_through: row.get::<_, i64>(9)? as u64,
        last_pruning,
    })
}

const MESSAGE_COLUMNS: &str = "conversation_id, seq, id, role, content, model, status, created_at";

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let role: String = row.get(3)?;
    let status: String = row.get(6)?;
    Ok(Message {
        conversation_id: parse_uuid(&row.get::<_, String>(0)?)?,
        seq: row.get::<_, i64>(1)? as u64,
        id: parse_uuid(&row.get::<_, String>(2)?)?,
        role: MessageRole::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown message role {role:?}").into(),
            )
        })?,
        content: row.get(4)?,
        model: row.get(5)?,
        status: MessageStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Text,
                format!("unknown message status {status:?}").into(),
            )
        })?,
        created_at: Timestamp(row.get(7)?),
    })
}

/// Writes a conversation's record: inserts it when `create`, else updates its mutable fields.
fn write_conversation(tx: &Connection, c: &Conversation, create: bool) -> StoreResult<()> {
    let pruning = c.last_pruning.as_ref();
    let values = params![
        c.id.to_string(),
        c.user_id.to_string(),
        c.title,
        c.created_at.0,
        c.updated_at.0,
        c.model,
        c.message_count as i64,
        c.last_message,
        c.summary,
        c.pruned_through as i64,
        pruning.map(|p| p.timestamp.0),
        pruning.map(|p| p.messages_pruned as i64),
        pruning.map(|p| p.tokens_before as i64),
        pruning.map(|p| p.tokens_after as i64),
        pruning.map(|p| p.automatic),
    ];
    if create {
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO conversations ({CONVERSATION_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT DO NOTHING"
                ),
                values,
            )
            .map_err(map_err)?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "conversation {} exists",
                c.id
            )));
        }
    } else {
        // The owner and creation time never change; ?2 and ?4 are bound but unused.
        let updated = tx
            .execute(
                "UPDATE conversations SET title = ?3, updated_at = ?5, model = ?6,
                 message_count = ?7, last_message = ?8, summary = ?9, pruned_through = ?10,
                 pruning_at = ?11, pruning_messages = ?12, pruning_tokens_before = ?13,
                 pruning_tokens_after = ?14, pruning_automatic = ?15
                 WHERE id = ?1",
                values,
            )
            .map_err(map_err)?;
        if updated == 0 {
            return Err(StoreError::NotFound {
                entity: "conversation",
            });
        }
    }
    Ok(())
}

/// Appends one message; an identical retry (same seq and id) is skipped.
fn insert_message(tx: &Connection, m: &Message) -> StoreResult<()> {
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO NOTHING"
            ),
            params![
                m.conversation_id.to_string(),
                m.seq as i64,
                m.id.to_string(),
                m.role.as_str(),
                m.content,
                m.model,
                m.status.as_str(),
                m.created_at.0
            ],
        )
        .map_err(map_err)?;
    if inserted == 1 {
        return Ok(());
    }
    let existing: String = tx
        .query_row(
            "SELECT id FROM messages WHERE conversation_id = ?1 AND seq = ?2",
            params![m.conversation_id.to_string(), m.seq as i64],
            |row| row.get(0),
        )
        .map_err(map_err)?;
    if existing == m.id.to_string() {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "message {} of conversation {} is {existing}, not {}",
            m.seq, m.conversation_id, m.id
        )))
    }
}

fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        key: row.get(0)?,
        owner: row.get(1)?,
        epoch: row.get::<_, i64>(2)? as u64,
        expires_at: Timestamp(row.get(3)?),
    })
}

fn current_lease(tx: &Connection, key: &str) -> StoreResult<Option<Lease>> {
    tx.query_row(
        "SELECT key, owner, epoch, expires_at FROM leases WHERE key = ?1",
        [key],
        lease_from_row,
    )
    .optional()
    .map_err(map_err)
}

/// Fails unless `lease` is still the current tenure (same owner and epoch).
fn check_tenure(tx: &Connection, lease: &Lease) -> StoreResult<()> {
    match current_lease(tx, &lease.key)? {
        Some(current) if current.owner == lease.owner && current.epoch == lease.epoch => Ok(()),
        _ => Err(StoreError::StaleLease {
            key: lease.key.clone(),
            epoch: lease.epoch,
        }),
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    async fn flush(&self) -> StoreResult<()> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let conn = lock(&inner.writer)?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(map_err)
        })
        .await
    }
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn create_user(&self, user: &User) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO users (id, email, name, password_hash, role, active, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                    params![
                        user.id.to_string(),
                        user.email,
                        user.name,
                        user.password_hash,
                        user.role.as_str(),
                        user.active,
                        user.created_at.0,
                        user.updated_at.0
                    ],
                )
                .map_err(map_err)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "a user with email {} or id {} exists",
                    user.email, user.id
                )));
            }
            Ok(())
        })
        .await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id.to_string()],
                user_from_row,
            )
            .optional()
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?1"),
                [email],
                user_from_row,
            )
            .optional()
        })
        .await
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE users SET email = ?2, name = ?3, password_hash = ?4, role = ?5,
                     active = ?6, updated_at = ?7 WHERE id = ?1",
                    params![
                        user.id.to_string(),
                        user.email,
                        user.name,
                        user.password_hash,
                        user.role.as_str(),
                        user.active,
                        user.updated_at.0
                    ],
                )
                .map_err(map_err)?;
            if updated == 0 {
                return Err(StoreError::NotFound { entity: "user" });
            }
            Ok(())
        })
        .await
    }

    async fn list_users(&self, page: Page) -> StoreResult<(Vec<User>, u64)> {
        self.read(move |conn| {
            let total: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT ?1 OFFSET ?2"
            ))?;
            let users = stmt
                .query_map(
                    params![page.limit as i64, page.offset.min(i64::MAX as u64) as i64],
                    user_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((users, total as u64))
        })
        .await
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        let s = session.clone();
        self.write(move |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![
                    s.id.to_string(),
                    s.token_hash,
                    s.user_id.to_string(),
                    s.created_at.0,
                    s.expires_at.0,
                    s.last_seen_at.0
                ],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<Session>> {
        let token_hash = token_hash.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"),
                [token_hash],
                session_from_row,
            )
            .optional()
        })
        .await
    }

    async fn touch_session(
        &self,
        token_hash: &str,
        expires_at: Timestamp,
        last_seen_at: Timestamp,
    ) -> StoreResult<bool> {
        let token_hash = token_hash.to_owned();
        self.write(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE sessions SET expires_at = ?2, last_seen_at = ?3 WHERE token_hash = ?1",
                    params![token_hash, expires_at.0, last_seen_at.0],
                )
                .map_err(map_err)?;
            Ok(updated == 1)
        })
        .await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let token_hash = token_hash.to_owned();
        self.write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])
                .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: UserId) -> StoreResult<Vec<String>> {
        self.write(move |tx| {
            let mut stmt = tx
                .prepare("DELETE FROM sessions WHERE user_id = ?1 RETURNING token_hash")
                .map_err(map_err)?;
            let hashes = stmt
                .query_map([user_id.to_string()], |row| row.get(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                .map_err(map_err)?;
            Ok(hashes)
        })
        .await
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        self.write(move |tx| {
            let deleted = tx
                .execute("DELETE FROM sessions WHERE expires_at < ?1", [now.0])
                .map_err(map_err)?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn create_passkey(&self, passkey: &Passkey) -> StoreResult<()> {
        let passkey = passkey.clone();
        self.write(move |tx| passkeys::create_passkey(tx, &passkey))
            .await
    }

    async fn passkey(&self, credential_id: &str) -> StoreResult<Option<Passkey>> {
        let credential_id = credential_id.to_owned();
        self.read(move |conn| passkeys::passkey(conn, &credential_id))
            .await
    }

    async fn passkeys_of(&self, user_id: UserId) -> StoreResult<Vec<Passkey>> {
        self.read(move |conn| passkeys::passkeys_of(conn, user_id))
            .await
    }

    async fn record_passkey_use(
        &self,
        credential_id: &str,
        sign_count: u32,
        credential: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        let (credential_id, credential) = (credential_id.to_owned(), credential.to_owned());
        self.write(move |tx| {
            passkeys::record_passkey_use(tx, &credential_id, sign_count, &credential, at)
        })
        .await
    }

    async fn delete_passkey(&self, user_id: UserId, credential_id: &str) -> StoreResult<bool> {
        let credential_id = credential_id.to_owned();
        self.write(move |tx| passkeys::delete_passkey(tx, user_id, &credential_id))
            .await
    }

    async fn put_ceremony(&self, ceremony: &Ceremony, now: Timestamp) -> StoreResult<()> {
        let ceremony = ceremony.clone();
        self.write(move |tx| passkeys::put_ceremony(tx, &ceremony, now))
            .await
    }

    async fn take_ceremony(&self, id: &str, now: Timestamp) -> StoreResult<Option<Ceremony>> {
        let id = id.to_owned();
        self.write(move |tx| passkeys::take_ceremony(tx, &id, now))
            .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.write(move |tx| {
            let expires_at = now.plus_ms(ttl_ms);
            let epoch = match current_lease(tx, &key)? {
                None => 1,
                Some(current) if current.owner == owner && current.expires_at > now => {
                    current.epoch
                }
                Some(current) if current.expires_at <= now => current.epoch + 1,
                Some(current) => {
                    return Err(StoreError::LeaseHeld {
                        key,
                        owner: current.owner,
                        expires_at: current.expires_at,
                    })
                }
            };
            tx.execute(
                "INSERT INTO leases (key, owner, epoch, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET owner = ?2, epoch = ?3, expires_at = ?4",
                params![key, owner, epoch as i64, expires_at.0],
            )
            .map_err(map_err)?;
            Ok(Lease {
                key,
                owner,
                epoch,
                expires_at,
            })
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64, now: Timestamp) -> StoreResult<Lease> {
        let lease = lease.clone();
        self.write(move |tx| {
            check_tenure(tx, &lease)?;
            let expires_at = now.plus_ms(ttl_ms);
            tx.execute(
                "UPDATE leases SET expires_at = ?2 WHERE key = ?1",
                params![lease.key, expires_at.0],
            )
            .map_err(map_err)?;
            Ok(Lease {
                expires_at,
                ..lease
            })
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            check_tenure(tx, &lease)?;
            // Keep the row: the epoch must never restart, or a fenced-off holder could match a
            // later tenure. Expiring it frees the lease for the next owner.
            tx.execute(
                "UPDATE leases SET expires_at = 0 WHERE key = ?1",
                [&lease.key],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn lease(&self, key: &str) -> StoreResult<Option<Lease>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT key, owner, epoch, expires_at FROM leases WHERE key = ?1",
                [key],
                lease_from_row,
            )
            .optional()
        })
        .await
    }

    async fn take_over_lease(
        &self,
        observed: &Lease,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease> {
        let (observed, owner) = (observed.clone(), owner.to_owned());
        self.write(move |tx| {
            check_tenure(tx, &observed)?;
            let lease = Lease {
                key: observed.key,
                owner,
                epoch: observed.epoch + 1,
                expires_at: now.plus_ms(ttl_ms),
            };
            tx.execute(
                "UPDATE leases SET owner = ?2, epoch = ?3, expires_at = ?4 WHERE key = ?1",
                params![
                    lease.key,
                    lease.owner,
                    lease.epoch as i64,
                    lease.expires_at.0
                ],
            )
            .map_err(map_err)?;
            Ok(lease)
        })
        .await
    }
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn save_conversation(
        &self,
        lease: &Lease,
        conversation: &Conversation,
        new_messages: &[Message],
        create: bool,
    ) -> StoreResult<()> {
        crate::check_messages(conversation, new_messages)?;
        let (lease, conversation, new_messages) =
            (lease.clone(), conversation.clone(), new_messages.to_vec());
        self.write(move |tx| {
            // A lease on another key, even a current one, does not fence this conversation.
            if lease.key != conversation_lease_key(conversation.id) {
                return Err(StoreError::StaleLease {
                    key: lease.key,
                    epoch: lease.epoch,
                });
            }
            check_tenure(tx, &lease)?;
            write_conversation(tx, &conversation, create)?;
            for message in &new_messages {
                insert_message(tx, message)?;
            }
            Ok(())
        })
        .await
    }

    async fn conversation(&self, id: ConversationId) -> StoreResult<Option<Conversation>> {
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
                [id.to_string()],
                conversation_from_row,
            )
            .optional()
        })
        .await
    }

    async fn list_conversations(
        &self,
        user_id: UserId,
        query: &ConversationQuery,
    ) -> StoreResult<(Vec<Conversation>, u64)> {
        let column = match query.sort {
            ConversationSort::CreatedAt => "created_at",
            ConversationSort::UpdatedAt => "updated_at",
        };
        let direction = match query.order {
            SortOrder::Asc => "ASC",
            SortOrder::Desc => "DESC",
        };
        // SQLite's LIKE folds ASCII case only.
        let pattern = knowledge::like_substring(query.search.as_deref().unwrap_or(""));
        let page = query.page;
        self.read(move |conn| {
            let user_id = user_id.to_string();
            let filter = "user_id = ?1 AND title LIKE ?2 ESCAPE '\\'";
            let total: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM conversations WHERE {filter}"),
                params![user_id, pattern],
                |row| row.get(0),
            )?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {filter}
                 ORDER BY {column} {direction}, id {direction} LIMIT ?3 OFFSET ?4"
            ))?;
            let conversations = stmt
                .query_map(
                    params![
                        user_id,
                        pattern,
                        page.limit as i64,
                        page.offset.min(i64::MAX as u64) as i64
                    ],
                    conversation_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((conversations, total as u64))
        })
        .await
    }

    async fn messages(
        &self,
        conversation_id: ConversationId,
        from_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 AND seq >= ?2
                 ORDER BY seq LIMIT ?3"
            ))?;
            let messages = stmt
                .query_map(
                    params![
                        conversation_id.to_string(),
                        from_seq.min(i64::MAX as u64) as i64,
                        limit as i64
                    ],
                    message_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(messages)
        })
        .await
    }

    async fn delete_conversation(&self, id: ConversationId) -> StoreResult<bool> {
        self.write(move |tx| {
            let id = id.to_string();
            // The lease row stays: its epoch must never restart (see `release_lease`).
            tx.execute("DELETE FROM messages WHERE conversation_id = ?1", [&id])
                .map_err(map_err)?;
            let deleted = tx
                .execute("DELETE FROM conversations WHERE id = ?1", [&id])
                .map_err(map_err)?;
            Ok(deleted == 1)
        })
        .await
    }

    // The SQL of honey jars, documents and chunks is in `knowledge.rs`.
}

#[async_trait]
impl KnowledgeStore for SqliteStore {
    async fn create_jar(&self, jar: &HoneyJar) -> StoreResult<()> {
        let jar = jar.clone();
        self.write(move |tx| knowledge::create_jar(tx, &jar)).await
    }

    async fn jar(&self, id: JarId) -> StoreResult<Option<HoneyJar>> {
        self.read(move |conn| knowledge::jar(conn, id)).await
    }

    async fn update_jar(&self, jar: &HoneyJar) -> StoreResult<()> {
        let jar = jar.clone();
        self.write(move |tx| knowledge::update_jar(tx, &jar)).await
    }

    async fn delete_jar(&self, id: JarId) -> StoreResult<bool> {
        self.write(move |tx| knowledge::delete_jar(tx, id)).await
    }

    async fn list_jars(&self, query: &JarQuery) -> StoreResult<(Vec<HoneyJar>, u64)> {
        let query = query.clone();
        self.read(move |conn| knowledge::list_jars(conn, &query))
            .await
    }

    async fn readable_jars(&self, reader: UserId) -> StoreResult<Vec<HoneyJar>> {
        self.read(move |conn| knowledge::readable_jars(conn, reader))
            .await
    }

    async fn create_document(&self, document: &Document) -> StoreResult<()> {
        let document = document.clone();
        self.write(move |tx| knowledge::create_document(tx, &document))
            .await
    }

    async fn document(&self, id: DocumentId) -> StoreResult<Option<Document>> {
        self.read(move |conn| knowledge::document(conn, id)).await
    }

    async fn update_document(&self, document: &Document) -> StoreResult<()> {
        let document = document.clone();
        self.write(move |tx| knowledge::update_document(tx, &document))
            .await
    }

    async fn list_documents(&self, jar_id: JarId, page: Page) -> StoreResult<(Vec<Document>, u64)> {
        self.read(move |conn| knowledge::list_documents(conn, jar_id, page))
            .await
    }

    async fn documents_with_status(
        &self,
        status: DocumentStatus,
        limit: u32,
    ) -> StoreResult<Vec<Document>> {
        self.read(move |conn| knowledge::documents_with_status(conn, status, limit))
            .await
    }

    async fn delete_document(&self, id: DocumentId) -> StoreResult<Option<Document>> {
        self.write(move |tx| knowledge::delete_document(tx, id))
            .await
    }

    async fn save_chunks(&self, document: &Document, chunks: &[Chunk]) -> StoreResult<()> {
        crate::check_chunks(document, chunks)?;
        let (document, chunks) = (document.clone(), chunks.to_vec());
        self.write(move |tx| knowledge::save_chunks(tx, &document, &chunks))
            .await
    }

    async fn document_chunks(&self, document_id: DocumentId) -> StoreResult<Vec<Chunk>> {
        self.read(move |conn| knowledge::document_chunks(conn, document_id))
            .await
    }

    async fn jar_chunks(
        &self,
        jar_id: JarId,
        after: Option<(DocumentId, u32)>,
        limit: u32,
    ) -> StoreResult<Vec<Chunk>> {
        self.read(move |conn| knowledge::jar_chunks(conn, jar_id, after, limit))
            .await
    }
}

#[async_trait]
impl MarketStore for SqliteStore {
    async fn create_listing(&self, listing: &Listing) -> StoreResult<()> {
        let listing = listing.clone();
        self.write(move |tx| marketplace::create_listing(tx, &listing))
            .await
    }

    async fn listing(&self, id: ListingId) -> StoreResult<Option<Listing>> {
        self.read(move |conn| marketplace::listing(conn, id)).await
    }

    async fn update_listing(&self, listing: &Listing) -> StoreResult<()> {
        let listing = listing.clone();
        self.write(move |tx| marketplace::update_listing(tx, &listing))
            .await
    }

    async fn list_listings(&self, query: &ListingQuery) -> StoreResult<(Vec<Listing>, u64)> {
        let query = query.clone();
        self.read(move |conn| marketplace::list_listings(conn, &query))
            .await
    }

    async fn place_order(&self, order: &Order) -> StoreResult<Order> {
        let order = order.clone();
        self.write(move |tx| marketplace::place_order(tx, &order))
            .await
    }

    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        self.read(move |conn| marketplace::order(conn, id)).await
    }

    async fn mark_order_paid(&self, id: OrderId, at: Timestamp) -> StoreResult<Order> {
        self.write(move |tx| marketplace::mark_order_paid(tx, id, at))
            .await
    }

    async fn orders_of(&self, buyer: UserId, page: Page) -> StoreResult<(Vec<Order>, u64)> {
        self.read(move |conn| marketplace::orders_of(conn, buyer, page))
            .await
    }

    async fn list_orders(
        &self,
        status: Option<OrderStatus>,
        page: Page,
    ) -> StoreResult<(Vec<Order>, u64)> {
        self.read(move |conn| marketplace::list_orders(conn, status, page))
            .await
    }

    async fn licenses_of(&self, buyer: UserId) -> StoreResult<Vec<License>> {
        self.read(move |conn| marketplace::licenses_of(conn, buyer))
            .await
    }

    async fn rate_listing(
        &self,
        listing: ListingId,
        buyer: UserId,
        stars: u8,
        at: Timestamp,
    ) -> StoreResult<Listing> {
        self.write(move |tx| marketplace::rate_listing(tx, listing, buyer, stars, at))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store_test_suite!(|_test| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("sting.db"))
            .await
            .expect("open sqlite store");
        (store, dir)
    });

    #[tokio::test]
    async fn reopening_keeps_data_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sting.db");
        let user = crate::tests::sample_user("keep@example.com");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store.create_user(&user).await.unwrap();
            store.flush().await.unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.user(user.id).await.unwrap(), Some(user));
    }

    #[tokio::test]
    async fn two_handles_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sting.db");
        let a = SqliteStore::open(&path).await.unwrap();
        let b = SqliteStore::open(&path).await.unwrap();
        let lease = a
            .acquire_lease("conv:1", "node-a", 10_000, Timestamp(1_000))
            .await
            .unwrap();
        let refused = b
            .acquire_lease("conv:1", "node-b", 10_000, Timestamp(2_000))
            .await;
        assert!(matches!(refused, Err(StoreError::LeaseHeld { .. })));
        assert_eq!(b.lease("conv:1").await.unwrap(), Some(lease));
    }
}
