//! Load on the chat WebSocket: time to first token and tokens/s with 1 and 16 concurrent chats,
//! against a real `sting serve` process (release build) on a real model.
//!
//! ```sh
//! sting models prepare --data-dir data          # once: SmolLM2 and the ONNX Runtime library
//! STING_BENCH_DATA_DIR=data cargo bench --bench chat_load
//! ```
//!
//! Each round opens one WebSocket per chat, sends one message per socket at once (a new
//! conversation each, greedy, `STING_BENCH_TOKENS` answer tokens, default 64) and measures, per
//! chat, the time from sending the frame to the first `response_chunk` (TTFT, so it includes
//! storing the user's message and admission into the model's batch) and, per round, the
//! generated tokens over the round's wall time. Prints p50/p99 TTFT over all chats of all
//! rounds (`STING_BENCH_ROUNDS`, default 3, alternating the concurrencies), median aggregate
//! tokens/s, and the 16-vs-1 throughput ratio measured in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::{listen_url, percentile, register, serve_command};

const CONCURRENCIES: [usize; 2] = [1, 16];
const PROMPT: &str = "Write a short paragraph about how honey bees make honey.";

fn main() {
    let Some(data_dir) = std::env::var_os("STING_BENCH_DATA_DIR").map(PathBuf::from) else {
        eprintln!("SKIP chat_load bench: set STING_BENCH_DATA_DIR to a data dir prepared by `sting models prepare`");
        return;
    };
    let rounds = env_number("STING_BENCH_ROUNDS", 3);
    let tokens = env_number("STING_BENCH_TOKENS", 64);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(data_dir, rounds, tokens));
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One chat's measurements.
struct Chat {
    ttft: Duration,
    tokens: u64,
}

async fn run(data_dir: PathBuf, rounds: usize, tokens: usize) {
    let work = tempfile::tempdir().unwrap();
    let mut server = serve_command(work.path(), &data_dir.join("models"))
        .env(
            "STING_MODELS__ONNXRUNTIME_LIBRARY",
            data_dir.join("runtime/libonnxruntime.so.1.31.1"),
        )
        .spawn()
        .expect("start sting");
    let base = listen_url(server.stdout.take().unwrap());
    let client = reqwest::Client::new();
    let token = register(&client, &base, "load@example.com").await;
    let ws_url = format!("{}/api/chat/ws", base.replacen("http", "ws", 1));

    // Warm-up: loads the model.
    round(&ws_url, &token, 1, tokens).await;
    let mut ttfts: Vec<Vec<Duration>> = vec![Vec::new(); CONCURRENCIES.len()];
    let mut throughputs: Vec<Vec<f64>> = vec![Vec::new(); CONCURRENCIES.len()];
    for r in 0..rounds {
        for (i, &concurrency) in CONCURRENCIES.iter().enumerate() {
            let started = Instant::now();
            let chats = round(&ws_url, &token, concurrency, tokens).await;
            let wall = started.elapsed().as_secs_f64();
            let generated: u64 = chats.iter().map(|c| c.tokens).sum();
            throughputs[i].push(generated as f64 / wall);
            ttfts[i].extend(chats.iter().map(|c| c.ttft));
            println!(
                "round {r} concurrency {concurrency:>2}: {generated} tokens in {wall:.2} s = {:.1} tok/s",
                generated as f64 / wall
            );
        }
    }
    let mut medians = Vec::new();
    for (i, &concurrency) in CONCURRENCIES.iter().enumerate() {
        let ttft = &mut ttfts[i];
        ttft.sort();
        let median = median(&mut throughputs[i]);
        medians.push(median);
        println!(
            "{concurrency:>2} concurrent chats: TTFT p50 {:.0} ms, p99 {:.0} ms ({} chats); {median:.1} tok/s aggregate, {:.1} tok/s per chat",
            percentile(ttft, 0.50).as_secs_f64() * 1e3,
            percentile(ttft, 0.99).as_secs_f64() * 1e3,
            ttft.len(),
            median / concurrency as f64,
        );
    }
    println!(
        "throughput 16 vs 1 concurrent chats: {:.2}x",
        medians[1] / medians[0]
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// `concurrency` chats at once, one socket and one new conversation each.
async fn round(url: &str, token: &str, concurrency: usize, tokens: usize) -> Vec<Chat> {
    let chats = (0..concurrency).map(|_| chat(url, token, tokens));
    futures::future::join_all(chats).await
}

async fn chat(url: &str, token: &str, tokens: usize) -> Chat {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let frame = json!({"type": "message", "data": {
        "message": PROMPT, "context": {"temperature": 0, "max_tokens": tokens}}});
    let sent = Instant::now();
    socket.send(Message::text(frame.to_string())).await.unwrap();
    let mut ttft = None;
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("response_chunk") => {
                ttft.get_or_insert_with(|| sent.elapsed());
            }
            Some("response_complete") => {
                return Chat {
                    ttft: ttft.unwrap_or_else(|| sent.elapsed()),
                    tokens: frame["metadata"]["completion_tokens"].as_u64().unwrap(),
                };
            }
            Some("error") => panic!("chat failed: {frame}"),
            _ => {}
        }
    }
    panic!("socket closed before the answer completed");
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
