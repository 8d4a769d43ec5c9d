//! The keyspace and its versioned migrations.
//!
//! Migration `n` is a list of idempotent DDL statements (`IF NOT EXISTS`), applied in order
//! and recorded in `schema_migrations`. Several nodes may start at once: one takes the
//! migration lock (a lightweight transaction with a TTL, so a node that dies holding it does
//! not block the others for long), the others wait until the migrations they need are
//! recorded. Never edit a shipped migration: append one.

use std::time::Duration;

use scylla::client::session::Session;

use super::{applied, invalid, unavailable, Replication, ReplicationClass, Server};
use crate::{StoreError, StoreResult};

pub(super) struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub statements: &'static [&'static str],
}

/// In version order: each area's tables are one migration of its own module.
pub(super) const MIGRATIONS: &[Migration] = &[
    super::leases::MIGRATION,
    super::identity::MIGRATION,
    super::conversations::MIGRATION,
    super::knowledge::MIGRATION,
    super::market::MIGRATION,
];

/// How long the migration lock lives if its holder dies, and how long others wait for it.
const LOCK_TTL_SECS: u32 = 60;
const WAIT_FOR_MIGRATIONS: Duration = Duration::from_secs(120);

/// `CREATE KEYSPACE IF NOT EXISTS` for `keyspace` with `replication` on `server`; names are
/// checked, since they cannot be bound as values.
pub(super) fn create_keyspace(
    keyspace: &str,
    replication: &Replication,
    server: &Server,
) -> StoreResult<String> {
    check_name("keyspace", keyspace)?;
    // Tablets (ScyllaDB 6+, the default for NetworkTopologyStrategy keyspaces) refuse
    // lightweight transactions before ScyllaDB 2025.3, and Sting's leases, uniqueness and
    // fencing are LWTs: such keyspaces use vnodes. The option exists only where the cluster
    // has the feature: Cassandra, and ScyllaDB before 6, refuse it ("Unknown property").
    let (options, tablets) = match replication.class {
        ReplicationClass::SimpleStrategy => {
            if replication.replication_factor == 0 {
                return Err(invalid("replication_factor must be at least 1".into()));
            }
            let options = format!(
                "'class': 'SimpleStrategy', 'replication_factor': {}",
                replication.replication_factor
            );
            (options, "")
        }
        ReplicationClass::NetworkTopologyStrategy => {
            let datacenters = &replication.datacenters;
            if datacenters.is_empty() {
                return Err(invalid("NetworkTopologyStrategy needs a datacenter".into()));
            }
            let mut options = "'class': 'NetworkTopologyStrategy'".to_owned();
            for (datacenter, factor) in datacenters {
                check_name("datacenter", datacenter)?;
                options.push_str(&format!(", '{datacenter}': {factor}"));
            }
            let tablets = match server.tablets {
                true => " AND tablets = {'enabled': false}",
                false => "",
            };
            (options, tablets)
        }
    };
    Ok(format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{{options}}}{tablets}"
    ))
}

fn check_name(what: &str, name: &str) -> StoreResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    match valid {
        true => Ok(()),
        false => Err(invalid(format!(
            "{what} {name:?}: letters, digits and _ (at most 48, not starting with a digit)"
        ))),
    }
}

/// Creates the keyspace, makes it the session's, and applies the migrations it lacks.
pub(super) async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
    server: &Server,
) -> StoreResult<()> {
    run(session, &create_keyspace(keyspace, replication, server)?).await?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(unavailable)?;
    run(
        session,
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version int PRIMARY KEY,
            description text,
            applied_at timestamp
        )",
    )
    .await?;
    run(
        session,
        "CREATE TABLE IF NOT EXISTS schema_lock (name text PRIMARY KEY, holder text)",
    )
    .await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    let deadline = tokio::time::Instant::now() + WAIT_FOR_MIGRATIONS;
    loop {
        let applied_versions = applied_versions(session).await?;
        if applied_versions.contains(&latest) {
            return Ok(());
        }
        let holder = uuid::Uuid::new_v4().to_string();
        if lock(session, &holder).await? {
            let outcome = apply(session, &applied_versions).await;
            let unlocked = unlock(session, &holder).await;
            return outcome.and(unlocked);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StoreError::Unavailable(
                "another node has held the schema migration lock for too long".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn apply(session: &Session, done: &[i32]) -> StoreResult<()> {
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for statement in migration.statements {
            run(session, statement).await?;
        }
        session
            .query_unpaged(
                "INSERT INTO schema_migrations (version, description, applied_at)
                 VALUES (?, ?, toTimestamp(now())) IF NOT EXISTS",
                (migration.version, migration.description),
            )
            .await
            .map_err(unavailable)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "ScyllaDB schema migrated"
        );
    }
    Ok(())
}

async fn applied_versions(session: &Session) -> StoreResult<Vec<i32>> {
    let rows = session
        .query_unpaged("SELECT version FROM schema_migrations", ())
        .await
        .map_err(unavailable)?
        .into_rows_result()
        .map_err(|err| StoreError::Internal(format!("schema_migrations: {err}")))?;
    rows.rows::<(i32,)>()
        .map_err(|err| StoreError::Internal(format!("schema_migrations: {err}")))?
        .map(|row| {
            row.map(|(version,)| version)
                .map_err(|err| StoreError::Internal(format!("schema_migrations: {err}")))
        })
        .collect()
}

async fn lock(session: &Session, holder: &str) -> StoreResult<bool> {
    let result = session
        .query_unpaged(
            format!(
                "INSERT INTO schema_lock (name, holder) VALUES ('migrations', ?)
                 IF NOT EXISTS USING TTL {LOCK_TTL_SECS}"
            ),
            (holder,),
        )
        .await
        .map_err(unavailable)?;
    applied(result)
}

async fn unlock(session: &Session, holder: &str) -> StoreResult<()> {
    session
        .query_unpaged(
            "DELETE FROM schema_lock WHERE name = 'migrations' IF holder = ?",
            (holder,),
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Runs one DDL statement and waits until every node agrees on the schema.
async fn run(session: &Session, statement: &str) -> StoreResult<()> {
    session
        .query_unpaged(statement, ())
        .await
        .map_err(unavailable)?;
    session
        .await_schema_agreement()
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Drops a test keyspace.
#[cfg(test)]
pub(super) async fn drop_keyspace(session: &Session, keyspace: &str) -> StoreResult<()> {
    check_name("keyspace", keyspace)?;
    run(session, &format!("DROP KEYSPACE IF EXISTS {keyspace}")).await
}
