//! Three `sting serve` processes (release build) on loopback as one cluster: what routing
//! through a non-owner node costs, and how long a killed owner's conversations take to answer
//! again.
//!
//! ```sh
//! ORT_DYLIB_PATH=/path/to/libonnxruntime.so.1.31.1 cargo bench --bench cluster
//! ```
//!
//! The committed fixture chat model is used (`STING_BENCH_DATA_DIR` = a data dir prepared by
//! `sting models prepare` uses SmolLM2 instead). `STING_BENCH_ROUNDS` (default 20) rounds each
//! send one message to each of 12 conversations through its owner and one through a non-owner
//! (alternating which goes first), over HTTP (`POST /api/chat/message`, 8 greedy tokens).
//! Prints the p50/p90 latency of both and the ratio non-owner ÷ owner measured in the same run.
//! Then the node owning the most conversations is killed (`kill -9`) and every one of its
//! conversations is sent a message through the survivors at once: the time from the kill to
//! each answer is the recovery time (default failure detection: heartbeats every 500 ms, down
//! after 3 s, a closed connection at once).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sting_cluster::{placement, NodeId};

mod common;
use common::{listen_url, percentile, register, serve_command};

const NAMES: [&str; 3] = ["a", "b", "c"];
const CONVERSATIONS: usize = 12;

fn main() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        eprintln!("SKIP cluster bench: set ORT_DYLIB_PATH to the ONNX Runtime library");
        return;
    }
    let rounds = std::env::var("STING_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(rounds));
}

struct Node {
    name: &'static str,
    base: String,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the models come from: a prepared data dir, else the committed fixtures.
fn models() -> (PathBuf, String) {
    match std::env::var_os("STING_BENCH_DATA_DIR").map(PathBuf::from) {
        Some(dir) => (dir.join("models"), "smollm2-135m-instruct".into()),
        None => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models"),
            "fixture-chat".into(),
        ),
    }
}

async fn start(work: &std::path::Path) -> Vec<Node> {
    let (models_dir, model) = models();
    let ports: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, name) in NAMES.into_iter().enumerate() {
        let seeds = match i {
            0 => "[]".to_owned(),
            _ => format!("[\"127.0.0.1:{}\"]", ports[0]),
        };
        let mut child = serve_command(&work.join(name), &models_dir)
            .env("STING_NODE__NAME", name)
            .env("STING_STORE__DIR", work.join("store"))
            .env("STING_CLUSTER__ENABLED", "true")
            .env("STING_CLUSTER__COOKIE", "bench-cluster-cookie-0123456789")
            .env("STING_CLUSTER__PORT", ports[i].to_string())
            .env("STING_CLUSTER__SEEDS", &seeds)
            .env("STING_MODELS__DEFAULT_CHAT_MODEL", &model)
            .spawn()
            .expect("start sting");
        let base = listen_url(child.stdout.take().unwrap());
        nodes.push(Node { name, base, child });
    }
    nodes
}

fn owner(conversation: &str, members: &[&str]) -> &'static str {
    let set: Vec<NodeId> = members.iter().map(|m| NodeId::new(*m)).collect();
    let key = format!("conversation:{conversation}");
    let owner = placement::owner(key.as_bytes(), &set).unwrap().to_string();
    NAMES.into_iter().find(|n| *n == owner).unwrap()
}

async fn say(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    conversation: Option<&str>,
) -> Value {
    let mut body = json!({"message": "How do bees make honey?",
        "context": {"temperature": 0, "max_tokens": 8}});
    if let Some(id) = conversation {
        body["conversation_id"] = json!(id);
    }
    let reply = client
        .post(format!("{base}/api/chat/message"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    reply.json().await.unwrap()
}

async fn run(rounds: usize) {
    let work = tempfile::tempdir().unwrap();
    let mut nodes = start(work.path()).await;
    let client = reqwest::Client::new();
    // Let membership settle (every node hears every other).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = register(&client, &nodes[0].base, "bench@example.com").await;
    let base_of = |name: &str| nodes.iter().find(|n| n.name == name).unwrap().base.clone();

    let mut conversations = Vec::new();
    for i in 0..CONVERSATIONS {
        let reply = say(&client, &nodes[i % 3].base, &token, None).await;
        let id = reply["conversation_id"].as_str().unwrap().to_owned();
        conversations.push((id.clone(), owner(&id, &NAMES)));
    }
    // Warm-up: every node loads the model and activates its conversations.
    for (id, owner) in &conversations {
        for name in NAMES {
            if name != *owner {
                say(&client, &base_of(name), &token, Some(id)).await;
            }
        }
    }

    let (mut direct, mut routed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (i, (id, owner)) in conversations.iter().enumerate() {
            let other = NAMES[(NAMES.iter().position(|n| n == owner).unwrap() + 1 + i % 2) % 3];
            let order = if round % 2 == 0 {
                [*owner, other]
            } else {
                [other, *owner]
            };
            for via in order {
                let started = Instant::now();
                say(&client, &base_of(via), &token, Some(id)).await;
                let took = started.elapsed();
                if via == *owner {
                    direct.push(took);
                } else {
                    routed.push(took);
                }
            }
        }
    }
    direct.sort();
    routed.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "chat via the owner:     p50 {:.2} ms, p90 {:.2} ms ({} messages)",
        ms(percentile(&direct, 0.5)),
        ms(percentile(&direct, 0.9)),
        direct.len()
    );
    println!(
        "chat via a non-owner:   p50 {:.2} ms, p90 {:.2} ms ({} messages)",
        ms(percentile(&routed, 0.5)),
        ms(percentile(&routed, 0.9)),
        routed.len()
    );
    println!(
        "p50 non-owner / owner:  {:.2}x",
        percentile(&routed, 0.5).as_secs_f64() / percentile(&direct, 0.5).as_secs_f64()
    );

    // kill -9 the busiest owner; message all its conversations through the survivors.
    let victim = NAMES
        .into_iter()
        .max_by_key(|name| conversations.iter().filter(|(_, o)| o == name).count())
        .unwrap();
    let orphans: Vec<&String> = conversations
        .iter()
        .filter(|(_, o)| *o == victim)
        .map(|(id, _)| id)
        .collect();
    let survivors: Vec<String> = NAMES
        .into_iter()
        .filter(|n| *n != victim)
        .map(&base_of)
        .collect();
    let node = nodes.iter_mut().find(|n| n.name == victim).unwrap();
    node.child.kill().unwrap();
    let killed = Instant::now();
    let recoveries = futures::future::join_all(orphans.iter().enumerate().map(|(i, id)| {
        let (client, token, base) = (&client, &token, survivors[i % 2].clone());
        async move {
            say(client, &base, token, Some(id)).await;
            killed.elapsed()
        }
    }))
    .await;
    let mut recoveries = recoveries;
    recoveries.sort();
    println!(
        "kill -9 of {victim} (owner of {} conversations): all answered again within {:.0} ms (p50 {:.0} ms)",
        orphans.len(),
        ms(*recoveries.last().unwrap()),
        ms(percentile(&recoveries, 0.5)),
    );
    for node in &mut nodes {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
}
