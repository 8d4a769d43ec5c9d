//! Edge conventions: the error envelope for every failure, request ids, body limits, TLS.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ServerOptions, TestServer};

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let server = TestServer::start().await;
    let reply = server
        .client
        .post(server.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let request_id = reply.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    assert!(request_id.starts_with("req_"));
}

#[tokio::test]
async fn missing_field_names_the_field() {
    let server = TestServer::start().await;
    let reply = server
        .post("/api/auth/login", None, json!({"password": "x"}))
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    assert_eq!(reply.body["error"]["details"]["field"], "email");
    assert_eq!(
        reply.body["error"]["details"]["reason"],
        "missing field `email`"
    );
}

#[tokio::test]
async fn oversize_bodies_are_refused_with_and_without_length() {
    let server = ServerOptions::new()
        .env("STING_LIMITS__MAX_BODY_BYTES", "1024")
        .start()
        .await;
    let big = json!({"email": "a@example.com", "password": "x".repeat(2048)});
    let declared = server.post("/api/auth/login", None, big.clone()).await;
    declared.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    assert_eq!(declared.body["error"]["details"]["limit_bytes"], 1024);

    // Chunked: no Content-Length, the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(big.to_string().into_bytes()[..1000].to_vec()),
        Ok(vec![b' '; 1000]),
    ];
    let streamed = server
        .client
        .post(server.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = streamed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");

    // Under the limit still works.
    let small = server
        .post(
            "/api/auth/login",
            None,
            json!({"email": "a@example.com", "password": "pw"}),
        )
        .await;
    small.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_envelope() {
    let server = TestServer::start().await;
    server
        .get("/api/no/such/route", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND");
    server
        .get("/nothing-here", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND");
    let wrong_method = server
        .call(Method::DELETE, "/api/auth/login", None, None)
        .await;
    wrong_method.assert_error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    // Saying which methods are: those the OpenAPI document lists for the path.
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let on_a_template = server
        .call(
            Method::PATCH,
            &format!("/api/admin/users/{}", uuid::Uuid::new_v4()),
            None,
            None,
        )
        .await;
    assert_eq!(on_a_template.header("allow"), Some("GET, HEAD, PUT"));
    server
        .get("/api/admin/users/not-a-uuid", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn protected_routes_need_a_valid_session() {
    let server = TestServer::start().await;
    for token in [None, Some("forged-token")] {
        server
            .get("/api/admin/users", token)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
        server
            .call(Method::POST, "/api/auth/logout", token, None)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    }
}

#[tokio::test]
async fn every_response_has_a_request_id_and_rate_headers() {
    let server = TestServer::start().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let reply = server.get("/api/auth/session", None).await;
        ids.insert(reply.header("x-request-id").unwrap().to_owned());
        for header in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(reply.header(header).is_some(), "{header} missing");
        }
    }
    assert_eq!(ids.len(), 3, "request ids are unique");
}

#[tokio::test]
async fn https_with_a_generated_certificate_that_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerOptions::new().tls().start_in(dir.path()).await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let health = server.get("/api/system/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    let cert_path = dir.path().join("tls/cert.pem");
    let cert = std::fs::read(&cert_path).expect("certificate kept in the data dir");
    assert!(server.stop().success());

    let server = ServerOptions::new().tls().start_in(dir.path()).await;
    assert_eq!(
        server.get("/api/system/health", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert,
        "same certificate after restart"
    );
}

#[tokio::test]
async fn cli_help_explains_itself() {
    let output = std::process::Command::new(crate::harness::sting_binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in ["--data-dir", "--port", "--no-tls", "STING_CONFIG", "5050"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[tokio::test]
async fn health_probes_are_never_limited() {
    let server = ServerOptions::new()
        .env("STING_RATE_LIMITS__GENERAL__REQUESTS", "2")
        .start()
        .await;
    for path in ["/api/system/health", "/api/system/health/", "/metrics"] {
        for _ in 0..5 {
            let reply = server.get(path, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
            assert_eq!(reply.header("x-ratelimit-limit"), None, "{path}");
        }
    }
}

#[tokio::test]
async fn no_spelling_of_a_path_escapes_its_bucket() {
    let server = ServerOptions::new()
        .env("STING_RATE_LIMITS__SEARCH__REQUESTS", "2")
        .env("STING_RATE_LIMITS__CHAT__REQUESTS", "3")
        .start()
        .await;
    let (token, _) = server.register("spelling@example.com").await;
    for (path, limit) in [
        ("/api/knowledge/search", "2"),
        ("/api/knowledge/search/", "2"),
        ("//api//knowledge//search", "2"),
        ("/v1/chat/completions/", "3"),
        ("/api/chat/message/", "3"),
    ] {
        let reply = server
            .post(path, Some(&token), json!({"query": "x", "message": "x"}))
            .await;
        assert_eq!(reply.header("x-ratelimit-limit"), Some(limit), "{path}");
    }
    // Three searches so far, whatever their spelling: the bucket of 2 is spent.
    let reply = server
        .post(
            "/api/knowledge/search/",
            Some(&token),
            json!({"query": "x"}),
        )
        .await;
    reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED");
}

/// The host:port of a plain-HTTP test server.
fn authority(server: &TestServer) -> String {
    server
        .base
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1")
}

#[tokio::test]
async fn a_body_trickled_in_gets_408_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = ServerOptions::new()
        .env("STING_SERVER__BODY_IDLE_TIMEOUT_SECS", "1")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(authority(&server))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the node waited on the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    use tokio::io::AsyncReadExt;
    let server = ServerOptions::new()
        .env("STING_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "3")
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(authority(&server))
                .await
                .unwrap(),
        );
    }
    // The fourth is closed at once: reading it ends (or resets) without an answer.
    let mut fourth = tokio::net::TcpStream::connect(authority(&server))
        .await
        .unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), fourth.read(&mut buffer))
        .await
        .expect("closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once one is given back, the address is served again.
    held.pop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let reply = server.get("/api/system/health", None).await;
    assert_eq!(reply.status, StatusCode::OK);
}
