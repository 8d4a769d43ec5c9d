//! Leases as lightweight transactions (Paxos): every change is a compare-and-set on the state
//! it was decided from, so two nodes can never both believe they hold a key, partitions or
//! not, and a fenced-off holder's writes find the epoch moved on.
//!
//! The row is never deleted: a release expires it, so epochs never restart.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::schema::Migration;
use super::{applied, contended, maybe_row, prepare_serial_read, unavailable, ScyllaStore};
use crate::{Lease, LeaseStore, StoreError, StoreResult, Timestamp};

pub(super) const MIGRATION: Migration = Migration {
    version: 1,
    description: "leases",
    statements: &[
        // One partition per leased key; every change is a compare-and-set on (owner, epoch).
        "CREATE TABLE IF NOT EXISTS leases (
            key text PRIMARY KEY,
            owner text,
            epoch bigint,
            expires_at bigint
        )",
    ],
};

/// A compare-and-set that lost a race is decided again from the new state, at most this often.
const CAS_ATTEMPTS: usize = 5;

/// What `read` selects.
#[derive(Debug, PartialEq, scylla::DeserializeRow)]
#[cfg_attr(test, derive(scylla::SerializeRow))]
pub(super) struct LeaseRow {
    pub owner: String,
    pub epoch: i64,
    pub expires_at: i64,
}

pub(super) struct Statements {
    /// Read at SERIAL consistency: sees the outcome of any transaction in progress.
    read: PreparedStatement,
    create: PreparedStatement,
    /// The same holder and epoch, further expiry (acquire again, renew).
    extend: PreparedStatement,
    /// A new holder and epoch, if the row is still as it was read.
    replace: PreparedStatement,
    release: PreparedStatement,
    /// A new holder and the next epoch, if the tenure (owner, epoch) is still the observed one.
    take_over: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session) -> StoreResult<Statements> {
        let prepare =
            |cql: &'static str| async move { session.prepare(cql).await.map_err(unavailable) };
        let read = prepare_serial_read(
            session,
            "SELECT owner, epoch, expires_at FROM leases WHERE key = ?",
        )
        .await?;
        Ok(Statements {
            read,
            create: prepare(
                "INSERT INTO leases (key, owner, epoch, expires_at) VALUES (?, ?, 1, ?)
                 IF NOT EXISTS",
            )
            .await?,
            extend: prepare(
                "UPDATE leases SET expires_at = ? WHERE key = ? IF owner = ? AND epoch = ?",
            )
            .await?,
            replace: prepare(
                "UPDATE leases SET owner = ?, epoch = ?, expires_at = ? WHERE key = ?
                 IF owner = ? AND epoch = ? AND expires_at = ?",
            )
            .await?,
            release: prepare(
                "UPDATE leases SET expires_at = 0 WHERE key = ? IF owner = ? AND epoch = ?",
            )
            .await?,
            take_over: prepare(
                "UPDATE leases SET owner = ?, epoch = ?, expires_at = ? WHERE key = ?
                 IF owner = ? AND epoch = ?",
            )
            .await?,
        })
    }
}

impl ScyllaStore {
    pub(super) async fn read_lease(&self, key: &str) -> StoreResult<Option<Lease>> {
        let result = self
            .session
            .execute_unpaged(&self.leases.read, (key,))
            .await
            .map_err(unavailable)?;
        let row: Option<LeaseRow> = maybe_row(result, "lease row")?;
        Ok(row.map(|row| Lease {
            key: key.to_owned(),
            owner: row.owner,
            epoch: row.epoch as u64,
            expires_at: Timestamp(row.expires_at),
        }))
    }

    /// Sets a new holder and epoch if the row is still `current`.
    async fn replace(&self, current: &Lease, next: &Lease) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(
                &self.leases.replace,
                (
                    &next.owner,
                    next.epoch as i64,
                    next.expires_at.0,
                    &current.key,
                    &current.owner,
                    current.epoch as i64,
                    current.expires_at.0,
                ),
            )
            .await
            .map_err(unavailable)?;
        applied(result)
    }

    /// Moves the expiry of a lease still held by the same owner and epoch.
    async fn extend(&self, lease: &Lease, expires_at: Timestamp) -> StoreResult<bool> {
        let result = self
            .session
            .execute_unpaged(
                &self.leases.extend,
                (expires_at.0, &lease.key, &lease.owner, lease.epoch as i64),
            )
            .await
            .map_err(unavailable)?;
        applied(result)
    }
}

fn stale(lease: &Lease) -> StoreError {
    StoreError::StaleLease {
        key: lease.key.clone(),
        epoch: lease.epoch,
    }
}

#[async_trait]
impl LeaseStore for ScyllaStore {
    async fn acquire_lease(
        &self,
        key: &str,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease> {
        let expires_at = now.plus_ms(ttl_ms);
        for _ in 0..CAS_ATTEMPTS {
            let mine = |epoch| Lease {
                key: key.to_owned(),
                owner: owner.to_owned(),
                epoch,
                expires_at,
            };
            let won = match self.read_lease(key).await? {
                None => {
                    let result = self
                        .session
                        .execute_unpaged(&self.leases.create, (key, owner, expires_at.0))
                        .await
                        .map_err(unavailable)?;
                    applied(result)?.then(|| mine(1))
                }
                Some(current) if current.owner == owner && current.expires_at > now => self
                    .extend(&current, expires_at)
                    .await?
                    .then(|| mine(current.epoch)),
                Some(current) if current.expires_at <= now => {
                    let next = mine(current.epoch + 1);
                    self.replace(&current, &next).await?.then_some(next)
                }
                Some(current) => {
                    return Err(StoreError::LeaseHeld {
                        key: key.to_owned(),
                        owner: current.owner,
                        expires_at: current.expires_at,
                    })
                }
            };
            if let Some(lease) = won {
                return Ok(lease);
            }
            // Someone changed the row between the read and the write: decide again.
        }
        Err(contended(format!("lease {key}"), CAS_ATTEMPTS))
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: i64, now: Timestamp) -> StoreResult<Lease> {
        let expires_at = now.plus_ms(ttl_ms);
        match self.extend(lease, expires_at).await? {
            true => Ok(Lease {
                expires_at,
                ..lease.clone()
            }),
            false => Err(stale(lease)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let result = self
            .session
            .execute_unpaged(
                &self.leases.release,
                (&lease.key, &lease.owner, lease.epoch as i64),
            )
            .await
            .map_err(unavailable)?;
        match applied(result)? {
            true => Ok(()),
            false => Err(stale(lease)),
        }
    }

    async fn lease(&self, key: &str) -> StoreResult<Option<Lease>> {
        self.read_lease(key).await
    }

    async fn take_over_lease(
        &self,
        observed: &Lease,
        owner: &str,
        ttl_ms: i64,
        now: Timestamp,
    ) -> StoreResult<Lease> {
        let next = Lease {
            key: observed.key.clone(),
            owner: owner.to_owned(),
            epoch: observed.epoch + 1,
            expires_at: now.plus_ms(ttl_ms),
        };
        let result = self
            .session
            .execute_unpaged(
                &self.leases.take_over,
                (
                    &next.owner,
                    next.epoch as i64,
                    next.expires_at.0,
                    &observed.key,
                    &observed.owner,
                    observed.epoch as i64,
                ),
            )
            .await
            .map_err(unavailable)?;
        match applied(result)? {
            true => Ok(next),
            false => Err(stale(observed)),
        }
    }
}
