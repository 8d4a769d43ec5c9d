//! Identity: registration, login, sessions, logout, rate limiting of login.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ServerOptions, TestServer};

#[tokio::test]
async fn register_login_session_logout() {
    let server = TestServer::start().await;
    let (register_token, user_id) = server.register("Alice@Example.com").await;

    let login = server
        .login("alice@example.com", "correct horse battery")
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["success"], true);
    assert_eq!(login.body["user"]["id"], user_id.as_str());
    assert_eq!(login.body["user"]["email"], "alice@example.com");
    let token = login.body["session_token"].as_str().unwrap().to_owned();
    assert_ne!(token, register_token);
    assert_eq!(token.len(), 43, "256-bit token, base64url");
    let cookie = login.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }

    let session = server.get("/api/auth/session", Some(&token)).await;
    assert_eq!(session.status, StatusCode::OK);
    assert_eq!(session.body["authenticated"], true);
    assert_eq!(session.body["user"]["id"], user_id.as_str());
    assert_eq!(session.body["user"]["traits"]["name"], "Tester");
    assert_eq!(session.body["session_id"], login.body["session_id"]);

    // The cookie alone authenticates too.
    let by_cookie = server
        .client
        .get(server.url("/api/auth/session"))
        .header("cookie", format!("sting_session={token}"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(by_cookie["authenticated"], true);

    let logout = server
        .call(Method::POST, "/api/auth/logout", Some(&token), None)
        .await;
    assert_eq!(logout.status, StatusCode::OK, "{}", logout.body);
    assert_eq!(logout.body["message"], "Successfully logged out");
    assert!(logout.header("set-cookie").unwrap().contains("Max-Age=0"));

    let after = server.get("/api/auth/session", Some(&token)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body["authenticated"], false);
    server
        .call(Method::POST, "/api/auth/logout", Some(&token), None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");

    // The other session (from registration) is untouched by this logout.
    let other = server.get("/api/auth/session", Some(&register_token)).await;
    assert_eq!(other.body["authenticated"], true);
    assert!(!server.log().contains(&token), "tokens never reach the log");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_indistinguishable() {
    let server = TestServer::start().await;
    server.register("bob@example.com").await;
    let wrong = server.login("bob@example.com", "not the password").await;
    let unknown = server.login("nobody@example.com", "not the password").await;
    wrong.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    unknown.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert_eq!(
        wrong.body["error"]["message"],
        unknown.body["error"]["message"]
    );
    assert_eq!(
        wrong.body["error"]["details"],
        unknown.body["error"]["details"]
    );
}

#[tokio::test]
async fn registration_validates_input() {
    let server = TestServer::start().await;
    let cases = [
        (
            json!({"email": "not-an-email", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"email": "c@example.com", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "longmail@example.com", "password": "LongMail@Example.com"}),
            "password",
        ),
        (
            json!({"email": "d@example.com", "password": "long enough pw", "traits": {"name": "  "}}),
            "traits.name",
        ),
        (json!({"email": "e@example.com"}), "password"),
        (json!({"email": 5, "password": "long enough pw"}), "email"),
    ];
    for (body, field) in cases {
        let reply = server.post("/api/auth/register", None, body.clone()).await;
        reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
        assert!(reply.body["error"]["details"]["reason"].is_string());
    }
    server.register("taken@example.com").await;
    let again = server
        .post(
            "/api/auth/register",
            None,
            json!({"email": "TAKEN@example.com", "password": "another password"}),
        )
        .await;
    again.assert_error(StatusCode::CONFLICT, "EMAIL_TAKEN");
}

#[tokio::test]
async fn registration_can_be_closed() {
    let server = ServerOptions::new()
        .env("STING_AUTH__ALLOW_REGISTRATION", "false")
        .start()
        .await;
    server
        .post(
            "/api/auth/register",
            None,
            json!({"email": "f@example.com", "password": "long enough pw"}),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
}

#[tokio::test]
async fn sixth_login_attempt_within_a_minute_is_refused() {
    // The contract's default: 5 auth requests per minute per client.
    let server = ServerOptions::new()
        .env("STING_RATE_LIMITS__AUTH__REQUESTS", "5")
        .start()
        .await;
    for attempt in 1..=5u32 {
        let reply = server.login("eve@example.com", "guessing").await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
        assert_eq!(reply.header("x-ratelimit-limit"), Some("5"));
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some((5 - attempt).to_string().as_str())
        );
    }
    let sixth = server.login("eve@example.com", "guessing").await;
    sixth.assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED");
    assert_eq!(sixth.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(sixth.header("x-ratelimit-remaining"), Some("0"));
    let retry_after: u64 = sixth.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    let reset: u64 = sixth.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        reset > now && reset <= now + 61,
        "reset {reset} vs now {now}"
    );

    // Other categories keep their own budget; health probes have none.
    let session = server.get("/api/auth/session", None).await;
    assert_eq!(session.header("x-ratelimit-limit"), Some("1000"));
    let health = server.get("/api/system/health", None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.header("x-ratelimit-limit"), None);
}

#[tokio::test]
async fn a_session_of_ones_own_buys_no_fresh_guesses() {
    let server = ServerOptions::new()
        .env("STING_RATE_LIMITS__AUTH__REQUESTS", "5")
        .start()
        .await;
    // Registering is a credential attempt too: four are left.
    let (attacker, _) = server.register("mallory@example.com").await;
    let guess = || async {
        server
            .client
            .post(server.url("/api/auth/login"))
            .bearer_auth(&attacker)
            .json(&json!({"email": "victim@example.com", "password": "guess"}))
            .send()
            .await
            .unwrap()
            .status()
    };
    for _ in 0..4 {
        assert_eq!(guess().await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(guess().await, StatusCode::TOO_MANY_REQUESTS);
    // Session checks and logout are not credential attempts.
    for _ in 0..10 {
        let reply = server.get("/api/auth/session", Some(&attacker)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let logout = server
        .call(Method::POST, "/api/auth/logout", Some(&attacker), None)
        .await;
    assert_eq!(logout.status, StatusCode::OK, "{}", logout.body);
}

#[tokio::test]
async fn guesses_at_one_account_are_limited_from_every_address() {
    let server = ServerOptions::new()
        .env("STING_RATE_LIMITS__AUTH_ACCOUNT__REQUESTS", "3")
        .start()
        .await;
    for _ in 0..3 {
        server
            .login("Victim@Example.com", "guess")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    }
    server
        .login("victim@example.com ", "guess")
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED");
    server
        .login("someone.else@example.com", "guess")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn credentials_sent_as_a_form_or_text_are_refused() {
    let server = TestServer::start().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        for path in ["/api/auth/login", "/api/auth/register"] {
            let mut request = server
                .client
                .post(server.url(path))
                .body(r#"{"email":"a@example.com","password":"correct horse battery"}"#);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let reply = crate::harness::Reply::from(request.send().await.unwrap()).await;
            reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
        }
    }
}

#[tokio::test]
async fn changing_the_password_signs_out_the_other_sessions() {
    let server = TestServer::start().await;
    let (this, _) = server.register("changer@example.com").await;
    let other = server
        .session_token("changer@example.com", "correct horse battery")
        .await;
    let change = |current: &str, new: &str| {
        server.post(
            "/api/auth/password",
            Some(&this),
            json!({"current_password": current, "new_password": new}),
        )
    };
    change("wrong guess", "a brand new secret")
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    change("correct horse battery", "short")
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    let changed = change("correct horse battery", "a brand new secret").await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["sessions_revoked"], 1);

    let session = |token: String| {
        let server = &server;
        async move { server.get("/api/auth/session", Some(&token)).await.body["authenticated"].clone() }
    };
    assert_eq!(session(this.clone()).await, true, "this session stays");
    assert_eq!(session(other).await, false, "the other one is signed out");
    server
        .login("changer@example.com", "correct horse battery")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert_eq!(
        server
            .login("changer@example.com", "a brand new secret")
            .await
            .status,
        StatusCode::OK
    );
    // Unauthenticated, it is refused.
    server
        .post(
            "/api/auth/password",
            None,
            json!({"current_password": "a brand new secret", "new_password": "another one here"}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session() {
    let server = TestServer::start().await;
    let (first, _) = server.register("leaver@example.com").await;
    let second = server
        .session_token("leaver@example.com", "correct horse battery")
        .await;
    let reply = server
        .call(
            Method::POST,
            "/api/auth/logout-everywhere",
            Some(&first),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["sessions_revoked"], 2);
    assert!(reply
        .header("set-cookie")
        .is_some_and(|c| c.contains("Max-Age=0")));
    for token in [&first, &second] {
        let session = server.get("/api/auth/session", Some(token)).await;
        assert_eq!(session.body["authenticated"], false);
    }
}
