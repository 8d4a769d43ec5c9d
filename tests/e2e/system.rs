//! System endpoints, metrics, OpenAPI coverage, and restarts on the same data dir.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ServerOptions, TestServer};

#[tokio::test]
async fn health_reports_real_checks() {
    let server = TestServer::start().await;
    let health = server.get("/api/system/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["services"]["database"], "healthy");
    assert_eq!(health.body["services"]["authentication"], "healthy");
    assert_eq!(health.body["services"]["chat"], "healthy");
    // Models are generation's precondition: without the runtime the node is degraded.
    let expected = if crate::harness::onnxruntime_available("health_reports_real_checks") {
        "healthy"
    } else {
        "degraded"
    };
    assert_eq!(health.body["services"]["llm_service"], expected);
    assert_eq!(health.body["status"], expected);
    assert_eq!(health.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(health.body["uptime"].is_u64());
}

#[tokio::test]
async fn admins_see_status_and_metrics() {
    let server = TestServer::start().await;
    let admin = server.admin_token("ops@example.com").await;
    server.get("/api/does-not-exist", None).await;

    let status = server.get("/api/system/status", Some(&admin)).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["services"]["database"]["status"], "healthy");
    assert_eq!(
        status.body["services"]["database"]["details"]["backend"],
        "sqlite"
    );
    assert!(
        status.body["services"]["authentication"]["details"]["active_session_actors"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );

    let metrics = server.get("/api/system/metrics", Some(&admin)).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.body);
    let requests = &metrics.body["requests"];
    assert!(requests["total_today"].as_u64().unwrap() >= 3);
    assert!(requests["average_response_time"].as_f64().unwrap() > 0.0);
    assert!(requests["error_rate"].as_f64().is_some());
    let models = &metrics.body["models"];
    assert_eq!(models["total_inferences"], 0);
    assert_eq!(models["active_models"], serde_json::json!([]));
    for field in ["cpu_usage", "memory_usage", "disk_usage"] {
        let value = metrics.body["performance"][field].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&value), "{field} = {value}");
    }

    let prometheus = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(prometheus.status(), StatusCode::OK);
    let text = prometheus.text().await.unwrap();
    assert!(
        text.contains(
            "sting_http_requests_total{method=\"GET\",category=\"general\",status=\"404\"}"
        ),
        "{text}"
    );
    assert!(text.contains("sting_store_up 1"), "{text}");
    assert!(
        text.contains("sting_model_loaded{model=\"fixture-chat\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn restart_keeps_users_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerOptions::new().start_in(dir.path()).await;
    let (token, user_id) = server.register("persist@example.com").await;
    let status = server.stop();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    assert!(server.log().contains("store flushed"));

    let server = ServerOptions::new().start_in(dir.path()).await;
    let session = server.get("/api/auth/session", Some(&token)).await;
    assert_eq!(session.body["authenticated"], true, "{}", session.body);
    assert_eq!(session.body["user"]["id"], user_id.as_str());
    assert_eq!(
        server
            .login("persist@example.com", "correct horse battery")
            .await
            .status,
        StatusCode::OK
    );
}

/// Every operation in the OpenAPI document is routed: calling it never yields the router's
/// own 404/405. (Handlers and their annotations live side by side; this catches a route
/// documented but not wired, or wired under another path or method.)
#[tokio::test]
async fn every_documented_operation_is_served() {
    let server = TestServer::start().await;
    let admin = server.admin_token("doc@example.com").await;
    let spec = server.get("/api/openapi.json", None).await;
    assert_eq!(spec.status, StatusCode::OK);
    let paths = spec.body["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    let placeholder = uuid::Uuid::new_v4().to_string();
    let mut checked = 0;
    for (path, operations) in paths {
        let concrete = substitute_params(path, &placeholder);
        for method in operations.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let body = matches!(method, Method::POST | Method::PUT).then(|| json!({}));
            let reply = server
                .call(method.clone(), &concrete, Some(&admin), body)
                .await;
            let code = &reply.body["error"]["code"];
            assert!(
                code != "ROUTE_NOT_FOUND" && code != "METHOD_NOT_ALLOWED",
                "{method} {path} is documented but not served: {}",
                reply.body
            );
            checked += 1;
        }
    }
    assert!(checked >= 13);
}

fn substitute_params(path: &str, value: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                value.to_owned()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn prometheus_text_is_not_behind_login() {
    let server = TestServer::start().await;
    let reply = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let content_type = reply.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"));
}

#[tokio::test]
async fn what_the_node_writes_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ServerOptions::new().tls().start_in(&data).await;
    let (token, _) = server.register("private@example.com").await;
    let jar = server
        .post(
            "/api/knowledge/honey-pots",
            Some(&token),
            json!({"name": "Mine", "settings": {"encryption_enabled": true}}),
        )
        .await;
    assert_eq!(jar.status, StatusCode::CREATED, "{}", jar.body);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"# Notes\n\nPrivate words.".to_vec())
            .file_name("notes.md"),
    );
    let path = format!(
        "/api/knowledge/honey-pots/{}/documents",
        jar.body["id"].as_str().unwrap()
    );
    assert_eq!(
        server.multipart(&path, &token, form).await.status,
        StatusCode::ACCEPTED
    );

    // Everything under the data dir but what the test harness put there itself.
    let mut pending = vec![data.clone()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path != data && (name == "models" || name == "sting.log") {
            continue;
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        seen += 1;
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    for expected in ["sting.db", "tls", "blobs"] {
        assert!(data.join(expected).exists(), "{expected} was written");
    }
    assert!(seen > 5, "{seen}");
}
