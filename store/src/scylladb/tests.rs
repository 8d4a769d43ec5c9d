//! What can be checked without a server (statement text, configuration, migration order), and
//! the contract suite, run against a real CQL node (ScyllaDB or Cassandra) named by
//! `STING_SCYLLA_NODES`, each test in a fresh keyspace dropped afterwards. Those tests are
//! `#[ignore]`d, so that without a node they are reported as ignored, never as passed:
//! `cargo test -p sting-store scylladb -- --include-ignored` runs them.

use std::collections::BTreeMap;
use std::io::Write;

use scylla::deserialize::row::ColumnIterator;
use scylla::deserialize::FrameSlice;
use scylla::frame::response::result::{ColumnSpec, ColumnType, TableSpec};
use scylla::serialize::row::RowSerializationContext;
use scylla::serialize::writers::RowWriter;

use super::schema::{create_keyspace, MIGRATIONS};
use super::*;

const CASSANDRA: &str = "5.0.9";

/// ScyllaDB 6's `system.local`: it reports the Cassandra version it is compatible with.
fn scylla(features: &str) -> Server {
    Server::from_local("3.0.8", Some(features))
}

#[test]
fn the_server_and_its_tablets_are_told_from_system_local() {
    let cassandra = Server::from_local(CASSANDRA, None);
    assert_eq!(cassandra.kind, ServerKind::Cassandra);
    assert_eq!(cassandra.release_version, "5.0.9");
    assert!(!cassandra.tablets);
    let tablets = scylla("LWT,TABLETS,UDA,VIEW_VIRTUAL_COLUMNS");
    assert_eq!(tablets.kind, ServerKind::ScyllaDb);
    assert!(tablets.tablets);
    for without in ["", "LWT,UDA", "TABLETS_ROUTING_V1"] {
        let server = scylla(without);
        assert_eq!(server.kind, ServerKind::ScyllaDb, "{without:?}");
        assert!(!server.tablets, "{without:?}");
    }
}

#[test]
fn keyspaces_are_created_with_the_configured_replication() {
    let simple = Replication::simple(1);
    for server in [Server::from_local(CASSANDRA, None), scylla("LWT,TABLETS")] {
        assert_eq!(
            create_keyspace("sting", &simple, &server).unwrap(),
            "CREATE KEYSPACE IF NOT EXISTS sting WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
    }
    let topology = Replication::per_datacenter(BTreeMap::from([
        ("eu_west".to_owned(), 3),
        ("us_east".to_owned(), 3),
    ]));
    let options = "CREATE KEYSPACE IF NOT EXISTS sting WITH replication = \
                   {'class': 'NetworkTopologyStrategy', 'eu_west': 3, 'us_east': 3}";
    assert_eq!(
        create_keyspace("sting", &topology, &scylla("LWT,TABLETS")).unwrap(),
        format!("{options} AND tablets = {{'enabled': false}}"),
        "ScyllaDB with tablets: the keyspace opts out"
    );
    for server in [Server::from_local(CASSANDRA, None), scylla("LWT")] {
        assert_eq!(
            create_keyspace("sting", &topology, &server).unwrap(),
            options,
            "no tablets option where the server has none: {server:?}"
        );
    }
}

#[test]
fn names_that_are_not_identifiers_are_refused() {
    let simple = Replication::simple(1);
    let server = scylla("TABLETS");
    let create_keyspace =
        |keyspace: &str, replication: &Replication| create_keyspace(keyspace, replication, &server);
    for bad in [
        "",
        "sting; DROP KEYSPACE x",
        "1sting",
        "st-ing",
        &"k".repeat(49),
    ] {
        assert!(create_keyspace(bad, &simple).is_err(), "{bad:?}");
    }
    let injected = Replication::per_datacenter(BTreeMap::from([("dc1': 3, 'x".to_owned(), 3)]));
    assert!(create_keyspace("sting", &injected).is_err());
    let empty = Replication::per_datacenter(BTreeMap::new());
    assert!(create_keyspace("sting", &empty).is_err());
    assert!(create_keyspace("sting", &Replication::simple(0)).is_err());
}

#[test]
fn migrations_are_ordered_and_idempotent() {
    for (i, migration) in MIGRATIONS.iter().enumerate() {
        assert_eq!(migration.version, i as i32 + 1, "versions count up from 1");
        assert!(!migration.description.is_empty());
        for statement in migration.statements {
            assert!(
                statement.contains("IF NOT EXISTS"),
                "a node may apply it again after a crash: {statement}"
            );
        }
    }
}

#[test]
fn configuration_parses_and_hides_the_password() {
    let config: ScyllaConfig = serde_json::from_value(serde_json::json!({
        "nodes": ["10.0.0.1:9042"],
        "keyspace": "sting",
        "replication": {
            "class": "NetworkTopologyStrategy",
            "replication_factor": 1,
            "datacenters": {"dc1": 3}
        },
        "consistency": "local_quorum",
        "serial_consistency": "local_serial",
        "username": "sting",
        "password": "s3cret",
        "tls_ca_path": "",
        "request_timeout_ms": 5000
    }))
    .unwrap();
    assert_eq!(config.consistency().unwrap(), Consistency::LocalQuorum);
    assert_eq!(
        config.serial_consistency().unwrap(),
        SerialConsistency::LocalSerial
    );
    assert!(!format!("{config:?}").contains("s3cret"));
    let wrong = ScyllaConfig {
        consistency: "most".into(),
        ..config
    };
    assert!(wrong.consistency().is_err());
}

/// Serializes `row` as the driver binds values for `columns`, then reads it back as the driver
/// reads a result row with those columns: a row type whose fields do not match its columns
/// (names, types, order) fails here rather than against a server.
pub(super) fn roundtrip<R>(row: &R, columns: &[(&str, ColumnType<'static>)]) -> R
where
    R: SerializeRow + for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    let table = TableSpec::borrowed("sting", "roundtrip");
    let specs: Vec<ColumnSpec> = columns
        .iter()
        .map(|(name, typ)| ColumnSpec::borrowed(name, typ.clone(), table.clone()))
        .collect();
    let mut buffer = Vec::new();
    row.serialize(
        &RowSerializationContext::from_specs(&specs),
        &mut RowWriter::new(&mut buffer),
    )
    .expect("serialize the row");
    R::type_check(&specs).expect("row type matches the columns");
    let frame = bytes::Bytes::from(buffer);
    R::deserialize(ColumnIterator::new(&specs, FrameSlice::new(&frame))).expect("read the row")
}

fn config(nodes: Vec<String>, keyspace: &str) -> ScyllaConfig {
    ScyllaConfig {
        nodes,
        keyspace: keyspace.to_owned(),
        replication: Replication::simple(1),
        consistency: "local_quorum".into(),
        serial_consistency: "local_serial".into(),
        username: std::env::var("STING_SCYLLA_USERNAME").unwrap_or_default(),
        password: std::env::var("STING_SCYLLA_PASSWORD").unwrap_or_default(),
        tls_ca_path: std::env::var("STING_SCYLLA_TLS_CA").unwrap_or_default(),
        request_timeout_ms: 10_000,
    }
}

#[test]
fn lease_rows_roundtrip_through_the_driver_serialization() {
    use scylla::frame::response::result::NativeType::{BigInt, Text};
    let row = leases::LeaseRow {
        owner: "node-a".into(),
        epoch: 7,
        expires_at: 1_700_000_000_000,
    };
    let columns = [
        ("owner", ColumnType::Native(Text)),
        ("epoch", ColumnType::Native(BigInt)),
        ("expires_at", ColumnType::Native(BigInt)),
    ];
    assert_eq!(roundtrip(&row, &columns), row);
}

#[test]
fn pages_are_the_tail_of_the_first_offset_plus_limit() {
    let page = |limit, offset| crate::Page { limit, offset };
    assert_eq!(page_of(vec![1, 2, 3], page(10, 0)), vec![1, 2, 3]);
    assert_eq!(page_of(vec![1, 2, 3], page(1, 1)), vec![2]);
    assert!(page_of(vec![1, 2, 3], page(2, 3)).is_empty());
    assert!(page_of(vec![1, 2, 3], page(2, u64::MAX)).is_empty());
}

#[test]
fn batches_split_in_runs_within_the_limit() {
    let row = BATCH_BYTES / 4 - BATCH_ROW_BYTES;
    let runs = batch_runs((0..10).collect::<Vec<_>>(), |_| row);
    assert_eq!(
        runs,
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]],
        "four rows fill a batch"
    );
    let runs = batch_runs(vec![1, BATCH_BYTES, 2, 3], |&size| size);
    assert_eq!(
        runs,
        vec![vec![1], vec![BATCH_BYTES], vec![2, 3]],
        "a large row alone"
    );
    assert!(batch_runs(Vec::<usize>::new(), |&size| size).is_empty());
}

#[test]
fn refused_requests_are_internal_and_failures_to_serve_are_unavailable() {
    let refused = |error: DbError| {
        unavailable(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(error, "refused".into()),
        ))
    };
    assert!(matches!(refused(DbError::Invalid), StoreError::Internal(_)));
    assert!(matches!(
        refused(DbError::SyntaxError),
        StoreError::Internal(_)
    ));
    assert!(matches!(
        refused(DbError::Unauthorized),
        StoreError::Internal(_)
    ));
    assert!(matches!(
        refused(DbError::Overloaded),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        unavailable(ExecutionError::RequestTimeout(
            std::time::Duration::from_secs(5)
        )),
        StoreError::Unavailable(_)
    ));
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_not_a_panic() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let unreachable = config(vec!["127.0.0.1:1".into()], "sting");
    match ScyllaStore::connect(&unreachable).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("ScyllaDB"), "{message}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// A store on a fresh keyspace of the node(s) in `STING_SCYLLA_NODES`, dropped with the
/// guard. The tests that use it are ignored unless asked for (`--include-ignored`), and asked
/// for without a node they fail: a CQL test never passes without running.
async fn scylla_store(test: &str) -> (ScyllaStore, DropKeyspace) {
    let nodes = cql_nodes(test);
    let keyspace = format!("sting_test_{}", uuid::Uuid::new_v4().simple());
    let config = config(nodes, &keyspace);
    let store = ScyllaStore::connect(&config)
        .await
        .expect("connect to STING_SCYLLA_NODES");
    let guard = DropKeyspace {
        session: store.session.clone(),
        keyspace,
    };
    (store, guard)
}

/// The contact points in `STING_SCYLLA_NODES`; a test that needs them fails without them.
fn cql_nodes(test: &str) -> Vec<String> {
    match std::env::var("STING_SCYLLA_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => nodes
            .split(',')
            .map(|node| node.trim().to_owned())
            .collect(),
        _ => panic!(
            "{test} needs a CQL node: STING_SCYLLA_NODES=host:port[,...] \
             (tools/cassandra/cassandra.sh start runs one)"
        ),
    }
}

/// Drops a test's keyspace when the test ends.
struct DropKeyspace {
    session: Arc<Session>,
    keyspace: String,
}

impl Drop for DropKeyspace {
    fn drop(&mut self) {
        let dropped = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(schema::drop_keyspace(&self.session, &self.keyspace))
        });
        if let Err(err) = dropped {
            let _ = writeln!(std::io::stderr(), "dropping {}: {err}", self.keyspace);
        }
    }
}

/// Each shape of a lightweight transaction's answer (they differ between ScyllaDB and
/// Cassandra: see [`applied`]) is read by its `[applied]` column alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CQL node (STING_SCYLLA_NODES); run with --include-ignored"]
async fn lwt_answers_of_every_shape_are_read_by_applied() {
    let (store, _guard) = scylla_store("lwt_answers_of_every_shape_are_read_by_applied").await;
    let lwt = |cql: &'static str| {
        let session = store.session.clone();
        async move {
            let result = session.query_unpaged(cql, ()).await.expect(cql);
            applied(result).expect(cql)
        }
    };
    let insert = "INSERT INTO leases (key, owner, epoch, expires_at) VALUES ('k', 'a', 1, 10) \
                  IF NOT EXISTS";
    assert!(lwt(insert).await, "applied");
    assert!(
        !lwt(insert).await,
        "the row exists (Cassandra: the whole row comes back)"
    );
    assert!(
        !lwt("UPDATE leases SET expires_at = 20 WHERE key = 'k' IF owner = 'b' AND epoch = 1")
            .await,
        "a failed condition (Cassandra: its columns come back)"
    );
    assert!(
        lwt("UPDATE leases SET expires_at = 20 WHERE key = 'k' IF owner = 'a' AND epoch = 1").await
    );
    assert!(
        !lwt("UPDATE leases SET expires_at = 20 WHERE key = 'gone' IF owner = 'a'").await,
        "no row (Cassandra: [applied] alone)"
    );
    assert!(!lwt("DELETE FROM leases WHERE key = 'gone' IF EXISTS").await);
    assert!(lwt("DELETE FROM leases WHERE key = 'k' IF EXISTS").await);
}

/// A `NetworkTopologyStrategy` keyspace on the node's own datacenter: created with the
/// options this server takes (tablets off only on a ScyllaDB that has them), migrated, and
/// serving lightweight transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a CQL node (STING_SCYLLA_NODES); run with --include-ignored"]
async fn a_keyspace_per_datacenter_is_created_for_the_server() {
    let test = "a_keyspace_per_datacenter_is_created_for_the_server";
    let (probe, _probe_guard) = scylla_store(test).await;
    let (datacenter,): (String,) = probe
        .session
        .query_unpaged(
            "SELECT data_center FROM system.local WHERE key = 'local'",
            (),
        )
        .await
        .expect("system.local")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("the local node's datacenter");
    let keyspace = format!("sting_test_{}", uuid::Uuid::new_v4().simple());
    let mut config = config(cql_nodes(test), &keyspace);
    config.replication = Replication::per_datacenter(BTreeMap::from([(datacenter, 1)]));
    let store = ScyllaStore::connect(&config).await.expect("connect");
    let _guard = DropKeyspace {
        session: store.session.clone(),
        keyspace,
    };
    let server = store.server();
    let _ = writeln!(
        std::io::stderr(),
        "{test}: {} {} (tablets: {})",
        server.kind.name(),
        server.release_version,
        server.tablets
    );
    assert_eq!(store.server(), probe.server());
    let now = crate::Timestamp(1_000);
    let lease = crate::LeaseStore::acquire_lease(&store, "k", "node-a", 10_000, now)
        .await
        .expect("an LWT on the keyspace");
    assert_eq!(lease.epoch, 1);
}

// The whole contract suite, as on SQLite; reported as ignored where no CQL node is given.
crate::store_test_suite!(
    scylla_store,
    #[ignore = "needs a CQL node (STING_SCYLLA_NODES); run with --include-ignored"]
);
