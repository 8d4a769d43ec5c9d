//! Three `sting serve` processes on loopback as one cluster: a shared SQLite store (one host),
//! ractor_cluster between them, conversations and shards placed by rendezvous hashing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sting_cluster::{placement, NodeId};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{onnxruntime_available, ServerOptions, TestServer};
use crate::knowledge::{create_jar, english, settled, upload};

const COOKIE: &str = "e2e-cluster-cookie-0123456789";
const NAMES: [&str; 3] = ["a", "b", "c"];
const ADMIN_EMAIL: &str = "ops@example.com";
const ADMIN_PASSWORD: &str = "admin password 1";
/// Failure detection in these tests: a heartbeat every 200 ms, down after 1.5 s of silence.
const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// Three nodes sharing one store directory.
struct TestCluster {
    nodes: Vec<TestServer>,
    _store: tempfile::TempDir,
    admin: String,
}

/// A free TCP port on loopback (released again for the node to bind).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCluster {
    async fn start(extra: &[(&str, &str)]) -> TestCluster {
        TestCluster::start_with(extra, &|_| Vec::new(), &NAMES).await
    }

    /// Starts the nodes with `extra` settings for all and `per_node` ones for each, and waits
    /// until the first two place on `expected`.
    async fn start_with(
        extra: &[(&str, &str)],
        per_node: &dyn Fn(&str) -> Vec<(String, String)>,
        expected: &[&str],
    ) -> TestCluster {
        let store = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let seeds = match i {
                0 => "[]".to_owned(),
                _ => format!("[\"127.0.0.1:{}\"]", ports[0]),
            };
            let mut options = ServerOptions::new()
                .env("STING_NODE__NAME", name)
                .env("STING_STORE__DIR", store.path().to_str().unwrap())
                .env("STING_CLUSTER__ENABLED", "true")
                .env("STING_CLUSTER__COOKIE", COOKIE)
                .env("STING_CLUSTER__PORT", &ports[i].to_string())
                .env("STING_CLUSTER__SEEDS", &seeds)
                .env("STING_CLUSTER__HEARTBEAT_INTERVAL_MS", "200")
                .env("STING_CLUSTER__DOWN_AFTER_MS", "1500")
                .env("STING_RATE_LIMITS__CHAT__REQUESTS", "100000")
                .env("STING_RATE_LIMITS__SEARCH__REQUESTS", "100000")
                .env("STING_RATE_LIMITS__UPLOAD__REQUESTS", "1000")
                .env("STING_RATE_LIMITS__GENERAL__REQUESTS", "100000");
            if i == 0 {
                options = options
                    .env("STING_BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL)
                    .env("STING_BOOTSTRAP__ADMIN_PASSWORD", ADMIN_PASSWORD);
            }
            for (key, value) in extra {
                options = options.env(key, value);
            }
            for (key, value) in per_node(name) {
                options = options.env(&key, &value);
            }
            nodes.push(options.start().await);
        }
        let login = nodes[0].login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let admin = login.body["session_token"].as_str().unwrap().to_owned();
        let cluster = TestCluster {
            nodes,
            _store: store,
            admin,
        };
        for node in 0..expected.len() {
            cluster.await_placement(node, expected).await;
        }
        cluster
    }

    /// Runs `sting cluster <args>` as the admin against node `via`; returns its output.
    fn cli(&self, args: &[&str], via: &str) -> String {
        let output = std::process::Command::new(crate::harness::sting_binary())
            .arg("cluster")
            .args(args)
            .args(["--url", &self.node(via).base])
            .env("STING_TOKEN", &self.admin)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "sting cluster {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn node(&self, name: &str) -> &TestServer {
        &self.nodes[NAMES.iter().position(|n| *n == name).unwrap()]
    }

    async fn status(&self, node: usize) -> Value {
        let reply = self.nodes[node]
            .get("/api/system/cluster", Some(&self.admin))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    }

    /// Waits until `node` places on exactly `members`.
    async fn await_placement(&self, node: usize, members: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(node).await;
            let placement: Vec<&str> = status["placement"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            if placement == members {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} places on {placement:?}, not {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The node that owns a conversation when `members` are up (what every node computes).
fn owner(conversation: &str, members: &[&str]) -> String {
    let members: Vec<NodeId> = members.iter().map(|m| NodeId::new(*m)).collect();
    let key = format!("conversation:{conversation}");
    placement::owner(key.as_bytes(), &members)
        .unwrap()
        .to_string()
}

fn message(text: &str, conversation: Option<&str>, request_id: &str) -> Value {
    let mut body = json!({
        "message": text,
        "request_id": request_id,
        "context": {"temperature": 0, "max_tokens": 6},
    });
    if let Some(id) = conversation {
        body["conversation_id"] = json!(id);
    }
    body
}

/// Sends a message, retrying with the same request id while the cluster answers 503 (at most
/// `patience`); returns the reply body of the acknowledged turn.
async fn say(
    node: &TestServer,
    token: &str,
    conversation: Option<&str>,
    text: &str,
    patience: Duration,
) -> Value {
    let request_id = format!("req-{}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + patience;
    loop {
        let reply = node
            .post(
                "/api/chat/message",
                Some(token),
                message(text, conversation, &request_id),
            )
            .await;
        if reply.status == StatusCode::OK {
            return reply.body;
        }
        assert!(
            reply.status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline,
            "{}: {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn history(node: &TestServer, token: &str, conversation: &str) -> Vec<Value> {
    let reply = node
        .get(
            &format!("/api/chat/conversations/{conversation}?limit=200"),
            Some(token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["messages"].as_array().unwrap().clone()
}

/// Creates conversations (via `via`) until one is owned by `wanted`.
async fn conversation_owned_by(
    cluster: &TestCluster,
    token: &str,
    via: &str,
    wanted: &str,
) -> String {
    for _ in 0..40 {
        let reply = say(cluster.node(via), token, None, "hello", Duration::ZERO).await;
        let id = reply["conversation_id"].as_str().unwrap().to_owned();
        if owner(&id, &NAMES) == wanted {
            return id;
        }
    }
    panic!("no conversation placed on {wanted} in 40 tries");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send_frame(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame (pings skipped).
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a frame")
            .expect("socket open")
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn three_nodes_serve_one_conversation_and_stream_across_nodes() {
    if !onnxruntime_available("three_nodes_serve_one_conversation_and_stream_across_nodes") {
        return;
    }
    let cluster = TestCluster::start(&[]).await;
    let (token, _) = cluster.node("a").register("walker@example.com").await;

    // Created via a, continued via b and c: one history, in order.
    let first = say(cluster.node("a"), &token, None, "one", Duration::ZERO).await;
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    for (node, text) in [("b", "two"), ("c", "three"), ("a", "four")] {
        let reply = say(cluster.node(node), &token, Some(&id), text, Duration::ZERO).await;
        assert_eq!(reply["conversation_id"], id.as_str());
    }
    for node in NAMES {
        let messages = history(cluster.node(node), &token, &id).await;
        let users: Vec<&str> = messages
            .iter()
            .filter(|m| m["type"] == "user")
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["one", "two", "three", "four"], "history via {node}");
        assert_eq!(messages.len(), 8, "every message answered once");
    }
    // Token usage is answered by the owner, whichever node is asked.
    for node in NAMES {
        let usage = cluster
            .node(node)
            .get(
                &format!("/api/chat/conversations/{id}/token-usage"),
                Some(&token),
            )
            .await;
        assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    }

    // A WebSocket on c streams the answer of a conversation owned by a.
    let owned_by_a = conversation_owned_by(&cluster, &token, "b", "a").await;
    let url = cluster
        .node("c")
        .url("/api/chat/ws")
        .replacen("http", "ws", 1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut data = message("stream it", Some(&owned_by_a), "ws-1");
    data["context"]["max_tokens"] = json!(24);
    send_frame(&mut socket, json!({"type": "message", "data": data})).await;
    let (mut chunks, mut kinds) = (String::new(), Vec::new());
    let complete = loop {
        let frame = next_frame(&mut socket).await;
        let kind = frame["type"].as_str().unwrap().to_owned();
        assert_eq!(frame["request_id"], "ws-1", "{frame}");
        if kind == "response_chunk" {
            chunks.push_str(frame["chunk"].as_str().unwrap());
        }
        if kind == "response_complete" {
            break frame;
        }
        assert!(
            ["message_received", "response_chunk"].contains(&kind.as_str()),
            "{frame}"
        );
        kinds.push(kind);
    };
    assert_eq!(kinds[0], "message_received");
    assert!(kinds.iter().filter(|k| *k == "response_chunk").count() > 1);
    assert_eq!(complete["response"].as_str().unwrap(), chunks);
    let stored = history(cluster.node("a"), &token, &owned_by_a).await;
    assert_eq!(stored.last().unwrap()["content"].as_str().unwrap(), chunks);

    // Stopping the answer on c stops the generation on a; the partial answer is stored.
    let mut data = message("tell me a long story", Some(&owned_by_a), "ws-2");
    data["context"]["max_tokens"] = json!(180);
    send_frame(&mut socket, json!({"type": "message", "data": data})).await;
    let mut cancelled = false;
    let done = loop {
        let frame = next_frame(&mut socket).await;
        if frame["type"] == "response_chunk" && !cancelled {
            let cancel = json!({"type": "cancel", "request_id": "ws-2"});
            socket
                .send(Message::text(cancel.to_string()))
                .await
                .unwrap();
            cancelled = true;
        }
        if frame["type"] == "response_complete" {
            break frame;
        }
    };
    assert_eq!(done["metadata"]["status"], "cancelled", "{done}");
    let stored = history(cluster.node("b"), &token, &owned_by_a).await;
    assert_eq!(stored.last().unwrap()["status"], "cancelled");

    // The owner ran it: a reports the conversation's actor, c only routed.
    let status = cluster.status(2).await;
    let members: HashMap<&str, &Value> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["node"].as_str().unwrap(), m))
        .collect();
    assert_eq!(members.len(), 3);
    assert!(members.values().all(|m| m["state"] == "up"), "{status}");
    assert!(
        cluster
            .node("a")
            .get("/metrics", None)
            .await
            .body
            .as_str()
            .unwrap()
            .contains("sting_cluster_members{state=\"up\"} 3"),
        "cluster metrics"
    );

    // Search answers the same on every node (the shard lives on one of them).
    let jar = create_jar(
        cluster.node("a"),
        &token,
        json!({"name": "Field notes", "description": "bees"}),
    )
    .await;
    let mut documents = Vec::new();
    for topic in ["swarming in spring", "winter clusters", "waggle dances"] {
        let (status, body) = upload(
            cluster.node("b"),
            &token,
            &jar,
            &format!("{topic}.txt"),
            english(topic).into_bytes(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        documents.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &documents {
        assert_eq!(
            settled(cluster.node("c"), &token, id).await["status"],
            "processed"
        );
    }
    let mut answers = Vec::new();
    for node in NAMES {
        let reply = cluster
            .node(node)
            .post(
                "/api/knowledge/search",
                Some(&token),
                json!({"query": "waggle dances", "honey_jar_ids": [jar], "limit": 5}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let hits: Vec<(String, String)> = reply.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["document_id"].to_string(), r["score"].to_string()))
            .collect();
        assert!(!hits.is_empty());
        answers.push(hits);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

#[tokio::test]
async fn kill_9_of_an_owner_under_load_loses_no_acknowledged_message() {
    if !onnxruntime_available("kill_9_of_an_owner_under_load_loses_no_acknowledged_message") {
        return;
    }
    let cluster = TestCluster::start(&[]).await;
    let (token, _) = cluster.node("b").register("load@example.com").await;

    // 30 conversations, created through b and c.
    let mut conversations = Vec::new();
    for i in 0..30 {
        let via = if i % 2 == 0 { "b" } else { "c" };
        let reply = say(cluster.node(via), &token, None, "m0", Duration::ZERO).await;
        conversations.push(reply["conversation_id"].as_str().unwrap().to_owned());
    }
    let on_a: Vec<&String> = conversations
        .iter()
        .filter(|id| owner(id, &NAMES) == "a")
        .collect();
    assert!(on_a.len() >= 3, "a owns {} of 30", on_a.len());

    // Four more messages each, from concurrent clients on b and c; a dies during the load.
    let started = Instant::now();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Instant::now()
    };
    let load = futures::future::join_all(conversations.iter().enumerate().map(|(i, id)| {
        let via = if i % 2 == 0 { "b" } else { "c" };
        let (node, token) = (cluster.node(via), token.clone());
        async move {
            let mut acknowledged = Vec::new();
            for m in 1..5 {
                let reply = say(
                    node,
                    &token,
                    Some(id),
                    &format!("m{m}"),
                    Duration::from_secs(20),
                )
                .await;
                acknowledged.push((format!("m{m}"), Instant::now()));
                assert_eq!(reply["conversation_id"], id.as_str());
            }
            acknowledged
        }
    }));
    let (acknowledged, killed_at) = {
        let mut load = std::pin::pin!(load);
        let killed_at = tokio::select! {
            at = killer => at,
            _ = &mut load => panic!("the load finished before the kill"),
        };
        cluster.node("a").signal("KILL");
        (load.await, killed_at)
    };
    eprintln!(
        "load of 30×4 messages with a kill -9 after {:?}: {:?}",
        killed_at - started,
        started.elapsed()
    );

    // Every acknowledged message is stored exactly once, each followed by its answer.
    for (id, acked) in conversations.iter().zip(&acknowledged) {
        let messages = history(cluster.node("b"), &token, id).await;
        let users: Vec<&str> = messages
            .iter()
            .filter(|m| m["type"] == "user")
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["m0", "m1", "m2", "m3", "m4"], "conversation {id}");
        let ids: HashSet<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), messages.len(), "no duplicates in {id}");
        assert_eq!(messages.len(), 10, "every message answered once in {id}");
        assert_eq!(acked.len(), 4);
    }

    // a's conversations answered again within the failure-detection time of the kill.
    let recovered = on_a
        .iter()
        .map(|id| {
            let acked = &acknowledged[conversations.iter().position(|c| c == *id).unwrap()];
            acked
                .iter()
                .map(|(_, at)| *at)
                .find(|at| *at > killed_at)
                .map_or(Duration::ZERO, |at| at - killed_at)
        })
        .max()
        .unwrap();
    eprintln!(
        "recovery after kill -9: every conversation of the dead node answered within {recovered:?}"
    );
    assert!(
        recovered < DOWN_AFTER + Duration::from_secs(5),
        "{recovered:?}"
    );
    cluster.await_placement(1, &["b", "c"]).await;
}

#[tokio::test]
async fn a_paused_owner_is_fenced_and_drain_and_leave_hand_over_without_errors() {
    if !onnxruntime_available(
        "a_paused_owner_is_fenced_and_drain_and_leave_hand_over_without_errors",
    ) {
        return;
    }
    // Leases of 1 s, so the pause below outlasts them.
    let mut cluster = TestCluster::start(&[("STING_CHAT__LEASE_TTL_SECS", "1")]).await;
    let (token, _) = cluster.node("b").register("pause@example.com").await;
    let id = conversation_owned_by(&cluster, &token, "b", "a").await;

    // a freezes holding the conversation; b takes it over once a is declared down.
    cluster.node("a").signal("STOP");
    let paused = Instant::now();
    say(
        cluster.node("b"),
        &token,
        Some(&id),
        "while a sleeps",
        Duration::from_secs(10),
    )
    .await;
    let took_over = paused.elapsed();
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(took_over)).await;
    cluster.node("a").signal("CONT");
    cluster.await_placement(0, &NAMES).await;

    // a wakes up believing it still owns the conversation: its old lease is refused, it takes
    // the conversation back properly, and nothing is written twice or lost.
    say(
        cluster.node("a"),
        &token,
        Some(&id),
        "a is back",
        Duration::from_secs(10),
    )
    .await;
    let messages = history(cluster.node("c"), &token, &id).await;
    let users: Vec<&str> = messages
        .iter()
        .filter(|m| m["type"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["hello", "while a sleeps", "a is back"]);
    assert_eq!(messages.len(), 6, "every message answered once");
    assert!(
        cluster.node("a").log().contains("is stale"),
        "a's stale lease was refused"
    );

    // Drain c while clients keep talking through every node: no errors, and c ends up owning
    // nothing.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let reply = say(
            cluster.node("c"),
            &token,
            None,
            "before drain",
            Duration::ZERO,
        )
        .await;
        ids.push(reply["conversation_id"].as_str().unwrap().to_owned());
    }
    // The operator's command, through a (which forwards it to c).
    let drained = cluster.cli(&["drain", "c"], "a");
    assert_eq!(drained.trim(), "c is draining");
    for round in 0..3 {
        for (i, id) in ids.iter().enumerate() {
            let via = NAMES[(i + round) % 3];
            let reply = cluster
                .node(via)
                .post(
                    "/api/chat/message",
                    Some(&token),
                    message("during drain", Some(id), &format!("d-{round}-{i}")),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "via {via}: {}", reply.body);
        }
    }
    cluster.await_placement(1, &["a", "b"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.status(1).await;
        let c = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node"] == "c")
            .cloned()
            .unwrap();
        if c["state"] == "draining" && c["conversations"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "c still owns: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let messages = history(cluster.node("b"), &token, id).await;
        assert_eq!(messages.len(), 8, "{id}: every turn stored once");
    }
    let status = cluster.cli(&["status"], "b");
    let c_line = status.lines().find(|l| l.starts_with("c ")).expect(&status);
    assert!(c_line.contains("draining"), "{status}");
    assert!(status.contains("placement: a, b"), "{status}");
    let refused = std::process::Command::new(crate::harness::sting_binary())
        .args([
            "cluster",
            "status",
            "--url",
            &cluster.node("b").base,
            "--token",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    // c leaves: it stops by itself, cleanly, and the others see it go.
    assert_eq!(cluster.cli(&["leave", "c"], "a").trim(), "c is leaving");
    let left = cluster.nodes[2].wait_exit(Duration::from_secs(40));
    assert!(left.is_some_and(|status| status.success()), "{left:?}");
    let status = cluster.status(0).await;
    let c = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "c")
        .cloned();
    assert_eq!(c.unwrap()["state"], "down", "{status}");
    for id in &ids {
        say(
            cluster.node("a"),
            &token,
            Some(id),
            "after leave",
            Duration::ZERO,
        )
        .await;
    }
}

/// A CA and, for each name, a certificate for 127.0.0.1 signed by it: PEM files in `dir`.
fn certificates(dir: &std::path::Path, ca_name: &str, nodes: &[&str]) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{ca_name}.pem")), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    for node in nodes {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{node}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{node}.key")), key.serialize_pem()).unwrap();
    }
}

/// A node's TLS settings: its certificate and key in `dir`, and the CA `ca_of` names for it.
fn tls_settings(
    dir: &std::path::Path,
    ca_of: fn(&str) -> &'static str,
) -> impl Fn(&str) -> Vec<(String, String)> {
    let dir = dir.to_owned();
    move |node: &str| {
        let file = |name: String| dir.join(name).to_str().unwrap().to_owned();
        vec![
            (
                "STING_CLUSTER__TLS_CERT_PATH".to_owned(),
                file(format!("{node}.pem")),
            ),
            (
                "STING_CLUSTER__TLS_KEY_PATH".to_owned(),
                file(format!("{node}.key")),
            ),
            (
                "STING_CLUSTER__TLS_CA_PATH".to_owned(),
                file(format!("{}.pem", ca_of(node))),
            ),
        ]
    }
}

#[tokio::test]
async fn members_heard_of_through_a_peer_are_reached_over_tls_too() {
    let pki = tempfile::tempdir().unwrap();
    certificates(pki.path(), "cluster-ca", &NAMES);
    let files = tls_settings(pki.path(), |_| "cluster-ca");
    // b and c each know only a: each must learn of the other through a, and reach it with its
    // own TLS (both then place on all three, which needs the other's heartbeats).
    let cluster = TestCluster::start_with(&[], &files, &NAMES).await;
    for node in &cluster.nodes {
        let log = node.log();
        assert!(
            !log.contains("transitive connection"),
            "a dial in the clear: {log}"
        );
    }
}

#[tokio::test]
async fn nodes_speak_mutual_tls_and_refuse_a_stranger() {
    if !onnxruntime_available("nodes_speak_mutual_tls_and_refuse_a_stranger") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    certificates(pki.path(), "cluster-ca", &["a", "b"]);
    // c's certificate is signed by another CA: the others must not let it in.
    certificates(pki.path(), "other-ca", &["c"]);
    let files = tls_settings(pki.path(), |node| {
        if node == "c" {
            "other-ca"
        } else {
            "cluster-ca"
        }
    });
    let cluster = TestCluster::start_with(&[], &files, &["a", "b"]).await;
    let (token, _) = cluster.node("b").register("tls@example.com").await;
    for via in ["a", "b", "a", "b"] {
        say(cluster.node(via), &token, None, "over TLS", Duration::ZERO).await;
    }
    // Long past c's join wait, a still knows only b.
    let status = cluster.status(0).await;
    let members: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["a", "b"], "{status}");
    assert!(cluster.node("a").log().contains("tls=true"));
}

#[tokio::test]
async fn account_changes_apply_on_every_node_at_once() {
    // Sessions revalidate only hourly here: what reaches the other nodes is the cluster's word.
    let cluster = TestCluster::start(&[("STING_AUTH__SESSION_REVALIDATE_SECS", "3600")]).await;
    let (token, user) = cluster.nodes[0].register("everywhere@example.com").await;
    let session = |node: usize, token: String| {
        let node = &cluster.nodes[node];
        async move { node.get("/api/auth/session", Some(&token)).await.body }
    };
    for node in 0..3 {
        assert_eq!(session(node, token.clone()).await["authenticated"], true);
    }

    // A role change made through one node shows on the next request through every node.
    let promoted = cluster.nodes[0]
        .call(
            reqwest::Method::PUT,
            &format!("/api/admin/users/{user}"),
            Some(&cluster.admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    for node in 0..3 {
        assert_eq!(
            session(node, token.clone()).await["user"]["role"],
            "admin",
            "node {node}"
        );
    }

    // Logging out through one node ends the session through every node.
    let logout = cluster.nodes[1]
        .call(
            reqwest::Method::POST,
            "/api/auth/logout",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(logout.status, StatusCode::OK, "{}", logout.body);
    for node in 0..3 {
        assert_eq!(
            session(node, token.clone()).await["authenticated"],
            false,
            "node {node}"
        );
    }

    // Signing out everywhere through one node ends every session through every node.
    let first = cluster.nodes[0]
        .session_token("everywhere@example.com", "correct horse battery")
        .await;
    let second = cluster.nodes[2]
        .session_token("everywhere@example.com", "correct horse battery")
        .await;
    for node in 0..3 {
        assert_eq!(session(node, second.clone()).await["authenticated"], true);
    }
    let everywhere = cluster.nodes[0]
        .call(
            reqwest::Method::POST,
            "/api/auth/logout-everywhere",
            Some(&first),
            None,
        )
        .await;
    assert_eq!(
        everywhere.body["sessions_revoked"], 2,
        "{}",
        everywhere.body
    );
    for node in 0..3 {
        for token in [&first, &second] {
            assert_eq!(
                session(node, token.clone()).await["authenticated"],
                false,
                "node {node}"
            );
        }
    }
}
