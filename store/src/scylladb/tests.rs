//! What can be checked without a server (statement text, configuration, migration order), and
//! the contract suite's areas that ScyllaDB implements, run against a real node when
//! `STING_SCYLLA_NODES` names one (each in a fresh keyspace, dropped afterwards).

use std::collections::BTreeMap;
use std::io::Write;

use scylla::deserialize::row::ColumnIterator;
use scylla::deserialize::FrameSlice;
use scylla::frame::response::result::{ColumnSpec, ColumnType, TableSpec};
use scylla::serialize::row::RowSerializationContext;
use scylla::serialize::writers::RowWriter;

use super::schema::{create_keyspace, MIGRATIONS};
use super::*;

#[test]
fn keyspaces_are_created_with_the_configured_replication() {
    let simple = Replication::simple(1);
    assert_eq!(
        create_keyspace("sting", &simple).unwrap(),
        "CREATE KEYSPACE IF NOT EXISTS sting WITH replication = \
         {'class': 'SimpleStrategy', 'replication_factor': 1}"
    );
    let topology = Replication::per_datacenter(BTreeMap::from([
        ("eu_west".to_owned(), 3),
        ("us_east".to_owned(), 3),
    ]));
    assert_eq!(
        create_keyspace("sting", &topology).unwrap(),
        "CREATE KEYSPACE IF NOT EXISTS sting WITH replication = \
         {'class': 'NetworkTopologyStrategy', 'eu_west': 3, 'us_east': 3} \
         AND tablets = {'enabled': false}"
    );
}

#[test]
fn names_that_are_not_identifiers_are_refused() {
    let simple = Replication::simple(1);
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
/// guard; or `None`, said out loud, when none is given (`STING_REQUIRE_SCYLLA=1` makes that a
/// failure).
async fn scylla_store(test: &str) -> Option<(ScyllaStore, DropKeyspace)> {
    let Ok(nodes) = std::env::var("STING_SCYLLA_NODES") else {
        let required = std::env::var("STING_REQUIRE_SCYLLA").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: STING_REQUIRE_SCYLLA=1 but STING_SCYLLA_NODES is unset"
        );
        // Straight to stderr, past the test harness's capture, so that a skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: STING_SCYLLA_NODES is unset (host:port of a ScyllaDB node to run \
             the contract suite on)"
        );
        return None;
    };
    let keyspace = format!("sting_test_{}", uuid::Uuid::new_v4().simple());
    let config = config(nodes.split(',').map(str::to_owned).collect(), &keyspace);
    let store = ScyllaStore::connect(&config)
        .await
        .expect("connect to STING_SCYLLA_NODES");
    let guard = DropKeyspace {
        session: store.session.clone(),
        keyspace,
    };
    Some((store, guard))
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

// The whole contract suite, as on SQLite.
crate::store_test_suite!(scylla_store);
