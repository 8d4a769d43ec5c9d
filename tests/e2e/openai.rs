//! The OpenAI-compatible API with the fixture models.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::{onnxruntime_available, TestServer};

fn question(stream: bool) -> Value {
    json!({
        "model": "fixture-chat",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 12,
        "stream": stream,
    })
}

#[tokio::test]
async fn completions_whole_and_streamed_agree() {
    if !onnxruntime_available("completions_whole_and_streamed_agree") {
        return;
    }
    let server = TestServer::start().await;
    let (token, _) = server.register("openai@example.com").await;

    let whole = server
        .post("/v1/chat/completions", Some(&token), question(false))
        .await;
    assert_eq!(whole.status, StatusCode::OK, "{}", whole.body);
    assert_eq!(whole.body["object"], "chat.completion");
    assert_eq!(whole.body["model"], "fixture-chat");
    let choice = &whole.body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_owned();
    let usage = &whole.body["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 12
    );

    let streamed = server
        .client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&question(true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = streamed.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let mut joined = String::new();
    let mut finish = Value::Null;
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let choice = &chunk["choices"][0];
        if let Some(piece) = choice["delta"]["content"].as_str() {
            joined.push_str(piece);
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    assert_eq!(
        joined, content,
        "the stream concatenates to the whole answer"
    );
    assert_eq!(finish, "length");
}

#[tokio::test]
async fn models_and_embeddings() {
    if !onnxruntime_available("models_and_embeddings") {
        return;
    }
    let server = TestServer::start().await;
    let (token, _) = server.register("embed@example.com").await;
    let models = server.get("/v1/models", Some(&token)).await;
    assert_eq!(models.body["object"], "list");
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"fixture-chat") && ids.contains(&"fixture-embed"),
        "{ids:?}"
    );

    let reply = server
        .post(
            "/v1/embeddings",
            Some(&token),
            json!({"input": ["bees make honey", "the hive"], "model": "fixture-embed"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let data = reply.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (index, item) in data.iter().enumerate() {
        assert_eq!(item["index"], index);
        let vector: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(vector.len(), 32);
        let norm = vector.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(reply.body["usage"]["prompt_tokens"].as_u64().unwrap() >= 6);
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let server = TestServer::start().await;
    let unauthenticated = server
        .post("/v1/chat/completions", None, question(false))
        .await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthenticated.body["error"]["type"],
        "authentication_error"
    );
    assert!(unauthenticated.body["error"]["message"].is_string());

    let (token, _) = server.register("shape@example.com").await;
    let unknown = server
        .post(
            "/v1/chat/completions",
            Some(&token),
            json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "resource_not_found");

    let bad_role = server
        .post(
            "/v1/chat/completions",
            Some(&token),
            json!({"model": "fixture-chat", "messages": [{"role": "wizard", "content": "hi"}]}),
        )
        .await;
    assert_eq!(bad_role.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_role.body["error"]["type"], "invalid_request_error");

    // Embedding requests are capped before the shared model sees them.
    for (input, param) in [
        (json!(vec!["bee"; 257]), "input"),
        (json!(["bee", "b".repeat(16_385)]), "input[1]"),
    ] {
        let refused = server
            .post("/v1/embeddings", Some(&token), json!({"input": input}))
            .await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            refused.body
        );
        assert_eq!(refused.body["error"]["param"], param, "{}", refused.body);
    }
    assert_eq!(bad_role.body["error"]["param"], "messages[0].role");

    let missing = server
        .post("/v1/chat/completions", Some(&token), json!({}))
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.body["error"]["param"], "messages");

    let route = server.get("/v1/nothing", Some(&token)).await;
    assert_eq!(route.status, StatusCode::NOT_FOUND);
    assert!(route.body["error"]["type"].is_string(), "{}", route.body);
}

/// The official `openai` Python package against the server (needs `STING_OPENAI_PYTHON`, a
/// Python with `openai` installed; CI provides one).
#[tokio::test]
async fn the_official_openai_client_works() {
    let python = match std::env::var("STING_OPENAI_PYTHON") {
        Ok(python) if !python.is_empty() => python,
        _ => {
            assert!(
                std::env::var("STING_REQUIRE_ORT").map_or(true, |v| v != "1"),
                "CI must set STING_OPENAI_PYTHON"
            );
            eprintln!("SKIP the_official_openai_client_works: set STING_OPENAI_PYTHON");
            return;
        }
    };
    if !onnxruntime_available("the_official_openai_client_works") {
        return;
    }
    let server = TestServer::start().await;
    let (token, _) = server.register("client@example.com").await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/scripts/openai_client.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&server.base)
        .arg(&token)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
