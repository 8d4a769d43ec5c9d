//! The CQL backend, for ScyllaDB and Apache Cassandra 5.0: the store of a cluster that
//! outgrows one machine.
//!
//! Written area by area (the traits of [`crate::Store`]), one module each; the data model and
//! why each table exists are in `store/SCYLLA.md`. Here: the connection (token-aware routing,
//! shard-aware on ScyllaDB; prepared statements, retries and speculative execution for
//! idempotent statements only, TLS, credentials), what the server is ([`Server`]: the
//! statements are the same on both, the keyspace options are not), and what every area reads
//! and writes with.

mod conversations;
mod identity;
mod knowledge;
mod leases;
mod market;
mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, SchemaAgreementError, UseKeyspaceError,
};
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::policies::speculative_execution::SimpleSpeculativeExecutionPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};

use crate::{StoreError, StoreResult};

/// Where the cluster is and how to talk to it.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port` (9042 for CQL); the rest of the cluster is discovered.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication: Replication,
    /// Of reads and writes: `local_quorum` (default: survives a replica down per DC, reads
    /// see acknowledged writes), `quorum`, `local_one`, `one`, `all`.
    pub consistency: String,
    /// Of the lightweight transactions (leases, uniqueness): `local_serial` or `serial`.
    pub serial_consistency: String,
    /// Empty: no authentication.
    pub username: String,
    pub password: String,
    /// PEM file of the CA that signed the nodes' certificates; empty: no TLS.
    pub tls_ca_path: String,
    pub request_timeout_ms: u64,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("serial_consistency", &self.serial_consistency)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("tls_ca_path", &self.tls_ca_path)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

/// How many copies of each row the keyspace keeps, and where. Flat rather than an enum so
/// that a configuration file layered over the defaults can switch the class.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    pub class: ReplicationClass,
    /// Copies, with `SimpleStrategy`.
    pub replication_factor: u32,
    /// Copies per datacenter, with `NetworkTopologyStrategy` (3 per DC tolerates one node
    /// down at LOCAL_QUORUM).
    #[serde(default)]
    pub datacenters: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ReplicationClass {
    /// One datacenter, for development and tests.
    SimpleStrategy,
    /// Production: copies per datacenter.
    NetworkTopologyStrategy,
}

impl Replication {
    /// One datacenter with `replication_factor` copies.
    pub fn simple(replication_factor: u32) -> Replication {
        Replication {
            class: ReplicationClass::SimpleStrategy,
            replication_factor,
            datacenters: BTreeMap::new(),
        }
    }

    /// Copies per datacenter.
    pub fn per_datacenter(datacenters: BTreeMap<String, u32>) -> Replication {
        Replication {
            class: ReplicationClass::NetworkTopologyStrategy,
            replication_factor: 0,
            datacenters,
        }
    }
}

impl ScyllaConfig {
    fn consistency(&self) -> StoreResult<Consistency> {
        Ok(match self.consistency.as_str() {
            "local_quorum" => Consistency::LocalQuorum,
            "quorum" => Consistency::Quorum,
            "each_quorum" => Consistency::EachQuorum,
            "local_one" => Consistency::LocalOne,
            "one" => Consistency::One,
            "all" => Consistency::All,
            other => return Err(invalid(format!("unknown consistency {other:?}"))),
        })
    }

    fn serial_consistency(&self) -> StoreResult<SerialConsistency> {
        Ok(match self.serial_consistency.as_str() {
            "local_serial" => SerialConsistency::LocalSerial,
            "serial" => SerialConsistency::Serial,
            other => return Err(invalid(format!("unknown serial consistency {other:?}"))),
        })
    }
}

/// The store on a CQL cluster: ScyllaDB (written for 6.0 and later; see
/// `schema::create_keyspace` on tablets) or Apache Cassandra 5.0.
pub struct ScyllaStore {
    session: Arc<Session>,
    server: Server,
    leases: leases::Statements,
    identity: identity::Statements,
    conversations: conversations::Statements,
    knowledge: knowledge::Statements,
    market: market::Statements,
}

impl ScyllaStore {
    /// Connects, creates or migrates the keyspace's schema, and prepares the statements.
    pub async fn connect(config: &ScyllaConfig) -> StoreResult<ScyllaStore> {
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency()?)
            .serial_consistency(Some(config.serial_consistency()?))
            .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
            // Both apply to statements marked idempotent only: a write that may have been
            // applied is never sent twice.
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .speculative_execution_policy(Some(Arc::new(SimpleSpeculativeExecutionPolicy {
                max_retry_count: 2,
                retry_interval: Duration::from_millis(config.request_timeout_ms / 10),
            })))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .default_execution_profile_handle(profile.into_handle());
        if !config.username.is_empty() {
            builder = builder.user(&config.username, &config.password);
        }
        if !config.tls_ca_path.is_empty() {
            builder = builder.tls_context(Some(tls_context(&config.tls_ca_path)?));
        }
        let session = builder
            .build()
            .await
            .map_err(|err| StoreError::Unavailable(format!("connecting to ScyllaDB: {err}")))?;
        let server = Server::detect(&session).await?;
        tracing::info!(
            server = server.kind.name(),
            release_version = %server.release_version,
            tablets = server.tablets,
            "connected to the CQL cluster"
        );
        schema::migrate(&session, &config.keyspace, &config.replication, &server).await?;
        Ok(ScyllaStore {
            leases: leases::Statements::prepare(&session).await?,
            identity: identity::Statements::prepare(&session).await?,
            conversations: conversations::Statements::prepare(&session).await?,
            knowledge: knowledge::Statements::prepare(&session).await?,
            market: market::Statements::prepare(&session).await?,
            session: Arc::new(session),
            server,
        })
    }

    /// What the cluster is, as told at connection.
    pub fn server(&self) -> &Server {
        &self.server
    }
}

/// The two CQL servers the backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    ScyllaDb,
    Cassandra,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::ScyllaDb => "ScyllaDB",
            ServerKind::Cassandra => "Cassandra",
        }
    }
}

/// What the cluster is, read from the coordinator's `system.local` at connection. Only
/// ScyllaDB has a `supported_features` column there (its cluster features, comma-separated);
/// the scylla driver's own tests tell the two servers apart, and tablets, the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub kind: ServerKind,
    /// `release_version`: Cassandra's version, or the one ScyllaDB is compatible with.
    pub release_version: String,
    /// ScyllaDB's `TABLETS` feature (6.0 and later): keyspaces then opt out of tablets, whose
    /// keyspaces refused lightweight transactions before ScyllaDB 2025.3.
    pub tablets: bool,
}

impl Server {
    async fn detect(session: &Session) -> StoreResult<Server> {
        let result = session
            .query_unpaged("SELECT * FROM system.local WHERE key = 'local'", ())
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(|err| corrupt("system.local", err))?;
        let specs = result.column_specs();
        let column = |name: &str| specs.get_by_name(name).map(|(index, _)| index);
        let (release_version, features) = (column("release_version"), column("supported_features"));
        let row: Row = result
            .first_row()
            .map_err(|err| corrupt("system.local", err))?;
        let text = |index: Option<usize>| {
            index
                .and_then(|index| row.columns.get(index))
                .and_then(Option::as_ref)
                .and_then(CqlValue::as_text)
                .map(String::as_str)
        };
        Ok(Server::from_local(
            text(release_version).unwrap_or_default(),
            features.map(|index| text(Some(index)).unwrap_or_default()),
        ))
    }

    /// From `system.local`: its `release_version`, and its `supported_features` where the
    /// table has that column (`None`: it has not, so the server is Cassandra).
    fn from_local(release_version: &str, supported_features: Option<&str>) -> Server {
        let kind = match supported_features {
            Some(_) => ServerKind::ScyllaDb,
            None => ServerKind::Cassandra,
        };
        let tablets = supported_features
            .unwrap_or_default()
            .split(',')
            .any(|feature| feature.trim() == "TABLETS");
        Server {
            kind,
            release_version: release_version.to_owned(),
            tablets,
        }
    }
}

#[async_trait::async_trait]
impl crate::Store for ScyllaStore {
    fn backend_name(&self) -> &'static str {
        "scylla"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A write is durable (in the replicas' commit logs) once acknowledged: nothing to do.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    fn client_stats(&self) -> Option<crate::ClientStats> {
        let metrics = self.session.get_metrics();
        Some(crate::ClientStats {
            requests: metrics.get_requests_unpaged_num()
                + metrics.get_requests_manually_paged_num()
                + metrics.get_requests_automatically_paged_num(),
            errors: metrics.get_errors_unpaged_num()
                + metrics.get_errors_manually_paged_num()
                + metrics.get_errors_automatically_paged_num(),
            retries: metrics.get_retries_num(),
            request_timeouts: metrics.get_request_timeouts(),
            connection_timeouts: metrics.get_connection_timeouts(),
            connections: metrics.get_total_connections(),
            // Errors only before the first request (an empty histogram).
            latency_mean_ms: metrics.get_latency_avg_ms().unwrap_or(0),
            latency_p99_ms: metrics.get_latency_percentile_ms(99.0).unwrap_or(0),
        })
    }
}

/// A rustls client configuration trusting the CA in `ca_path` (ring, like the rest of Sting).
fn tls_context(ca_path: &str) -> StoreResult<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_path)
        .map_err(|err| invalid(format!("reading the ScyllaDB CA {ca_path}: {err}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|err| invalid(format!("ScyllaDB CA {ca_path}: {err}")))?;
        roots
            .add(cert)
            .map_err(|err| invalid(format!("ScyllaDB CA {ca_path}: {err}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(format!("TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn invalid(message: String) -> StoreError {
    StoreError::Internal(format!("ScyllaDB configuration: {message}"))
}

/// A failed request. Most failures mean the cluster could not answer now (timeouts,
/// unavailable replicas, a lost connection): [`StoreError::Unavailable`], which the caller may
/// retry. A conditional write that timed out may or may not have been applied: callers read
/// the state again rather than assume. A request the cluster refuses as such (invalid, a
/// syntax error, not authorised) fails the same way every time: [`StoreError::Internal`].
fn unavailable(err: impl DriverError) -> StoreError {
    match err.refused_by_the_cluster() {
        true => StoreError::Internal(format!("ScyllaDB refused a request: {err}")),
        false => StoreError::Unavailable(format!("ScyllaDB: {err}")),
    }
}

/// The driver's errors, told apart by whether retrying can help.
trait DriverError: std::fmt::Display {
    fn refused_by_the_cluster(&self) -> bool {
        false
    }
}

/// Whether the cluster refused the request itself rather than failed to serve it.
fn permanent(error: &RequestAttemptError) -> bool {
    matches!(
        error,
        RequestAttemptError::DbError(
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::AuthenticationError,
            _,
        ) | RequestAttemptError::SerializationError(_)
    )
}

impl DriverError for ExecutionError {
    fn refused_by_the_cluster(&self) -> bool {
        match self {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::LastAttemptError(error) => permanent(error),
            ExecutionError::PrepareError(error) => error.refused_by_the_cluster(),
            _ => false,
        }
    }
}

impl DriverError for PrepareError {
    fn refused_by_the_cluster(&self) -> bool {
        match self {
            PrepareError::AllAttemptsFailed { first_attempt } => permanent(first_attempt),
            _ => false,
        }
    }
}

impl DriverError for PagerExecutionError {}
impl DriverError for NextRowError {}
impl DriverError for NewSessionError {}
impl DriverError for UseKeyspaceError {}
impl DriverError for SchemaAgreementError {}

/// A compare-and-set that kept losing its race: retryable.
fn contended(what: impl std::fmt::Display, attempts: usize) -> StoreError {
    StoreError::Unavailable(format!(
        "{what}: contended, gave up after {attempts} attempts"
    ))
}

/// One page of `items`, already in order (filtered and sorted in the node).
fn page_of<T>(items: Vec<T>, page: crate::Page) -> Vec<T> {
    items
        .into_iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(page.limit as usize)
        .collect()
}

/// A row the store cannot read back: a schema or data bug, not a transient failure.
fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("ScyllaDB {what}: {err}"))
}

/// Prepares `cql` (once, at connection). Idempotent statements (reads, plain upserts, deletes)
/// may be retried and sent speculatively by the driver; conditional writes (LWTs), counter
/// updates and appends to collections must be prepared with `idempotent: false`.
async fn prepare(session: &Session, cql: &str, idempotent: bool) -> StoreResult<PreparedStatement> {
    let mut statement = session.prepare(cql).await.map_err(unavailable)?;
    statement.set_is_idempotent(idempotent);
    Ok(statement)
}

/// Prepares a read at the configured serial consistency (LOCAL_SERIAL by default): it sees
/// the outcome of any lightweight transaction in progress, so decisions are taken on it.
async fn prepare_serial_read(session: &Session, cql: &str) -> StoreResult<PreparedStatement> {
    let mut statement = prepare(session, cql, true).await?;
    let serial = session
        .get_default_execution_profile_handle()
        .to_profile()
        .get_serial_consistency();
    statement.set_consistency(match serial {
        Some(SerialConsistency::Serial) => Consistency::Serial,
        _ => Consistency::LocalSerial,
    });
    Ok(statement)
}

/// The most a batch over several partitions carries here, counted as the bytes of the values
/// it writes plus [`BATCH_ROW_BYTES`] a row. Cassandra refuses one larger than its
/// `batch_size_fail_threshold` (50 KiB of mutations by default; ScyllaDB's is 1 MiB) and
/// logs a warning above 5 KiB. This estimate is about twice what Cassandra counts, so the
/// batches written stay under the warning. A batch on one partition is not limited.
const BATCH_BYTES: usize = 8 * 1024;

/// What a row costs a batch besides its values: keys, cell headers, timestamps.
const BATCH_ROW_BYTES: usize = 64;

/// The batches of one write that split in [`batch_runs`] in flight at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// `items` in runs of consecutive items whose `size`s (each plus [`BATCH_ROW_BYTES`]) add up
/// to at most [`BATCH_BYTES`]; an item larger than that alone is a run of its own.
fn batch_runs<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let item_bytes = size(&item) + BATCH_ROW_BYTES;
        match runs.last_mut() {
            Some(run) if bytes + item_bytes <= BATCH_BYTES => {
                run.push(item);
                bytes += item_bytes;
            }
            _ => {
                runs.push(vec![item]);
                bytes = item_bytes;
            }
        }
    }
    runs
}

/// A logged batch of plain, idempotent writes (different partitions, applied all or none):
/// the driver may retry it. Its values must stay within [`BATCH_BYTES`].
fn logged_batch(statements: &[&PreparedStatement]) -> Batch {
    let mut batch = Batch::new(BatchType::Logged);
    for statement in statements {
        batch.append_statement((*statement).clone());
    }
    batch.set_is_idempotent(true);
    batch
}

/// The rows of an unpaged answer, for statements whose size the key or a `LIMIT` bounds.
fn rows<R>(result: QueryResult, what: &str) -> StoreResult<Vec<R>>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    let rows = result
        .into_rows_result()
        .map_err(|err| corrupt(what, err))?;
    let typed = rows.rows::<R>().map_err(|err| corrupt(what, err))?;
    typed
        .map(|row| row.map_err(|err| corrupt(what, err)))
        .collect()
}

/// The first row of an unpaged answer, if any.
fn maybe_row<R>(result: QueryResult, what: &str) -> StoreResult<Option<R>>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    let rows = result
        .into_rows_result()
        .map_err(|err| corrupt(what, err))?;
    rows.maybe_first_row::<R>()
        .map_err(|err| corrupt(what, err))
}

/// Every row of a read, fetched page by page (`execute_iter`), and at most `cap` of them: a
/// partition that grew past what its design bounds is an error, never unbounded memory.
async fn read_paged<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    cap: usize,
    what: &str,
) -> StoreResult<Vec<R>>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
{
    let mut stream = session
        .execute_iter(statement.clone(), values)
        .await
        .map_err(unavailable)?
        .rows_stream::<R>()
        .map_err(|err| corrupt(what, err))?;
    let mut all = Vec::new();
    while let Some(row) = stream.try_next().await.map_err(unavailable)? {
        if all.len() == cap {
            return Err(StoreError::Internal(format!(
                "ScyllaDB {what}: more than {cap} rows"
            )));
        }
        all.push(row);
    }
    Ok(all)
}

/// Whether a lightweight transaction was applied: its `[applied]` column, read on its own.
/// The other columns of the answer differ between servers, and nothing reads them: ScyllaDB
/// returns the row as it was; Cassandra only `[applied]` when applied or when the row is
/// missing, the condition's columns when an `IF col = ?` failed, the whole row when an
/// `IF NOT EXISTS` found one.
fn applied(result: QueryResult) -> StoreResult<bool> {
    let rows = result
        .into_rows_result()
        .map_err(|err| StoreError::Internal(format!("LWT answer: {err}")))?;
    let Some((index, _)) = rows.column_specs().get_by_name("[applied]") else {
        return Err(StoreError::Internal("LWT answer without [applied]".into()));
    };
    let row: Row = rows
        .first_row()
        .map_err(|err| StoreError::Internal(format!("LWT answer: {err}")))?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Internal(format!(
            "LWT answer with [applied] = {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests;
