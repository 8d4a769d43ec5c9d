//! The chat WebSocket (`/api/chat/ws`) with the fixture chat model.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::chat::chat_server;
use crate::harness::{onnxruntime_available, TestServer};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A test client on one socket.
struct Socket {
    stream: Stream,
}

impl Socket {
    /// Connects, authenticated by the bearer header when a token is given.
    async fn connect(server: &TestServer, token: Option<&str>) -> Socket {
        let url = server.url("/api/chat/ws").replacen("http", "ws", 1);
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        Socket { stream }
    }

    async fn send(&mut self, frame: Value) {
        self.send_raw(Message::text(frame.to_string())).await;
    }

    async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next JSON frame (pings and pongs skipped); `None` once the socket closed.
    async fn next(&mut self) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("a frame within the timeout");
            match frame? {
                Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.next().await.expect("socket open");
        assert_eq!(frame["type"], kind, "{frame}");
        frame
    }

    /// Sends a message and collects its turn: (chunks joined, the completion frame).
    async fn turn(&mut self, data: Value) -> (String, Value) {
        self.send(json!({"type": "message", "data": data})).await;
        let mut text = String::new();
        loop {
            let frame = self.next().await.expect("socket open");
            match frame["type"].as_str().unwrap() {
                "message_received" => {}
                "response_chunk" => text.push_str(frame["chunk"].as_str().unwrap()),
                "response_complete" => return (text, frame),
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }
}

fn message(text: &str, max_tokens: u32) -> Value {
    json!({"message": text, "context": {"temperature": 0, "max_tokens": max_tokens}})
}

async fn stored_answer(
    server: &TestServer,
    token: &str,
    conversation: &Value,
    id: &Value,
) -> Value {
    let history = server
        .get(
            &format!("/api/chat/conversations/{}", conversation.as_str().unwrap()),
            Some(token),
        )
        .await;
    history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| &m["id"] == id)
        .cloned()
        .expect("the answer is stored")
}

#[tokio::test]
async fn streamed_chunks_make_the_stored_answer() {
    if !onnxruntime_available("streamed_chunks_make_the_stored_answer") {
        return;
    }
    let server = chat_server().start().await;
    let (token, user_id) = server.register("stream@example.com").await;
    let mut socket = Socket::connect(&server, Some(&token)).await;
    let (text, done) = socket.turn(message("Hello over the socket", 16)).await;
    assert_eq!(done["response"], text);
    assert_eq!(done["metadata"]["status"], "complete");
    let generated = done["metadata"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=16).contains(&generated), "{done}");
    assert!(done["request_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("turn_")));
    let stored = stored_answer(
        &server,
        &token,
        &done["conversation_id"],
        &done["message_id"],
    )
    .await;
    assert_eq!(stored["content"], text);

    // A second turn on the same conversation, with a client-chosen request id.
    let mut data = message("And again", 8);
    data["conversation_id"] = done["conversation_id"].clone();
    data["request_id"] = json!("my-turn-2");
    socket.send(json!({"type": "message", "data": data})).await;
    let received = socket.expect("message_received").await;
    assert_eq!(received["request_id"], "my-turn-2");
    assert_eq!(received["conversation_id"], done["conversation_id"]);

    // Authentication by a first `auth` frame works too; a socket without one can only ping.
    let mut late = Socket::connect(&server, None).await;
    late.send(json!({"type": "message", "data": message("hi", 4)}))
        .await;
    let refused = late.expect("error").await;
    assert_eq!(refused["error"]["code"], "AUTHENTICATION_REQUIRED");
    late.send(json!({"type": "auth", "token": "wrong"})).await;
    assert_eq!(
        late.expect("error").await["error"]["code"],
        "AUTHENTICATION_REQUIRED"
    );
    late.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(late.expect("authenticated").await["user_id"], user_id);
    let (text, done) = late.turn(message("hi", 4)).await;
    assert_eq!(done["response"], text);
}

#[tokio::test]
async fn cancel_stops_the_answer_and_keeps_the_partial_text() {
    if !onnxruntime_available("cancel_stops_the_answer_and_keeps_the_partial_text") {
        return;
    }
    let server = chat_server().start().await;
    let (token, _) = server.register("cancel@example.com").await;
    let mut socket = Socket::connect(&server, Some(&token)).await;
    socket
        .send(json!({"type": "message", "data": message("Tell me a long story", 180)}))
        .await;
    let received = socket.expect("message_received").await;
    let mut text = socket.expect("response_chunk").await["chunk"]
        .as_str()
        .unwrap()
        .to_owned();
    socket.send(json!({"type": "cancel"})).await;
    let done = loop {
        let frame = socket.next().await.expect("socket open");
        match frame["type"].as_str().unwrap() {
            "response_chunk" => text.push_str(frame["chunk"].as_str().unwrap()),
            "response_complete" => break frame,
            _ => panic!("unexpected frame {frame}"),
        }
    };
    assert_eq!(done["metadata"]["status"], "cancelled", "{done}");
    assert_eq!(done["response"], text);
    assert!(text.chars().count() < 180);
    let stored = stored_answer(
        &server,
        &token,
        &received["conversation_id"],
        &done["message_id"],
    )
    .await;
    assert_eq!(stored["status"], "cancelled");
    assert_eq!(stored["content"], text);

    // The socket goes on serving.
    let mut data = message("Shorter then", 4);
    data["conversation_id"] = received["conversation_id"].clone();
    let (_, done) = socket.turn(data).await;
    assert_eq!(done["metadata"]["status"], "complete");
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_survives() {
    if !onnxruntime_available("bad_frames_get_error_frames_and_the_socket_survives") {
        return;
    }
    let server = chat_server().start().await;
    let (token, _) = server.register("frames@example.com").await;
    let mut socket = Socket::connect(&server, Some(&token)).await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("not json"), "INVALID_REQUEST", None),
        (
            Message::text(r#"{"type":"dance"}"#),
            "VALIDATION_ERROR",
            None,
        ),
        (
            Message::text(r#"{"type":"message","data":{}}"#),
            "VALIDATION_ERROR",
            Some("data.message"),
        ),
        (
            Message::text(r#"{"type":"message","data":{"message":"  "}}"#),
            "VALIDATION_ERROR",
            Some("message"),
        ),
        (
            Message::text(r#"{"type":"subscribe","channel":"gossip"}"#),
            "VALIDATION_ERROR",
            Some("channel"),
        ),
        (
            Message::text(r#"{"type":"cancel","request_id":"nothing-running"}"#),
            "RESOURCE_NOT_FOUND",
            None,
        ),
        (Message::binary(vec![1, 2, 3]), "INVALID_REQUEST", None),
    ];
    for (frame, code, field) in cases {
        socket.send_raw(frame).await;
        let error = socket.expect("error").await;
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(error["error"]["timestamp"].is_string() && error["error"]["message"].is_string());
        if let Some(field) = field {
            assert_eq!(error["error"]["details"]["field"], field, "{error}");
        }
    }
    socket.send(json!({"type": "ping"})).await;
    socket.expect("pong").await;
    let (text, done) = socket.turn(message("still here?", 4)).await;
    assert_eq!(done["response"], text);
}

#[tokio::test]
async fn fifty_concurrent_socket_chats_stay_apart() {
    if !onnxruntime_available("fifty_concurrent_socket_chats_stay_apart") {
        return;
    }
    let server = chat_server().start().await;
    let mut users = Vec::new();
    for n in 0..10 {
        users.push(server.register(&format!("crowd{n}@example.com")).await.0);
    }
    let chats = (0..50).map(|n| {
        let token = users[n % users.len()].clone();
        let server = &server;
        async move {
            let mut socket = Socket::connect(server, Some(&token)).await;
            let text = format!("Chat number {n} asks about hive {n}");
            let (answer, done) = socket.turn(message(&text, 8 + (n % 5) as u32)).await;
            (token, text, answer, done)
        }
    });
    let results = futures::future::join_all(chats).await;
    for (token, text, answer, done) in results {
        assert_eq!(done["response"], answer);
        let history = server
            .get(
                &format!(
                    "/api/chat/conversations/{}",
                    done["conversation_id"].as_str().unwrap()
                ),
                Some(&token),
            )
            .await;
        let messages = history.body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{}", history.body);
        assert_eq!(messages[0]["content"], text.as_str());
        assert_eq!(messages[1]["content"], answer.as_str());
        assert_eq!(messages[1]["id"], done["message_id"]);
    }
    for token in &users {
        let list = server.get("/api/chat/conversations", Some(token)).await;
        assert_eq!(list.body["total"], 5);
    }
}

#[tokio::test]
async fn model_status_events_and_chat_rate_limit() {
    if !onnxruntime_available("model_status_events_and_chat_rate_limit") {
        return;
    }
    let server = chat_server()
        .env("STING_RATE_LIMITS__CHAT__REQUESTS", "5")
        .start()
        .await;
    let admin = server.admin_token("wsadmin@example.com").await;
    let mut socket = Socket::connect(&server, Some(&admin)).await;
    socket
        .send(json!({"type": "subscribe", "channel": "model_status"}))
        .await;
    socket.expect("subscribed").await;
    let load = server
        .call(
            reqwest::Method::POST,
            "/api/chat/models/fixture-embed/load",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(load.status, StatusCode::OK, "{}", load.body);
    let loaded = socket.expect("model_loaded").await;
    assert_eq!(loaded["model"], "fixture-embed");
    assert!(loaded["load_time"].as_f64().is_some());
    server
        .call(
            reqwest::Method::POST,
            "/api/chat/models/fixture-embed/unload",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        socket.expect("model_unloaded").await["model"],
        "fixture-embed"
    );
    socket
        .send(json!({"type": "unsubscribe", "channel": "model_status"}))
        .await;
    socket.expect("unsubscribed").await;

    // The upgrade, the load and the unload were chat requests (3 of 5): two messages pass and
    // the third is limited.
    for _ in 0..2 {
        socket.turn(message("hi", 2)).await;
    }
    socket
        .send(json!({"type": "message", "data": message("one too many", 2)}))
        .await;
    let limited = socket.expect("error").await;
    assert_eq!(limited["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert!(limited["error"]["details"]["retry_after_secs"]
        .as_u64()
        .is_some());
}
