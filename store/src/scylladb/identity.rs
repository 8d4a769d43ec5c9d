//! Accounts, login sessions, passkeys and WebAuthn ceremonies on ScyllaDB.
//!
//! Every row that has a uniqueness or compare-and-set rule (users, email claims, sessions,
//! passkeys, ceremonies) is written only through lightweight transactions. The tables that
//! index them by another key are plain upserts: `sessions_by_user`, `sessions_by_expiry` and
//! `passkeys_by_user` are written *before* the row they point to, so that a crash leaves at
//! worst an entry without its row, which every reader checks against the row; the admin
//! listing (`users_by_creation`) is written after its user row, since users are never deleted.
//! The design and its limits are in `store/SCYLLA.md`, "Identity".

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session as CqlSession;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::schema::Migration;
use super::{
    applied, contended, corrupt, logged_batch, maybe_row, prepare, prepare_serial_read, read_paged,
    unavailable, ScyllaStore,
};
use crate::{
    Ceremony, CeremonyKind, IdentityStore, Page, Passkey, Role, Session, StoreError, StoreResult,
    Timestamp, User, UserId,
};

pub(super) const MIGRATION: Migration = Migration {
    version: 2,
    description: "identity",
    statements: &[
        // Written with `IF NOT EXISTS` and changed with `IF email = ?`.
        "CREATE TABLE IF NOT EXISTS users (
            id uuid PRIMARY KEY,
            email text,
            name text,
            password_hash text,
            role text,
            active boolean,
            created_at bigint,
            updated_at bigint
        )",
        // Makes emails unique: claimed (`IF NOT EXISTS`) before the user row is written, and
        // released (`IF user_id = ? AND claimed_at = ?`) when the user moves to another one.
        "CREATE TABLE IF NOT EXISTS users_by_email (
            email text PRIMARY KEY,
            user_id uuid,
            claimed_at bigint
        )",
        // The admin listing, in SQLite's order (created_at, then the id's text). One partition
        // (shard 0): bounded by the number of accounts (see SCYLLA.md).
        "CREATE TABLE IF NOT EXISTS users_by_creation (
            shard int,
            created_at bigint,
            id text,
            PRIMARY KEY ((shard), created_at, id)
        )",
        // Every session row carries a TTL of its lifetime plus a day (a backstop: expiry is
        // decided from the caller's `now`).
        "CREATE TABLE IF NOT EXISTS sessions (
            token_hash text PRIMARY KEY,
            id uuid,
            user_id uuid,
            created_at bigint,
            expires_at bigint,
            last_seen_at bigint
        )",
        // Revoking a user's sessions; bounded by what one user holds.
        "CREATE TABLE IF NOT EXISTS sessions_by_user (
            user_id uuid,
            token_hash text,
            PRIMARY KEY ((user_id), token_hash)
        )",
        // The sweep: sessions by the day (UTC, of `expires_at`) they expire.
        "CREATE TABLE IF NOT EXISTS sessions_by_expiry (
            day bigint,
            expires_at bigint,
            token_hash text,
            user_id uuid,
            PRIMARY KEY ((day), expires_at, token_hash)
        )",
        // A credential belongs to one account: `IF NOT EXISTS`.
        "CREATE TABLE IF NOT EXISTS passkeys (
            credential_id text PRIMARY KEY,
            user_id uuid,
            user_handle text,
            name text,
            public_key text,
            sign_count bigint,
            transports list<text>,
            credential text,
            created_at bigint,
            last_used_at bigint
        )",
        // A user's passkeys, oldest first (as SQLite: created_at, then credential_id).
        "CREATE TABLE IF NOT EXISTS passkeys_by_user (
            user_id uuid,
            created_at bigint,
            credential_id text,
            PRIMARY KEY ((user_id), created_at, credential_id)
        )",
        // Written with a TTL a little beyond its expiry, which replaces SQLite's sweep.
        "CREATE TABLE IF NOT EXISTS webauthn_ceremonies (
            id text PRIMARY KEY,
            kind text,
            user_id uuid,
            binding text,
            state text,
            expires_at bigint
        )",
    ],
};

/// A compare-and-set that lost a race is decided again from the new state, at most this often.
const CAS_ATTEMPTS: usize = 5;

const MS_PER_DAY: i64 = 86_400_000;

/// How long a session's rows outlive its expiry (by the wall clock) before the TTL removes
/// them; the sweep, driven by the caller's `now`, normally removes them first.
const SESSION_TTL_SLACK_SECS: i64 = 86_400;

/// How long a ceremony's row outlives its expiry.
const CEREMONY_TTL_SLACK_SECS: i64 = 3_600;

/// The longest TTL CQL accepts (20 years).
const MAX_TTL_SECS: i64 = 630_720_000;

/// The days before `now`'s day that a sweep reads. An expiry-index row dies (by its TTL) a day
/// after the end of its day, so one day back covers every live row; the second is margin for
/// clocks that disagree.
const SWEEP_LOOKBACK_DAYS: i64 = 2;

/// Requests in flight at once for one call: rows read by id, sessions revoked or swept.
const CONCURRENT_READS: usize = 32;
const CONCURRENT_WRITES: usize = 16;

/// A claim on an email younger than this is a creation or an email change in flight, even when
/// its user row does not carry the email yet. Older, it is an orphan (its writer crashed
/// between the claim and the user row) that another account may take over.
const CLAIM_GRACE_MS: i64 = 10 * 60 * 1_000;

/// The most accounts the admin listing reads through (its one partition's bound).
const MAX_LISTED_USERS: u64 = 1_000_000;

/// The most sessions one user holds, and passkeys one user registers.
const MAX_SESSIONS_PER_USER: usize = 10_000;
const MAX_PASSKEYS_PER_USER: usize = 1_000;

/// The most sessions expiring on one day that a sweep reads.
const MAX_SESSIONS_EXPIRING_PER_DAY: usize = 500_000;

const USER_COLUMNS: &str = "id, email, name, password_hash, role, active, created_at, updated_at";
const SESSION_COLUMNS: &str = "token_hash, id, user_id, created_at, expires_at, last_seen_at";
const PASSKEY_COLUMNS: &str = "credential_id, user_id, user_handle, name, public_key, \
    sign_count, transports, credential, created_at, last_used_at";
const CEREMONY_COLUMNS: &str = "id, kind, user_id, binding, state, expires_at";

#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserRow {
    fn into_user(self) -> StoreResult<User> {
        let role = Role::parse(&self.role)
            .ok_or_else(|| corrupt("user row", format!("role {:?}", self.role)))?;
        Ok(User {
            id: self.id,
            email: self.email,
            name: self.name,
            password_hash: self.password_hash,
            role,
            active: self.active,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
        })
    }
}

/// Who holds an email, since when (wall clock, ms).
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct ClaimRow {
    pub user_id: Uuid,
    pub claimed_at: i64,
}

/// An entry of the admin listing: the user id as text, which orders ties of `created_at` as
/// SQLite does.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct ListedUserRow {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct SessionRow {
    pub token_hash: String,
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_seen_at: i64,
}

impl SessionRow {
    fn into_session(self) -> Session {
        Session {
            id: self.id,
            token_hash: self.token_hash,
            user_id: self.user_id,
            created_at: Timestamp(self.created_at),
            expires_at: Timestamp(self.expires_at),
            last_seen_at: Timestamp(self.last_seen_at),
        }
    }
}

#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct SessionOfUserRow {
    pub token_hash: String,
}

/// An entry of `sessions_by_expiry` (of a day the sweep reads).
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct ExpiringSessionRow {
    pub expires_at: i64,
    pub token_hash: String,
    pub user_id: Uuid,
}

#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct PasskeyRow {
    pub credential_id: String,
    pub user_id: Uuid,
    pub user_handle: String,
    pub name: String,
    pub public_key: String,
    /// A `u32` (bigint, so that counters above 2^31 keep their order).
    pub sign_count: i64,
    /// An empty list is stored as null, and read back as empty.
    pub transports: Vec<String>,
    pub credential: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

impl PasskeyRow {
    fn into_passkey(self) -> StoreResult<Passkey> {
        let sign_count = u32::try_from(self.sign_count)
            .map_err(|err| corrupt("passkey row", format!("sign_count: {err}")))?;
        Ok(Passkey {
            credential_id: self.credential_id,
            user_id: self.user_id,
            user_handle: self.user_handle,
            name: self.name,
            public_key: self.public_key,
            sign_count,
            transports: self.transports,
            credential: self.credential,
            created_at: Timestamp(self.created_at),
            last_used_at: self.last_used_at.map(Timestamp),
        })
    }
}

#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct PasskeyOfUserRow {
    pub created_at: i64,
    pub credential_id: String,
}

#[derive(Debug, Clone, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct CeremonyRow {
    pub id: String,
    pub kind: String,
    pub user_id: Uuid,
    pub binding: String,
    pub state: String,
    pub expires_at: i64,
}

impl CeremonyRow {
    fn into_ceremony(self) -> StoreResult<Ceremony> {
        let kind = CeremonyKind::parse(&self.kind)
            .ok_or_else(|| corrupt("ceremony row", format!("kind {:?}", self.kind)))?;
        Ok(Ceremony {
            id: self.id,
            kind,
            user_id: self.user_id,
            binding: self.binding,
            state: self.state,
            expires_at: Timestamp(self.expires_at),
        })
    }
}

/// The TTL (seconds) of a row that the store removes itself at `expires_at` (by the caller's
/// clock): until then by the wall clock `wall_now`, plus `slack_secs`. A row already expired
/// by the wall clock still lives `slack_secs`, so that the caller's `now` decides, not the TTL.
fn backstop_ttl(expires_at: Timestamp, wall_now: Timestamp, slack_secs: i64) -> i32 {
    let remaining_ms = expires_at.0.saturating_sub(wall_now.0).max(0);
    let remaining_secs = remaining_ms / 1_000 + i64::from(remaining_ms % 1_000 != 0);
    let ttl = remaining_secs
        .saturating_add(slack_secs)
        .clamp(1, MAX_TTL_SECS);
    ttl as i32
}

/// The `sessions_by_expiry` partition of an instant: its UTC day since the epoch.
fn expiry_day(at: Timestamp) -> i64 {
    at.0.div_euclid(MS_PER_DAY)
}

/// The partitions a sweep at `now` reads, oldest first.
fn sweep_days(now: Timestamp) -> std::ops::RangeInclusive<i64> {
    let today = expiry_day(now);
    today.saturating_sub(SWEEP_LOOKBACK_DAYS)..=today
}

/// Whether a claim on `email` that its holder's user row does not carry (the holder's current
/// email: `holder_email`, `None` when it has no row) is an orphan another account may take.
fn claim_is_orphan(
    claim: &ClaimRow,
    holder_email: Option<&str>,
    email: &str,
    wall_now: Timestamp,
) -> bool {
    holder_email != Some(email) && wall_now.0.saturating_sub(claim.claimed_at) >= CLAIM_GRACE_MS
}

/// The identity area's statements. A `*_serial` read is at LOCAL_SERIAL: what a decision
/// (the state a compare-and-set expects) is made from sees any transaction in progress.
pub(super) struct Statements {
    // ---- users ----
    user: PreparedStatement,
    user_serial: PreparedStatement,
    insert_user: PreparedStatement,
    /// Replaces the mutable fields if the email is still the one decided from.
    update_user: PreparedStatement,
    claim: PreparedStatement,
    claim_serial: PreparedStatement,
    insert_claim: PreparedStatement,
    /// Gives a claim a new holder and time, if it is still the observed claim, holder and
    /// time (taking an orphan over, or refreshing one's own): a holder that refreshed its
    /// claim meanwhile keeps it.
    reclaim: PreparedStatement,
    release_claim: PreparedStatement,
    /// Puts a user in the admin listing.
    list_user: PreparedStatement,
    listed_users: PreparedStatement,
    count_users: PreparedStatement,
    // ---- sessions ----
    session: PreparedStatement,
    session_serial: PreparedStatement,
    insert_session: PreparedStatement,
    /// Rewrites every column, with a new TTL, if the expiry is still the one decided from.
    slide_session: PreparedStatement,
    delete_session: PreparedStatement,
    /// Deletes a session if it is the given user's.
    delete_session_of: PreparedStatement,
    /// Deletes a session if it expired before the given instant.
    delete_expired_session: PreparedStatement,
    insert_session_of_user: PreparedStatement,
    delete_session_of_user: PreparedStatement,
    insert_session_expiry: PreparedStatement,
    delete_session_expiry: PreparedStatement,
    sessions_of_user: PreparedStatement,
    sessions_expiring: PreparedStatement,
    /// Both index entries of a new session.
    index_session: Batch,
    /// After a slide that moved the expiry: the user entry with the new TTL, and the old
    /// expiry entry removed.
    reindex_moved_session: Batch,
    /// Both index entries of a session that is gone.
    unindex_session: Batch,
    // ---- passkeys ----
    passkey: PreparedStatement,
    passkey_serial: PreparedStatement,
    insert_passkey: PreparedStatement,
    /// A use whose counter goes above the stored one.
    use_counted_passkey: PreparedStatement,
    /// A use of an authenticator without a counter (both 0).
    use_counterless_passkey: PreparedStatement,
    delete_passkey: PreparedStatement,
    insert_passkey_of_user: PreparedStatement,
    delete_passkey_of_user: PreparedStatement,
    passkeys_of_user: PreparedStatement,
    // ---- ceremonies ----
    ceremony_serial: PreparedStatement,
    insert_ceremony: PreparedStatement,
    delete_ceremony: PreparedStatement,
    /// Deletes the ceremony if it is still exactly the one read: one taker gets it.
    take_ceremony: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &CqlSession) -> StoreResult<Statements> {
        let insert_session_of_user = idempotent(
            session,
            "INSERT INTO sessions_by_user (user_id, token_hash) VALUES (?, ?) USING TTL ?",
        )
        .await?;
        let delete_session_of_user = idempotent(
            session,
            "DELETE FROM sessions_by_user WHERE user_id = ? AND token_hash = ?",
        )
        .await?;
        let insert_session_expiry = idempotent(
            session,
            "INSERT INTO sessions_by_expiry (day, expires_at, token_hash, user_id)
             VALUES (?, ?, ?, ?) USING TTL ?",
        )
        .await?;
        let delete_session_expiry = idempotent(
            session,
            "DELETE FROM sessions_by_expiry WHERE day = ? AND expires_at = ? AND token_hash = ?",
        )
        .await?;
        let user = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?");
        let claim = "SELECT user_id, claimed_at FROM users_by_email WHERE email = ?";
        let session_row = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?");
        let passkey = format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?");
        Ok(Statements {
            user: idempotent(session, &user).await?,
            user_serial: prepare_serial_read(session, &user).await?,
            insert_user: conditional(
                session,
                &format!(
                    "INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                     IF NOT EXISTS"
                ),
            )
            .await?,
            update_user: conditional(
                session,
                "UPDATE users SET email = ?, name = ?, password_hash = ?, role = ?, active = ?,
                 updated_at = ? WHERE id = ? IF email = ?",
            )
            .await?,
            claim: idempotent(session, claim).await?,
            claim_serial: prepare_serial_read(session, claim).await?,
            insert_claim: conditional(
                session,
                "INSERT INTO users_by_email (email, user_id, claimed_at) VALUES (?, ?, ?)
                 IF NOT EXISTS",
            )
            .await?,
            reclaim: conditional(
                session,
                "UPDATE users_by_email SET user_id = ?, claimed_at = ? WHERE email = ?
                 IF user_id = ? AND claimed_at = ?",
            )
            .await?,
            release_claim: conditional(
                session,
                "DELETE FROM users_by_email WHERE email = ? IF user_id = ? AND claimed_at = ?",
            )
            .await?,
            list_user: idempotent(
                session,
                "INSERT INTO users_by_creation (shard, created_at, id) VALUES (0, ?, ?)",
            )
            .await?,
            listed_users: idempotent(
                session,
                "SELECT id FROM users_by_creation WHERE shard = 0 LIMIT ?",
            )
            .await?,
            count_users: idempotent(
                session,
                "SELECT COUNT(*) FROM users_by_creation WHERE shard = 0",
            )
            .await?,

            session: idempotent(session, &session_row).await?,
            session_serial: prepare_serial_read(session, &session_row).await?,
            insert_session: conditional(
                session,
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
                     IF NOT EXISTS USING TTL ?"
                ),
            )
            .await?,
            slide_session: conditional(
                session,
                "UPDATE sessions USING TTL ? SET id = ?, user_id = ?, created_at = ?,
                 expires_at = ?, last_seen_at = ? WHERE token_hash = ? IF expires_at = ?",
            )
            .await?,
            delete_session: conditional(
                session,
                "DELETE FROM sessions WHERE token_hash = ? IF EXISTS",
            )
            .await?,
            delete_session_of: conditional(
                session,
                "DELETE FROM sessions WHERE token_hash = ? IF user_id = ?",
            )
            .await?,
            delete_expired_session: conditional(
                session,
                "DELETE FROM sessions WHERE token_hash = ? IF expires_at < ?",
            )
            .await?,
            sessions_of_user: idempotent(
                session,
                "SELECT token_hash FROM sessions_by_user WHERE user_id = ?",
            )
            .await?,
            sessions_expiring: idempotent(
                session,
                "SELECT expires_at, token_hash, user_id FROM sessions_by_expiry
                 WHERE day = ? AND expires_at < ?",
            )
            .await?,
            index_session: logged_batch(&[&insert_session_of_user, &insert_session_expiry]),
            reindex_moved_session: logged_batch(&[&insert_session_of_user, &delete_session_expiry]),
            unindex_session: logged_batch(&[&delete_session_of_user, &delete_session_expiry]),
            insert_session_of_user,
            delete_session_of_user,
            insert_session_expiry,
            delete_session_expiry,

            passkey: idempotent(session, &passkey).await?,
            passkey_serial: prepare_serial_read(session, &passkey).await?,
            insert_passkey: conditional(
                session,
                &format!(
                    "INSERT INTO passkeys ({PASSKEY_COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
            )
            .await?,
            use_counted_passkey: conditional(
                session,
                "UPDATE passkeys SET sign_count = ?, credential = ?, last_used_at = ?
                 WHERE credential_id = ? IF sign_count < ?",
            )
            .await?,
            use_counterless_passkey: conditional(
                session,
                "UPDATE passkeys SET credential = ?, last_used_at = ? WHERE credential_id = ?
                 IF sign_count = 0",
            )
            .await?,
            delete_passkey: conditional(
                session,
                "DELETE FROM passkeys WHERE credential_id = ? IF user_id = ?",
            )
            .await?,
            insert_passkey_of_user: idempotent(
                session,
                "INSERT INTO passkeys_by_user (user_id, created_at, credential_id)
                 VALUES (?, ?, ?)",
            )
            .await?,
            delete_passkey_of_user: idempotent(
                session,
                "DELETE FROM passkeys_by_user
                 WHERE user_id = ? AND created_at = ? AND credential_id = ?",
            )
            .await?,
            passkeys_of_user: idempotent(
                session,
                "SELECT created_at, credential_id FROM passkeys_by_user WHERE user_id = ?",
            )
            .await?,

            ceremony_serial: prepare_serial_read(
                session,
                &format!("SELECT {CEREMONY_COLUMNS} FROM webauthn_ceremonies WHERE id = ?"),
            )
            .await?,
            insert_ceremony: conditional(
                session,
                &format!(
                    "INSERT INTO webauthn_ceremonies ({CEREMONY_COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
                ),
            )
            .await?,
            delete_ceremony: conditional(
                session,
                "DELETE FROM webauthn_ceremonies WHERE id = ? IF EXISTS",
            )
            .await?,
            take_ceremony: conditional(
                session,
                "DELETE FROM webauthn_ceremonies WHERE id = ?
                 IF kind = ? AND user_id = ? AND binding = ? AND state = ? AND expires_at = ?",
            )
            .await?,
        })
    }
}

/// Reads, plain upserts and deletes: the driver may retry them and send them speculatively.
async fn idempotent(session: &CqlSession, cql: &str) -> StoreResult<PreparedStatement> {
    prepare(session, cql, true).await
}

/// Lightweight transactions: never sent twice.
async fn conditional(session: &CqlSession, cql: &str) -> StoreResult<PreparedStatement> {
    prepare(session, cql, false).await
}

// ---- users ----

impl ScyllaStore {
    async fn read_user_row(
        &self,
        statement: &PreparedStatement,
        id: UserId,
    ) -> StoreResult<Option<UserRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (id,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "user row")
    }

    async fn read_claim(
        &self,
        statement: &PreparedStatement,
        email: &str,
    ) -> StoreResult<Option<ClaimRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (email,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "email claim")
    }

    /// Makes `email` belong to `user_id` and returns the claim's time; [`StoreError::Conflict`]
    /// while another account holds it. A claim of `user_id` already (a retry, or a change back)
    /// is refreshed, so that a release decided from its older state does not remove it.
    async fn claim_email(&self, email: &str, user_id: UserId) -> StoreResult<i64> {
        let statements = &self.identity;
        for _ in 0..CAS_ATTEMPTS {
            let now = Timestamp::now();
            let result = self
                .session
                .execute_unpaged(&statements.insert_claim, (email, user_id, now.0))
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                return Ok(now.0);
            }
            let Some(claim) = self.read_claim(&statements.claim_serial, email).await? else {
                continue; // released meanwhile
            };
            if claim.user_id != user_id {
                let holder = self
                    .read_user_row(&statements.user_serial, claim.user_id)
                    .await?;
                let holder_email = holder.as_ref().map(|user| user.email.as_str());
                if !claim_is_orphan(&claim, holder_email, email, now) {
                    return Err(StoreError::Conflict(format!(
                        "email {email} belongs to another account"
                    )));
                }
            }
            let result = self
                .session
                .execute_unpaged(
                    &statements.reclaim,
                    (user_id, now.0, email, claim.user_id, claim.claimed_at),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                return Ok(now.0);
            }
        }
        Err(contended(format!("email {email}"), CAS_ATTEMPTS))
    }

    /// Releases `user_id`'s claim on `email` made at `claimed_at`. Best effort: a claim left
    /// behind is an orphan once its user row no longer carries the email, and is taken over
    /// after [`CLAIM_GRACE_MS`].
    async fn release_claim(&self, email: &str, user_id: UserId, claimed_at: i64) {
        let released = self
            .session
            .execute_unpaged(&self.identity.release_claim, (email, user_id, claimed_at))
            .await;
        if let Err(err) = released {
            tracing::warn!(%user_id, %err, "ScyllaDB: an email claim was left behind");
        }
    }

    async fn list_user(&self, created_at: i64, id: UserId) -> StoreResult<()> {
        self.session
            .execute_unpaged(&self.identity.list_user, (created_at, id.to_string()))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

// ---- sessions ----

impl ScyllaStore {
    /// Writes both index entries of `session` (by user, by expiry day) with `ttl`.
    async fn index_session(&self, session: &Session, ttl: i32) -> StoreResult<()> {
        self.session
            .batch(
                &self.identity.index_session,
                (
                    (session.user_id, &session.token_hash, ttl),
                    (
                        expiry_day(session.expires_at),
                        session.expires_at.0,
                        &session.token_hash,
                        session.user_id,
                        ttl,
                    ),
                ),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read_session_row(
        &self,
        statement: &PreparedStatement,
        token_hash: &str,
    ) -> StoreResult<Option<SessionRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (token_hash,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "session row")
    }

    /// Deletes `entry`'s session if it expired before `now`; whether it did. The entry goes
    /// either way: a session that is gone, or was slid, has nothing to do with it any more.
    async fn sweep_session(
        &self,
        day: i64,
        entry: ExpiringSessionRow,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let statements = &self.identity;
        let result = self
            .session
            .execute_unpaged(
                &statements.delete_expired_session,
                (&entry.token_hash, now.0),
            )
            .await
            .map_err(unavailable)?;
        let deleted = applied(result)?;
        let expiry_key = (day, entry.expires_at, &entry.token_hash);
        match deleted {
            true => self
                .session
                .batch(
                    &statements.unindex_session,
                    ((entry.user_id, &entry.token_hash), expiry_key),
                )
                .await
                .map_err(unavailable)?,
            false => self
                .session
                .execute_unpaged(&statements.delete_session_expiry, expiry_key)
                .await
                .map_err(unavailable)?,
        };
        Ok(deleted)
    }
}

// ---- passkeys ----

impl ScyllaStore {
    async fn read_passkey_row(
        &self,
        statement: &PreparedStatement,
        credential_id: &str,
    ) -> StoreResult<Option<PasskeyRow>> {
        let result = self
            .session
            .execute_unpaged(statement, (credential_id,))
            .await
            .map_err(unavailable)?;
        maybe_row(result, "passkey row")
    }
}

#[async_trait]
impl IdentityStore for ScyllaStore {
    async fn create_user(&self, user: &User) -> StoreResult<()> {
        let statements = &self.identity;
        let claimed_at = self.claim_email(&user.email, user.id).await?;
        let inserted = self
            .session
            .execute_unpaged(
                &statements.insert_user,
                (
                    user.id,
                    &user.email,
                    &user.name,
                    &user.password_hash,
                    user.role.as_str(),
                    user.active,
                    user.created_at.0,
                    user.updated_at.0,
                ),
            )
            .await
            .map_err(unavailable)
            .and_then(applied);
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(err) => {
                // The insert may have been applied or not: a serial read settles it (and no
                // older proposal can be applied after it). Without a user row, the claim goes.
                if let Ok(None) = self.read_user_row(&statements.user_serial, user.id).await {
                    self.release_claim(&user.email, user.id, claimed_at).await;
                }
                return Err(err);
            }
        };
        if !inserted {
            let existing = self.read_user_row(&statements.user_serial, user.id).await?;
            if existing.as_ref().map(|row| row.email.as_str()) != Some(user.email.as_str()) {
                self.release_claim(&user.email, user.id, claimed_at).await;
            }
            if let Some(existing) = existing {
                // A create retried after a failure between the row and its listing entry.
                self.list_user(existing.created_at, existing.id).await?;
            }
            return Err(StoreError::Conflict(format!(
                "a user with id {} exists",
                user.id
            )));
        }
        self.list_user(user.created_at.0, user.id).await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.read_user_row(&self.identity.user, id)
            .await?
            .map(UserRow::into_user)
            .transpose()
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let Some(claim) = self.read_claim(&self.identity.claim, email).await? else {
            return Ok(None);
        };
        // A claim in flight, or an orphan, is not the user's email (yet, or any more).
        let user = self.user(claim.user_id).await?;
        Ok(user.filter(|user| user.email == email))
    }

    async fn update_user(&self, user: &User) -> StoreResult<()> {
        let statements = &self.identity;
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self.read_user_row(&statements.user_serial, user.id).await? else {
                return Err(StoreError::NotFound { entity: "user" });
            };
            // The old email's claim as of this decision, to release it once the row moved.
            let old_claim = match current.email != user.email {
                true => {
                    let old = self
                        .read_claim(&statements.claim_serial, &current.email)
                        .await?;
                    self.claim_email(&user.email, user.id).await?;
                    old.filter(|claim| claim.user_id == user.id)
                }
                false => None,
            };
            let result = self
                .session
                .execute_unpaged(
                    &statements.update_user,
                    (
                        &user.email,
                        &user.name,
                        &user.password_hash,
                        user.role.as_str(),
                        user.active,
                        user.updated_at.0,
                        user.id,
                        &current.email,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                if let Some(old) = old_claim {
                    self.release_claim(&current.email, user.id, old.claimed_at)
                        .await;
                }
                return Ok(());
            }
            // The email changed meanwhile: decide again from the new row.
        }
        Err(contended(format!("user {}", user.id), CAS_ATTEMPTS))
    }

    async fn list_users(&self, page: Page) -> StoreResult<(Vec<User>, u64)> {
        let statements = &self.identity;
        let counted = self
            .session
            .execute_unpaged(&statements.count_users, ())
            .await
            .map_err(unavailable)?;
        let total = maybe_row::<(i64,)>(counted, "user count")?.map_or(0, |(n,)| n.max(0) as u64);
        let end = page
            .offset
            .saturating_add(u64::from(page.limit))
            .min(MAX_LISTED_USERS);
        if page.offset >= end {
            return Ok((Vec::new(), total));
        }
        let listed: Vec<ListedUserRow> = read_paged(
            &self.session,
            &statements.listed_users,
            (end as i32,),
            end as usize,
            "users_by_creation",
        )
        .await?;
        let ids = listed
            .into_iter()
            .skip(page.offset as usize)
            .map(|row| Uuid::parse_str(&row.id).map_err(|err| corrupt("users_by_creation id", err)))
            .collect::<StoreResult<Vec<UserId>>>()?;
        let users: Vec<Option<User>> = futures::stream::iter(ids.clone())
            .map(|id| self.user(id))
            .buffered(CONCURRENT_READS)
            .try_collect()
            .await?;
        // An entry is written after its user row, and users are never deleted.
        let users = users
            .into_iter()
            .zip(&ids)
            .map(|(user, id)| {
                user.ok_or_else(|| corrupt("users_by_creation", format!("no user row for {id}")))
            })
            .collect::<StoreResult<Vec<User>>>()?;
        Ok((users, total))
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        let statements = &self.identity;
        let ttl = backstop_ttl(session.expires_at, Timestamp::now(), SESSION_TTL_SLACK_SECS);
        // The index entries first: a session is never out of reach of a revocation.
        self.index_session(session, ttl).await?;
        let result = self
            .session
            .execute_unpaged(
                &statements.insert_session,
                (
                    &session.token_hash,
                    session.id,
                    session.user_id,
                    session.created_at.0,
                    session.expires_at.0,
                    session.last_seen_at.0,
                    ttl,
                ),
            )
            .await
            .map_err(unavailable)?;
        if applied(result)? {
            return Ok(());
        }
        // The entries just written may have replaced the existing session's (another TTL,
        // another user): write its own back.
        if let Some(existing) = self
            .read_session_row(&statements.session_serial, &session.token_hash)
            .await?
        {
            let existing = existing.into_session();
            let ttl = backstop_ttl(
                existing.expires_at,
                Timestamp::now(),
                SESSION_TTL_SLACK_SECS,
            );
            self.index_session(&existing, ttl).await?;
        }
        Err(StoreError::Conflict("this session exists already".into()))
    }

    async fn session(&self, token_hash: &str) -> StoreResult<Option<Session>> {
        Ok(self
            .read_session_row(&self.identity.session, token_hash)
            .await?
            .map(SessionRow::into_session))
    }

    async fn touch_session(
        &self,
        token_hash: &str,
        expires_at: Timestamp,
        last_seen_at: Timestamp,
    ) -> StoreResult<bool> {
        let statements = &self.identity;
        for _ in 0..CAS_ATTEMPTS {
            let Some(current) = self
                .read_session_row(&statements.session_serial, token_hash)
                .await?
            else {
                return Ok(false);
            };
            // Never shorter than the TTL the row was written with: its cells must not die
            // before the row marker of its first insert.
            let ttl = backstop_ttl(
                expires_at.max(Timestamp(current.expires_at)),
                Timestamp::now(),
                SESSION_TTL_SLACK_SECS,
            );
            // The expiry entry (new, or the same one with the new TTL) before the slide, so
            // that the sweep always finds the session.
            self.session
                .execute_unpaged(
                    &statements.insert_session_expiry,
                    (
                        expiry_day(expires_at),
                        expires_at.0,
                        token_hash,
                        current.user_id,
                        ttl,
                    ),
                )
                .await
                .map_err(unavailable)?;
            let result = self
                .session
                .execute_unpaged(
                    &statements.slide_session,
                    (
                        ttl,
                        current.id,
                        current.user_id,
                        current.created_at,
                        expires_at.0,
                        last_seen_at.0,
                        token_hash,
                        current.expires_at,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if !applied(result)? {
                continue; // revoked or slid by another request meanwhile: decide again
            }
            let user_entry = (current.user_id, token_hash, ttl);
            match expires_at.0 == current.expires_at {
                true => self
                    .session
                    .execute_unpaged(&statements.insert_session_of_user, user_entry)
                    .await
                    .map_err(unavailable)?,
                false => {
                    let old_expiry = (
                        expiry_day(Timestamp(current.expires_at)),
                        current.expires_at,
                        token_hash,
                    );
                    self.session
                        .batch(&statements.reindex_moved_session, (user_entry, old_expiry))
                        .await
                        .map_err(unavailable)?
                }
            };
            return Ok(true);
        }
        Err(contended(format!("session {token_hash}"), CAS_ATTEMPTS))
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let statements = &self.identity;
        let Some(current) = self
            .read_session_row(&statements.session_serial, token_hash)
            .await?
        else {
            return Ok(());
        };
        self.session
            .execute_unpaged(&statements.delete_session, (token_hash,))
            .await
            .map_err(unavailable)?;
        self.session
            .batch(
                &statements.unindex_session,
                (
                    (current.user_id, token_hash),
                    (
                        expiry_day(Timestamp(current.expires_at)),
                        current.expires_at,
                        token_hash,
                    ),
                ),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_user_sessions(&self, user_id: UserId) -> StoreResult<Vec<String>> {
        let statements = &self.identity;
        let entries: Vec<SessionOfUserRow> = read_paged(
            &self.session,
            &statements.sessions_of_user,
            (user_id,),
            MAX_SESSIONS_PER_USER,
            "sessions_by_user",
        )
        .await?;
        let revoke = |entry: SessionOfUserRow| async move {
            // `IF user_id = ?`: an entry never revokes another user's session.
            let result = self
                .session
                .execute_unpaged(&statements.delete_session_of, (&entry.token_hash, user_id))
                .await
                .map_err(unavailable)?;
            let deleted = applied(result)?;
            // The session's expiry entry is left to the sweep, which drops it uncounted.
            self.session
                .execute_unpaged(
                    &statements.delete_session_of_user,
                    (user_id, &entry.token_hash),
                )
                .await
                .map_err(unavailable)?;
            Ok::<_, StoreError>(deleted.then_some(entry.token_hash))
        };
        let deleted: Vec<Option<String>> = futures::stream::iter(entries)
            .map(revoke)
            .buffer_unordered(CONCURRENT_WRITES)
            .try_collect()
            .await?;
        Ok(deleted.into_iter().flatten().collect())
    }

    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64> {
        let statements = &self.identity;
        let mut deleted = 0;
        for day in sweep_days(now) {
            let entries: Vec<ExpiringSessionRow> = read_paged(
                &self.session,
                &statements.sessions_expiring,
                (day, now.0),
                MAX_SESSIONS_EXPIRING_PER_DAY,
                "sessions_by_expiry",
            )
            .await?;
            deleted += futures::stream::iter(entries)
                .map(|entry| self.sweep_session(day, entry, now))
                .buffer_unordered(CONCURRENT_WRITES)
                .try_fold(0u64, |count, deleted| async move {
                    Ok(count + u64::from(deleted))
                })
                .await?;
        }
        Ok(deleted)
    }

    async fn create_passkey(&self, passkey: &Passkey) -> StoreResult<()> {
        let statements = &self.identity;
        let entry = (
            passkey.user_id,
            passkey.created_at.0,
            &passkey.credential_id,
        );
        // The user's entry first: a registered passkey is always listed, so it can be removed.
        self.session
            .execute_unpaged(&statements.insert_passkey_of_user, entry)
            .await
            .map_err(unavailable)?;
        let result = self
            .session
            .execute_unpaged(
                &statements.insert_passkey,
                (
                    &passkey.credential_id,
                    passkey.user_id,
                    &passkey.user_handle,
                    &passkey.name,
                    &passkey.public_key,
                    i64::from(passkey.sign_count),
                    &passkey.transports,
                    &passkey.credential,
                    passkey.created_at.0,
                    passkey.last_used_at.map(|at| at.0),
                ),
            )
            .await
            .map_err(unavailable)?;
        if applied(result)? {
            return Ok(());
        }
        let existing = self
            .read_passkey_row(&statements.passkey_serial, &passkey.credential_id)
            .await?;
        let entry_is_existing = existing.is_some_and(|existing| {
            existing.user_id == passkey.user_id && existing.created_at == passkey.created_at.0
        });
        if !entry_is_existing {
            self.session
                .execute_unpaged(&statements.delete_passkey_of_user, entry)
                .await
                .map_err(unavailable)?;
        }
        Err(StoreError::Conflict(
            "this passkey is registered already".into(),
        ))
    }

    async fn passkey(&self, credential_id: &str) -> StoreResult<Option<Passkey>> {
        self.read_passkey_row(&self.identity.passkey, credential_id)
            .await?
            .map(PasskeyRow::into_passkey)
            .transpose()
    }

    async fn passkeys_of(&self, user_id: UserId) -> StoreResult<Vec<Passkey>> {
        let statements = &self.identity;
        let entries: Vec<PasskeyOfUserRow> = read_paged(
            &self.session,
            &statements.passkeys_of_user,
            (user_id,),
            MAX_PASSKEYS_PER_USER,
            "passkeys_by_user",
        )
        .await?;
        let credential_ids: Vec<String> = entries
            .iter()
            .map(|entry| entry.credential_id.clone())
            .collect();
        let passkeys: Vec<Option<PasskeyRow>> = futures::stream::iter(credential_ids)
            .map(|credential_id| async move {
                self.read_passkey_row(&statements.passkey, &credential_id)
                    .await
            })
            .buffered(CONCURRENT_READS)
            .try_collect()
            .await?;
        // An entry whose passkey is gone or is another registration (a refused or interrupted
        // one) is not the user's.
        passkeys
            .into_iter()
            .zip(&entries)
            .filter_map(|(row, entry)| {
                row.filter(|row| row.user_id == user_id && row.created_at == entry.created_at)
            })
            .map(PasskeyRow::into_passkey)
            .collect()
    }

    async fn record_passkey_use(
        &self,
        credential_id: &str,
        sign_count: u32,
        credential: &str,
        at: Timestamp,
    ) -> StoreResult<()> {
        let statements = &self.identity;
        // SQLite's `sign_count < new OR (sign_count = 0 AND new = 0)`, one condition each.
        let result = match sign_count {
            0 => {
                self.session
                    .execute_unpaged(
                        &statements.use_counterless_passkey,
                        (credential, at.0, credential_id),
                    )
                    .await
            }
            _ => {
                let sign_count = i64::from(sign_count);
                self.session
                    .execute_unpaged(
                        &statements.use_counted_passkey,
                        (sign_count, credential, at.0, credential_id, sign_count),
                    )
                    .await
            }
        }
        .map_err(unavailable)?;
        if applied(result)? {
            return Ok(());
        }
        match self
            .read_passkey_row(&statements.passkey_serial, credential_id)
            .await?
        {
            None => Err(StoreError::NotFound { entity: "passkey" }),
            Some(stored) => Err(StoreError::Conflict(format!(
                "signature counter {sign_count} does not go above {}",
                stored.sign_count
            ))),
        }
    }

    async fn delete_passkey(&self, user_id: UserId, credential_id: &str) -> StoreResult<bool> {
        let statements = &self.identity;
        let Some(current) = self
            .read_passkey_row(&statements.passkey_serial, credential_id)
            .await?
        else {
            return Ok(false);
        };
        if current.user_id != user_id {
            return Ok(false);
        }
        let result = self
            .session
            .execute_unpaged(&statements.delete_passkey, (credential_id, user_id))
            .await
            .map_err(unavailable)?;
        if !applied(result)? {
            return Ok(false); // deleted meanwhile
        }
        self.session
            .execute_unpaged(
                &statements.delete_passkey_of_user,
                (user_id, current.created_at, credential_id),
            )
            .await
            .map_err(unavailable)?;
        Ok(true)
    }

    async fn put_ceremony(&self, ceremony: &Ceremony, _now: Timestamp) -> StoreResult<()> {
        // Expired ceremonies are forgotten by their TTL, not by a sweep here.
        let statements = &self.identity;
        let ttl = backstop_ttl(
            ceremony.expires_at,
            Timestamp::now(),
            CEREMONY_TTL_SLACK_SECS,
        );
        for _ in 0..CAS_ATTEMPTS {
            let result = self
                .session
                .execute_unpaged(
                    &statements.insert_ceremony,
                    (
                        &ceremony.id,
                        ceremony.kind.as_str(),
                        ceremony.user_id,
                        &ceremony.binding,
                        &ceremony.state,
                        ceremony.expires_at.0,
                        ttl,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                return Ok(());
            }
            // Replacing: the old one goes, then this one is inserted whole (one TTL per row).
            self.session
                .execute_unpaged(&statements.delete_ceremony, (&ceremony.id,))
                .await
                .map_err(unavailable)?;
        }
        Err(contended(format!("ceremony {}", ceremony.id), CAS_ATTEMPTS))
    }

    async fn take_ceremony(&self, id: &str, now: Timestamp) -> StoreResult<Option<Ceremony>> {
        let statements = &self.identity;
        for _ in 0..CAS_ATTEMPTS {
            let result = self
                .session
                .execute_unpaged(&statements.ceremony_serial, (id,))
                .await
                .map_err(unavailable)?;
            let Some(row) = maybe_row::<CeremonyRow>(result, "ceremony row")? else {
                return Ok(None);
            };
            let result = self
                .session
                .execute_unpaged(
                    &statements.take_ceremony,
                    (
                        id,
                        &row.kind,
                        row.user_id,
                        &row.binding,
                        &row.state,
                        row.expires_at,
                    ),
                )
                .await
                .map_err(unavailable)?;
            if applied(result)? {
                let ceremony = row.into_ceremony()?;
                return Ok((ceremony.expires_at > now).then_some(ceremony));
            }
            // Taken or replaced meanwhile: decide again from what is there now.
        }
        Err(contended(format!("ceremony {id}"), CAS_ATTEMPTS))
    }
}

#[cfg(test)]
mod tests {
    use scylla::frame::response::result::{
        CollectionType, ColumnType,
        NativeType::{BigInt, Boolean, Text, Uuid as UuidType},
    };

    use super::super::tests::roundtrip;
    use super::*;

    const TEXT: ColumnType<'static> = ColumnType::Native(Text);
    const BIGINT: ColumnType<'static> = ColumnType::Native(BigInt);
    const UUID: ColumnType<'static> = ColumnType::Native(UuidType);

    #[test]
    fn user_rows_roundtrip_and_convert() {
        let row = UserRow {
            id: Uuid::new_v4(),
            email: "a@example.com".into(),
            name: "A".into(),
            password_hash: "$argon2id$...".into(),
            role: "admin".into(),
            active: true,
            created_at: 1_000,
            updated_at: 2_000,
        };
        let columns = [
            ("id", UUID),
            ("email", TEXT),
            ("name", TEXT),
            ("password_hash", TEXT),
            ("role", TEXT),
            ("active", ColumnType::Native(Boolean)),
            ("created_at", BIGINT),
            ("updated_at", BIGINT),
        ];
        assert_eq!(roundtrip(&row, &columns), row);
        let user = row.clone().into_user().unwrap();
        assert_eq!(
            (user.role, user.created_at),
            (Role::Admin, Timestamp(1_000))
        );
        let unknown = UserRow {
            role: "root".into(),
            ..row
        };
        assert!(matches!(unknown.into_user(), Err(StoreError::Internal(_))));

        let claim = ClaimRow {
            user_id: Uuid::new_v4(),
            claimed_at: 5,
        };
        assert_eq!(
            roundtrip(&claim, &[("user_id", UUID), ("claimed_at", BIGINT)]),
            claim
        );
        let listed = ListedUserRow {
            id: Uuid::new_v4().to_string(),
        };
        assert_eq!(roundtrip(&listed, &[("id", TEXT)]), listed);
    }

    #[test]
    fn session_rows_roundtrip() {
        let row = SessionRow {
            token_hash: "ab".repeat(32),
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            created_at: 1,
            expires_at: 2,
            last_seen_at: 3,
        };
        let columns = [
            ("token_hash", TEXT),
            ("id", UUID),
            ("user_id", UUID),
            ("created_at", BIGINT),
            ("expires_at", BIGINT),
            ("last_seen_at", BIGINT),
        ];
        assert_eq!(roundtrip(&row, &columns), row);
        assert_eq!(row.clone().into_session().token_hash, row.token_hash);

        let of_user = SessionOfUserRow {
            token_hash: "h".into(),
        };
        assert_eq!(roundtrip(&of_user, &[("token_hash", TEXT)]), of_user);
        let expiring = ExpiringSessionRow {
            expires_at: 9,
            token_hash: "h".into(),
            user_id: Uuid::new_v4(),
        };
        let columns = [
            ("expires_at", BIGINT),
            ("token_hash", TEXT),
            ("user_id", UUID),
        ];
        assert_eq!(roundtrip(&expiring, &columns), expiring);
    }

    #[test]
    fn passkey_rows_roundtrip_and_convert() {
        let columns = [
            ("credential_id", TEXT),
            ("user_id", UUID),
            ("user_handle", TEXT),
            ("name", TEXT),
            ("public_key", TEXT),
            ("sign_count", BIGINT),
            (
                "transports",
                ColumnType::Collection {
                    frozen: false,
                    typ: CollectionType::List(Box::new(TEXT)),
                },
            ),
            ("credential", TEXT),
            ("created_at", BIGINT),
            ("last_used_at", BIGINT),
        ];
        let row = PasskeyRow {
            credential_id: "cred".into(),
            user_id: Uuid::new_v4(),
            user_handle: "aGFuZGxl".into(),
            name: "laptop".into(),
            public_key: "{}".into(),
            sign_count: i64::from(u32::MAX),
            transports: vec!["usb".into(), "internal".into()],
            credential: "{}".into(),
            created_at: 10,
            last_used_at: Some(20),
        };
        assert_eq!(roundtrip(&row, &columns), row);
        assert_eq!(
            roundtrip(&row, &columns).into_passkey().unwrap().sign_count,
            u32::MAX
        );
        let unused = PasskeyRow {
            transports: Vec::new(),
            last_used_at: None,
            ..row
        };
        assert_eq!(roundtrip(&unused, &columns), unused);
        let negative = PasskeyRow {
            sign_count: -1,
            ..unused
        };
        assert!(matches!(
            negative.into_passkey(),
            Err(StoreError::Internal(_))
        ));

        let entry = PasskeyOfUserRow {
            created_at: 10,
            credential_id: "cred".into(),
        };
        assert_eq!(
            roundtrip(&entry, &[("created_at", BIGINT), ("credential_id", TEXT)]),
            entry
        );
    }

    #[test]
    fn ceremony_rows_roundtrip_and_convert() {
        let row = CeremonyRow {
            id: "c".into(),
            kind: "registration".into(),
            user_id: Uuid::nil(),
            binding: "session-hash".into(),
            state: "{}".into(),
            expires_at: 1_000,
        };
        let columns = [
            ("id", TEXT),
            ("kind", TEXT),
            ("user_id", UUID),
            ("binding", TEXT),
            ("state", TEXT),
            ("expires_at", BIGINT),
        ];
        assert_eq!(roundtrip(&row, &columns), row);
        assert_eq!(
            row.clone().into_ceremony().unwrap().kind,
            CeremonyKind::Registration
        );
        let unknown = CeremonyRow {
            kind: "login".into(),
            ..row
        };
        assert!(matches!(
            unknown.into_ceremony(),
            Err(StoreError::Internal(_))
        ));
    }

    #[test]
    fn backstop_ttls_outlive_the_expiry_and_stay_in_range() {
        let wall = Timestamp(1_700_000_000_000);
        // A day (or an hour) past the expiry, rounded up to the second.
        assert_eq!(backstop_ttl(wall.plus_ms(1), wall, 86_400), 86_401);
        assert_eq!(backstop_ttl(wall.plus_ms(60_000), wall, 3_600), 3_660);
        // Expired already (or a test's clock in 1970): the slack alone, never 0 or less.
        assert_eq!(backstop_ttl(Timestamp(5_000), wall, 86_400), 86_400);
        assert_eq!(backstop_ttl(Timestamp(i64::MIN), wall, 0), 1);
        // Far future: CQL's maximum.
        assert_eq!(
            backstop_ttl(Timestamp(i64::MAX), wall, 86_400),
            MAX_TTL_SECS as i32
        );
    }

    #[test]
    fn expiry_days_are_utc_days_and_the_sweep_reads_back_from_today() {
        assert_eq!(expiry_day(Timestamp(0)), 0);
        assert_eq!(expiry_day(Timestamp(MS_PER_DAY - 1)), 0);
        assert_eq!(expiry_day(Timestamp(MS_PER_DAY)), 1);
        assert_eq!(expiry_day(Timestamp(-1)), -1);
        assert_eq!(sweep_days(Timestamp(5_000)), -2..=0);
        assert_eq!(sweep_days(Timestamp(10 * MS_PER_DAY)), 8..=10);
        assert_eq!(sweep_days(Timestamp(i64::MIN)).count(), 3);
    }

    #[test]
    fn a_claim_is_an_orphan_only_when_old_and_not_its_holders_email() {
        let wall = Timestamp(1_700_000_000_000);
        let old = ClaimRow {
            user_id: Uuid::new_v4(),
            claimed_at: wall.0 - CLAIM_GRACE_MS,
        };
        let young = ClaimRow {
            claimed_at: wall.0 - 1,
            ..old
        };
        let email = "a@example.com";
        assert!(claim_is_orphan(&old, None, email, wall));
        assert!(claim_is_orphan(&old, Some("b@example.com"), email, wall));
        assert!(!claim_is_orphan(&old, Some(email), email, wall));
        assert!(!claim_is_orphan(&young, None, email, wall));
        assert!(!claim_is_orphan(&young, Some(email), email, wall));
    }

    #[test]
    fn the_migration_names_every_table_it_writes() {
        for table in [
            "users (",
            "users_by_email (",
            "users_by_creation (",
            "sessions (",
            "sessions_by_user (",
            "sessions_by_expiry (",
            "passkeys (",
            "passkeys_by_user (",
            "webauthn_ceremonies (",
        ] {
            assert!(
                MIGRATION
                    .statements
                    .iter()
                    .any(|s| s.contains(&format!("IF NOT EXISTS {table}"))),
                "{table}"
            );
        }
    }
}
