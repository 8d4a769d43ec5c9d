//! Model APIs over HTTP with the fixture models.

use reqwest::{Method, StatusCode};

use crate::harness::{onnxruntime_available, TestServer};

#[tokio::test]
async fn models_are_listed_with_their_state() {
    let server = TestServer::start().await;
    let list = server.get("/api/chat/models", None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["default_model"], "fixture-chat");
    assert_eq!(list.body["max_loaded"], 2);
    assert_eq!(list.body["loaded_models"], serde_json::json!([]));
    let models = list.body["models"].as_array().unwrap();
    let chat = models.iter().find(|m| m["name"] == "fixture-chat").unwrap();
    assert_eq!(chat["status"], "available");
    assert_eq!(chat["capabilities"], serde_json::json!(["chat"]));
    assert!(chat["size"].as_str().unwrap().ends_with('B'));
    assert_eq!(chat["last_used"], serde_json::Value::Null);
    let embed = models
        .iter()
        .find(|m| m["name"] == "fixture-embed")
        .unwrap();
    assert_eq!(embed["capabilities"], serde_json::json!(["embeddings"]));

    let status = server.get("/api/chat/models/fixture-chat", None).await;
    assert_eq!(status.body["status"], "available");
    assert_eq!(status.body["inference_count"], 0);
    server
        .get("/api/chat/models/no-such-model", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn loading_is_for_admins() {
    let server = TestServer::start().await;
    let (user, _) = server.register("modeluser@example.com").await;
    for action in ["load", "unload"] {
        let path = format!("/api/chat/models/fixture-chat/{action}");
        server
            .call(Method::POST, &path, Some(&user), None)
            .await
            .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
        server
            .call(Method::POST, &path, None, None)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    }
}

#[tokio::test]
async fn admin_loads_and_unloads_a_model() {
    if !onnxruntime_available("admin_loads_and_unloads_a_model") {
        return;
    }
    let server = TestServer::start().await;
    let admin = server.admin_token("models@example.com").await;
    let loaded = server
        .call(
            Method::POST,
            "/api/chat/models/fixture-chat/load",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(loaded.status, StatusCode::OK, "{}", loaded.body);
    assert_eq!(loaded.body["status"], "loaded");
    assert_eq!(loaded.body["hardware"], "cpu");
    assert!(loaded.body["load_time"].as_str().unwrap().ends_with('s'));
    assert!(loaded.body["memory_usage"].is_string());
    assert!(loaded.body["last_used"].is_string());

    let list = server.get("/api/chat/models", None).await;
    assert_eq!(
        list.body["loaded_models"],
        serde_json::json!(["fixture-chat"])
    );

    let unloaded = server
        .call(
            Method::POST,
            "/api/chat/models/fixture-chat/unload",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unloaded.body["status"], "available");
    server
        .call(
            Method::POST,
            "/api/chat/models/nope/load",
            Some(&admin),
            None,
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn a_missing_runtime_is_a_clear_503() {
    let server = crate::harness::ServerOptions::new()
        .env(
            "STING_MODELS__ONNXRUNTIME_LIBRARY",
            "/nonexistent/libonnxruntime.so",
        )
        .start()
        .await;
    let admin = server.admin_token("noruntime@example.com").await;
    let reply = server
        .call(
            Method::POST,
            "/api/chat/models/fixture-chat/load",
            Some(&admin),
            None,
        )
        .await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "MODEL_UNAVAILABLE");
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sting models prepare"));
    assert!(reply.header("retry-after").is_some());
}
