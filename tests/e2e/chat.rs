//! Chatting with Bee over REST with the fixture chat model: persistence across restarts,
//! listings, exact token usage, pruning, and isolation between users.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{fixture_models, onnxruntime_available, ServerOptions, TestServer};

/// A short system prompt: the fixture model's context is 256 tokens (about one per byte).
pub const SYSTEM_PROMPT: &str = "You are Bee.";

pub fn chat_server() -> ServerOptions {
    ServerOptions::new()
        .env("STING_CHAT__SYSTEM_PROMPT", SYSTEM_PROMPT)
        .env("STING_CHAT__KEEP_RECENT_MESSAGES", "2")
        .env("STING_RATE_LIMITS__CHAT__REQUESTS", "10000")
}

/// Sends one message (greedy, short answers) and returns the reply body.
pub async fn say(
    server: &TestServer,
    token: &str,
    conversation: Option<&str>,
    text: &str,
) -> Value {
    let mut body = json!({"message": text, "context": {"temperature": 0, "max_tokens": 12}});
    if let Some(id) = conversation {
        body["conversation_id"] = json!(id);
    }
    let reply = server.post("/api/chat/message", Some(token), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

fn id_of(reply: &Value) -> String {
    reply["conversation_id"].as_str().unwrap().to_owned()
}

async fn history(server: &TestServer, token: &str, id: &str) -> Value {
    let reply = server
        .get(&format!("/api/chat/conversations/{id}"), Some(token))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn a_conversation_survives_a_restart() {
    if !onnxruntime_available("a_conversation_survives_a_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = chat_server().start_in(dir.path()).await;
    let (token, _) = server.register("restart@example.com").await;
    let first = say(&server, &token, None, "Hello Bee").await;
    assert_eq!(first["model_used"], "fixture-chat");
    assert!(first["metadata"]["tokens_used"].as_u64().unwrap() > 0);
    let id = id_of(&first);
    let second = say(&server, &token, Some(&id), "Tell me about bees").await;
    assert_eq!(id_of(&second), id);
    let before = history(&server, &token, &id).await;
    assert!(server.stop().success());

    let server = chat_server().start_in(dir.path()).await;
    let login = server
        .login("restart@example.com", "correct horse battery")
        .await;
    let token = login.body["session_token"].as_str().unwrap().to_owned();
    let after = history(&server, &token, &id).await;
    assert_eq!(after["messages"], before["messages"]);
    let messages = after["messages"].as_array().unwrap();
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[0]["content"], "Hello Bee");
    assert_eq!(messages[1]["content"], first["response"]);
    assert_eq!(messages[1]["id"], first["message_id"]);
    assert_eq!(messages[1]["model"], "fixture-chat");
    assert_eq!(messages[2]["id"], second["metadata"]["user_message_id"]);

    // The rebuilt actor continues the same conversation.
    let third = say(&server, &token, Some(&id), "And honey?").await;
    assert_eq!(id_of(&third), id);
    assert_eq!(history(&server, &token, &id).await["message_count"], 6);
}

#[tokio::test]
async fn listings_page_and_sort() {
    if !onnxruntime_available("listings_page_and_sort") {
        return;
    }
    let server = chat_server().start().await;
    let (token, _) = server.register("lists@example.com").await;
    let mut ids = Vec::new();
    for topic in ["Alpha topic", "Beta topic", "Gamma topic"] {
        ids.push(id_of(&say(&server, &token, None, topic).await));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The oldest conversation becomes the most recently updated.
    say(&server, &token, Some(&ids[0]), "Back to alpha").await;

    let list = |query: &'static str| {
        let server = &server;
        let token = token.clone();
        async move {
            let reply = server
                .get(&format!("/api/chat/conversations{query}"), Some(&token))
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            reply.body
        }
    };
    let ids_in = |body: &Value| -> Vec<String> {
        body["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let default = list("").await;
    assert_eq!(default["total"], 3);
    assert_eq!(default["limit"], 20);
    assert_eq!(
        ids_in(&default),
        [ids[0].clone(), ids[2].clone(), ids[1].clone()]
    );
    let first = &default["conversations"][0];
    assert_eq!(first["title"], "Alpha topic");
    assert_eq!(first["message_count"], 4);
    assert!(first["last_message"].is_string());

    let created_asc = list("?sort=created_at&order=asc").await;
    assert_eq!(ids_in(&created_asc), ids);
    let paged = list("?sort=created_at&order=asc&limit=1&offset=1").await;
    assert_eq!(ids_in(&paged), [ids[1].clone()]);
    assert_eq!(
        (paged["total"].as_u64(), paged["offset"].as_u64()),
        (Some(3), Some(1))
    );
    let updated_asc = list("?sort=updated_at&order=asc").await;
    assert_eq!(
        ids_in(&updated_asc),
        [ids[1].clone(), ids[2].clone(), ids[0].clone()]
    );

    let searched = list("?search=GAMMA").await;
    assert_eq!(ids_in(&searched), [ids[2].clone()]);
    assert_eq!(searched["total"], 1);
    assert_eq!(
        list("?search=%25").await["total"],
        0,
        "a wildcard is a character"
    );

    let too_long = format!("?search={}", "x".repeat(201));
    for bad in [
        "?sort=title",
        "?order=up",
        "?limit=0",
        "?limit=5000",
        &too_long,
    ] {
        server
            .get(&format!("/api/chat/conversations{bad}"), Some(&token))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    }

    // History pages by message position.
    let window = server
        .get(
            &format!("/api/chat/conversations/{}?limit=2&offset=1", ids[0]),
            Some(&token),
        )
        .await;
    let messages = window.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["type"], "assistant");
    assert_eq!(messages[1]["content"], "Back to alpha");
}

/// Counts tokens independently of the server: the fixture's tokenizer.json and the chat template
/// from its manifest, applied to the stored history.
struct IndependentCount {
    tokenizer: tokenizers::Tokenizer,
    template: Value,
}

impl IndependentCount {
    fn new() -> IndependentCount {
        let dir = fixture_models().join("fixture-chat");
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        IndependentCount {
            tokenizer: tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap(),
            template: manifest["chat_template"].clone(),
        }
    }

    fn segment(&self, role: &str, content: &str) -> u64 {
        let pattern = self.template[role].as_str().unwrap();
        let text = pattern.replace("{content}", content);
        self.tokenizer.encode(text, false).unwrap().len() as u64
    }

    /// (system, user, assistant) of a conversation as the server should count it.
    fn usage(&self, history: &Value) -> (u64, u64, u64) {
        let mut system_text = SYSTEM_PROMPT.to_owned();
        if let Some(summary) = history["summary"].as_str() {
            system_text.push_str("\n\nSummary of the earlier conversation:\n");
            system_text.push_str(summary.trim());
        }
        let (mut user, mut assistant) = (0, 0);
        for message in history["messages"].as_array().unwrap() {
            if message["pruned"] == true {
                continue;
            }
            let kind = message["type"].as_str().unwrap();
            let tokens = self.segment(kind, message["content"].as_str().unwrap());
            match kind {
                "user" => user += tokens,
                _ => assistant += tokens,
            }
        }
        (self.segment("system", &system_text), user, assistant)
    }
}

async fn token_usage(server: &TestServer, token: &str, id: &str) -> Value {
    let reply = server
        .get(
            &format!("/api/chat/conversations/{id}/token-usage"),
            Some(token),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

fn assert_usage_matches(usage: &Value, expected: (u64, u64, u64)) {
    let by_role = &usage["by_role"];
    let got = (
        by_role["system"].as_u64().unwrap(),
        by_role["user"].as_u64().unwrap(),
        by_role["assistant"].as_u64().unwrap(),
    );
    assert_eq!(got, expected, "{usage}");
    assert_eq!(usage["total"], expected.0 + expected.1 + expected.2);
}

#[tokio::test]
async fn token_usage_is_exact_and_pruning_keeps_the_budget() {
    if !onnxruntime_available("token_usage_is_exact_and_pruning_keeps_the_budget") {
        return;
    }
    let server = chat_server().start().await;
    let (token, _) = server.register("tokens@example.com").await;
    let count = IndependentCount::new();

    let first = say(&server, &token, None, "How do bees make honey?").await;
    let id = id_of(&first);
    let usage = token_usage(&server, &token, &id).await;
    assert_usage_matches(&usage, count.usage(&history(&server, &token, &id).await));
    assert_eq!(usage["context_limit"], 256);
    assert_eq!(usage["max_allowed_tokens"], 204, "80% of the context");
    assert_eq!(usage["model"], "fixture-chat");
    assert_eq!(usage["last_pruning"], Value::Null);
    // The prompt the model saw: the context before the answer, plus the generation prompt.
    let generation_prompt = count
        .tokenizer
        .encode(count.template["generation_prompt"].as_str().unwrap(), false)
        .unwrap()
        .len() as u64;
    let (system, user, _) = count.usage(&history(&server, &token, &id).await);
    assert_eq!(
        first["metadata"]["prompt_tokens"].as_u64().unwrap(),
        system + user + generation_prompt
    );

    // Turns until the conversation outgrows its budget: older messages are summarised, and no
    // prompt ever exceeds the budget.
    let mut pruned_automatically = false;
    for turn in 0..8 {
        let reply = say(
            &server,
            &token,
            Some(&id),
            &format!("Question {turn}: what do worker bees do all day long?"),
        )
        .await;
        let prompt = reply["metadata"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt <= 204, "turn {turn}: prompt of {prompt} tokens");
        if !reply["metadata"]["pruning"].is_null() {
            pruned_automatically = true;
            assert_eq!(reply["metadata"]["pruning"]["automatic"], true);
        }
        let history = history(&server, &token, &id).await;
        assert_usage_matches(
            &token_usage(&server, &token, &id).await,
            count.usage(&history),
        );
    }
    assert!(pruned_automatically, "a long conversation is pruned");

    let history_now = history(&server, &token, &id).await;
    let messages = history_now["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 18, "pruned messages stay in the history");
    assert!(messages[0]["pruned"] == true && messages[17]["pruned"] == false);
    assert!(history_now["summary"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let usage = token_usage(&server, &token, &id).await;
    let last = &usage["last_pruning"];
    assert!(last["messages_pruned"].as_u64().unwrap() > 0);
    assert!(last["timestamp"].is_string() && last["tokens_saved"].as_u64().is_some());

    // Manual pruning keeps the 2 most recent messages (STING_CHAT__KEEP_RECENT_MESSAGES).
    let reply = server
        .call(
            Method::POST,
            &format!("/api/chat/conversations/{id}/prune"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let result = &reply.body["pruning_result"];
    assert_eq!(result["messages_kept"], 2);
    assert!(result["summary"].as_str().is_some_and(|s| !s.is_empty()));
    let after = history(&server, &token, &id).await;
    assert_eq!(after["messages"].as_array().unwrap().len(), 18);
    let unpruned = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["pruned"] == false)
        .count();
    assert_eq!(unpruned, 2);
    let usage = token_usage(&server, &token, &id).await;
    assert_usage_matches(&usage, count.usage(&after));
    assert_eq!(usage["total"], result["tokens_after"]);
    assert_eq!(usage["last_pruning"]["automatic"], false);
}

#[tokio::test]
async fn conversations_are_private_to_their_owner() {
    if !onnxruntime_available("conversations_are_private_to_their_owner") {
        return;
    }
    let server = chat_server().start().await;
    let (alice, _) = server.register("alice@example.com").await;
    let (mallory, _) = server.register("mallory@example.com").await;
    let id = id_of(&say(&server, &alice, None, "Alice's secret plan").await);

    let paths = [
        (Method::GET, format!("/api/chat/conversations/{id}")),
        (
            Method::GET,
            format!("/api/chat/conversations/{id}/token-usage"),
        ),
        (Method::POST, format!("/api/chat/conversations/{id}/prune")),
        (Method::DELETE, format!("/api/chat/conversations/{id}")),
    ];
    for (method, path) in &paths {
        let reply = server
            .call(method.clone(), path, Some(&mallory), None)
            .await;
        reply.assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
        assert!(!reply.body.to_string().contains("secret"));
        server
            .call(method.clone(), path, None, None)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    }
    server
        .post(
            "/api/chat/message",
            Some(&mallory),
            json!({"message": "let me in", "conversation_id": id}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let theirs = server.get("/api/chat/conversations", Some(&mallory)).await;
    assert_eq!(theirs.body["total"], 0);

    // Nothing of Alice's changed; then she deletes it, and it is gone for her too.
    let kept = history(&server, &alice, &id).await;
    assert_eq!(kept["message_count"], 2);
    let deleted = server
        .call(
            Method::DELETE,
            &format!("/api/chat/conversations/{id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    server
        .get(&format!("/api/chat/conversations/{id}"), Some(&alice))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    assert_eq!(
        server
            .get("/api/chat/conversations", Some(&alice))
            .await
            .body["total"],
        0
    );
}

#[tokio::test]
async fn bad_messages_are_refused_without_writing() {
    if !onnxruntime_available("bad_messages_are_refused_without_writing") {
        return;
    }
    let server = chat_server()
        .env("STING_CHAT__MAX_MESSAGE_CHARS", "1000")
        .start()
        .await;
    let (token, _) = server.register("bad@example.com").await;
    let cases = [
        (json!({"message": "   "}), "message"),
        (json!({"message": "x".repeat(1001)}), "message"),
        (
            json!({"message": "hi", "context": {"temperature": 5}}),
            "context.temperature",
        ),
        (
            json!({"message": "hi", "context": {"max_tokens": 0}}),
            "context.max_tokens",
        ),
        (
            json!({"message": "hi", "conversation_id": "not-a-uuid"}),
            "conversation_id",
        ),
    ];
    for (body, field) in cases {
        let reply = server.post("/api/chat/message", Some(&token), body).await;
        reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
        assert_eq!(
            reply.body["error"]["details"]["field"], field,
            "{}",
            reply.body
        );
    }
    // Fits the character limit but not the model's token budget.
    let reply = server
        .post(
            "/api/chat/message",
            Some(&token),
            json!({"message": "word ".repeat(199)}),
        )
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "MESSAGE_TOO_LONG");
    assert_eq!(reply.body["error"]["details"]["max_allowed_tokens"], 204);
    let reply = server
        .post(
            "/api/chat/message",
            Some(&token),
            json!({"message": "hi", "context": {"model": "no-such-model"}}),
        )
        .await;
    reply.assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let reply = server
        .post(
            "/api/chat/message",
            Some(&token),
            json!({"message": "hi", "context": {"model": "fixture-embed"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let list = server.get("/api/chat/conversations", Some(&token)).await;
    assert_eq!(list.body["total"], 0, "nothing was stored");
}
