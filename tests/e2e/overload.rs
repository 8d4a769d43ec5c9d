//! Floods of chat, search and upload: refused with 429 or 503 and `Retry-After` beyond what the
//! node admits, its memory bounded meanwhile, and normal service right after.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{onnxruntime_available, ServerOptions, TestServer};
use crate::knowledge::{create_jar, english, settled, upload};

/// The statuses of `replies`, counted, with every refusal checked for `Retry-After`.
fn tally(replies: &[crate::harness::Reply]) -> (usize, usize) {
    let mut served = 0;
    let mut refused = 0;
    for reply in replies {
        match reply.status {
            StatusCode::OK | StatusCode::ACCEPTED | StatusCode::CREATED => served += 1,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                let retry: u64 = reply
                    .header("retry-after")
                    .unwrap_or_else(|| panic!("no Retry-After: {}", reply.body))
                    .parse()
                    .unwrap();
                assert!(retry >= 1, "{}", reply.body);
                refused += 1;
            }
            other => panic!("{other}: {}", reply.body),
        }
    }
    (served, refused)
}

#[tokio::test]
async fn floods_are_refused_with_retry_after_and_the_node_recovers() {
    if !onnxruntime_available("floods_are_refused_with_retry_after_and_the_node_recovers") {
        return;
    }
    let server: TestServer = ServerOptions::new()
        .env("STING_MODELS__QUEUE_DEPTH", "2")
        .env("STING_MODELS__MAX_BATCH", "2")
        .env("STING_KNOWLEDGE__INGESTION_CONCURRENCY", "1")
        .env("STING_KNOWLEDGE__INGESTION_QUEUE_DEPTH", "2")
        .env("STING_RATE_LIMITS__UPLOAD__REQUESTS", "1000")
        .env("STING_RATE_LIMITS__CHAT__REQUESTS", "1000")
        .env("STING_RATE_LIMITS__SEARCH__REQUESTS", "20")
        .start()
        .await;
    let (token, _) = server.register("flood@example.com").await;
    let jar = create_jar(&server, &token, json!({"name": "Flood"})).await;
    let before = server.resident_bytes();

    // Chat: 40 at once against a batch of 2 and a queue of 2.
    let chats = join_all((0..40).map(|i| {
        server.post(
            "/api/chat/message",
            Some(&token),
            json!({"message": format!("question {i}"), "context": {"max_tokens": 32}}),
        )
    }))
    .await;
    let (served, refused) = tally(&chats);
    assert!(
        served >= 2 && refused > 0,
        "chat: {served} served, {refused} refused"
    );

    // Search: 60 at once against a bucket of 20 (and the embedding model's queue of 2).
    let searches = join_all((0..60).map(|_| {
        server.post(
            "/api/knowledge/search",
            Some(&token),
            json!({"query": "bees"}),
        )
    }))
    .await;
    let (served, refused) = tally(&searches);
    // At most the bucket; fewer when the shared embedding model's queue is full too.
    assert!(
        (1..=20).contains(&served) && served + refused == 60,
        "search: {served} served, {refused} refused"
    );

    // Uploads: 30 at once against one running and two waiting.
    let long = (0..400)
        .map(|i| format!("Paragraph {i}: {}\n\n", english("the flood")))
        .collect::<String>();
    let uploads = join_all((0..30).map(|i| {
        let bytes = long.clone().into_bytes();
        let (server, token, jar) = (&server, &token, &jar);
        async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(format!("flood-{i}.txt")),
            );
            server
                .multipart(
                    &format!("/api/knowledge/honey-pots/{jar}/documents"),
                    token,
                    form,
                )
                .await
        }
    }))
    .await;
    let (served, refused) = tally(&uploads);
    assert!(
        served >= 3 && refused > 0,
        "upload: {served} served, {refused} refused"
    );
    let during = server.resident_bytes();
    assert!(
        during < before + (512 << 20),
        "memory grew from {before} to {during} bytes under the flood"
    );

    // Afterwards: what was admitted finishes, and the node serves as before.
    for reply in uploads.iter().filter(|r| r.status == StatusCode::ACCEPTED) {
        let done = settled(&server, &token, reply.body["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "processed", "{done}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = server
        .post(
            "/api/chat/message",
            Some(&token),
            json!({"message": "and now?", "context": {"max_tokens": 8}}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let (_, body) = upload(
        &server,
        &token,
        &jar,
        "after.md",
        b"# After\n\nCalm again.".to_vec(),
        None,
    )
    .await;
    let after = settled(&server, &token, body["id"].as_str().unwrap()).await;
    assert_eq!(after["status"], "processed", "{after}");
    assert_eq!(
        server.get("/api/system/health", None).await.status,
        StatusCode::OK
    );
}
