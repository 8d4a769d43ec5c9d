//! Passkeys over real HTTP, with a software authenticator (webauthn-authenticator-rs's soft
//! passkey: real P-256 keys and signatures): registration and login ceremonies, and the ways
//! they must fail.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url,
};

use crate::harness::{ServerOptions, TestServer};

/// The page origin the authenticator reports: the server's port on `localhost` (WebAuthn
/// refuses IP-address origins; the requests themselves go to 127.0.0.1).
fn origin(server: &TestServer, scheme_and_host: &str) -> Url {
    let port = server.base.rsplit(':').next().unwrap();
    Url::parse(&format!("{scheme_and_host}:{port}")).unwrap()
}

fn authenticator() -> SoftPasskey {
    // `true`: it reports user verification (a PIN or biometric), which passkeys require.
    SoftPasskey::new(true)
}

/// Runs `register/init`, has the authenticator answer from `origin`, and returns the answer.
async fn create_credential(
    server: &TestServer,
    token: &str,
    key: &mut SoftPasskey,
    origin: Url,
) -> RegisterPublicKeyCredential {
    let init = server
        .call(
            Method::POST,
            "/api/auth/webauthn/register/init",
            Some(token),
            None,
        )
        .await;
    assert_eq!(init.status, StatusCode::OK, "{}", init.body);
    assert!(init.body["expires_at"].is_string());
    let options: CreationChallengeResponse = serde_json::from_value(init.body).unwrap();
    key.do_registration(origin, options)
        .expect("the authenticator makes a credential")
}

async fn register_passkey(server: &TestServer, token: &str, key: &mut SoftPasskey) -> String {
    let credential =
        create_credential(server, token, key, origin(server, "http://localhost")).await;
    let done = server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(token),
            json!({"credential": credential, "name": "laptop"}),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    done.body["passkey"]["id"].as_str().unwrap().to_owned()
}

/// `login/init` for `email`: the ceremony id and the options.
async fn login_init(server: &TestServer, email: &str) -> (String, RequestChallengeResponse) {
    let init = server
        .post(
            "/api/auth/webauthn/login/init",
            None,
            json!({"email": email}),
        )
        .await;
    assert_eq!(init.status, StatusCode::OK, "{}", init.body);
    let ceremony = init.body["ceremony_id"].as_str().unwrap().to_owned();
    (ceremony, serde_json::from_value(init.body).unwrap())
}

async fn login_complete(
    server: &TestServer,
    ceremony: &str,
    assertion: &PublicKeyCredential,
) -> crate::harness::Reply {
    server
        .post(
            "/api/auth/webauthn/login/complete",
            None,
            json!({"assertion": assertion, "ceremony_id": ceremony}),
        )
        .await
}

#[tokio::test]
async fn register_and_log_in_with_a_passkey() {
    let server = TestServer::start().await;
    let (token, user_id) = server.register("alice@example.com").await;
    let mut key = authenticator();
    let here = origin(&server, "http://localhost");

    // Registration: only for a logged-in user.
    server
        .call(Method::POST, "/api/auth/webauthn/register/init", None, None)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    let credential = create_credential(&server, &token, &mut key, here.clone()).await;
    let done = server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(&token),
            json!({"credential": credential, "name": "  laptop "}),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.body);
    let passkey = &done.body["passkey"];
    assert_eq!(passkey["name"], "laptop");
    let passkey_id = passkey["id"].as_str().unwrap().to_owned();
    // The same answer again: its challenge was used up.
    server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(&token),
            json!({"credential": credential}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "CHALLENGE_EXPIRED");
    let listed = server
        .get("/api/auth/webauthn/passkeys", Some(&token))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["passkeys"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["passkeys"][0]["id"], passkey_id.as_str());
    assert!(listed.body["passkeys"][0]["last_used_at"].is_null());

    // Login: the same session as a password login.
    let (ceremony, options) = login_init(&server, "Alice@Example.com").await;
    let allowed = &options.public_key.allow_credentials;
    assert_eq!(allowed.len(), 1, "the account's passkeys are offered");
    let assertion = key.do_authentication(here.clone(), options).unwrap();
    let login = login_complete(&server, &ceremony, &assertion).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["success"], true);
    assert_eq!(login.body["user"]["id"], user_id.as_str());
    let new_token = login.body["session_token"].as_str().unwrap();
    assert!(login
        .header("set-cookie")
        .is_some_and(|c| c.contains("sting_session=")));
    let session = server.get("/api/auth/session", Some(new_token)).await;
    assert_eq!(session.body["authenticated"], true);
    assert_eq!(session.body["user"]["id"], user_id.as_str());
    let used = server
        .get("/api/auth/webauthn/passkeys", Some(new_token))
        .await;
    assert!(used.body["passkeys"][0]["last_used_at"].is_string());
    assert!(used.body["passkeys"][0]["sign_count"].as_u64().unwrap() >= 1);

    // A replayed answer: the challenge is single-use.
    login_complete(&server, &ceremony, &assertion)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "CHALLENGE_EXPIRED");

    // The ceremony id may come back in the cookie login/init set (what a browser does).
    let init = server
        .post(
            "/api/auth/webauthn/login/init",
            None,
            json!({"email": "alice@example.com"}),
        )
        .await;
    let cookie = init.header("set-cookie").unwrap().to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/api/auth/webauthn/login",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let options: RequestChallengeResponse = serde_json::from_value(init.body).unwrap();
    let assertion = key.do_authentication(here.clone(), options).unwrap();
    let by_cookie = server
        .client
        .post(server.url("/api/auth/webauthn/login/complete"))
        .header("cookie", cookie.split(';').next().unwrap())
        .json(&json!({ "assertion": assertion }))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), StatusCode::OK);

    // A page on another origin cannot use the passkey.
    let (ceremony, options) = login_init(&server, "alice@example.com").await;
    let phished = key
        .do_authentication(origin(&server, "https://evil.localhost"), options)
        .unwrap();
    login_complete(&server, &ceremony, &phished)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert!(server.log().contains("relying party origin does not match"));
    let mut other_key = authenticator();
    let foreign = create_credential(
        &server,
        &token,
        &mut other_key,
        origin(&server, "https://evil.localhost"),
    )
    .await;
    let rejected = server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(&token),
            json!({"credential": foreign}),
        )
        .await;
    rejected.assert_error(StatusCode::BAD_REQUEST, "PASSKEY_REJECTED");
    assert!(rejected.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("origin"));

    // A registration is answered from the session that started it.
    let second_session = server
        .session_token("alice@example.com", "correct horse battery")
        .await;
    let credential = create_credential(&server, &token, &mut other_key, here.clone()).await;
    server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(&second_session),
            json!({"credential": credential}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "CHALLENGE_EXPIRED");

    // Deleting it: only its owner can, and then it logs no one in.
    let (bob_token, _) = server.register("bob@example.com").await;
    server
        .call(
            Method::DELETE,
            &format!("/api/auth/webauthn/passkeys/{passkey_id}"),
            Some(&bob_token),
            None,
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");
    let deleted = server
        .call(
            Method::DELETE,
            &format!("/api/auth/webauthn/passkeys/{passkey_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    server
        .post(
            "/api/auth/webauthn/login/init",
            None,
            json!({"email": "alice@example.com"}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn a_passkey_logs_in_only_its_own_account_and_only_forward() {
    let server = TestServer::start().await;
    let (alice_token, _) = server.register("alice@example.com").await;
    let (bob_token, bob_id) = server.register("bob@example.com").await;
    let mut alice_key = authenticator();
    let mut bob_key = authenticator();
    let alice_passkey = register_passkey(&server, &alice_token, &mut alice_key).await;
    register_passkey(&server, &bob_token, &mut bob_key).await;
    let here = origin(&server, "http://localhost");

    // Alice's authenticator answers a login started for Bob, offering her own credential
    // (a client can send anything): refused, and Bob is not logged in.
    let (ceremony, mut options) = login_init(&server, "bob@example.com").await;
    let (_, alices) = login_init(&server, "alice@example.com").await;
    options.public_key.allow_credentials = alices.public_key.allow_credentials;
    let forged = alice_key.do_authentication(here.clone(), options).unwrap();
    assert_eq!(
        forged.get_credential_id(),
        base64_url(&alice_passkey).as_slice()
    );
    login_complete(&server, &ceremony, &forged)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");

    // Bob's own passkey still logs him in.
    let (ceremony, options) = login_init(&server, "bob@example.com").await;
    let assertion = bob_key.do_authentication(here.clone(), options).unwrap();
    let login = login_complete(&server, &ceremony, &assertion).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["user"]["id"], bob_id.as_str());

    // Two challenges signed in order (counters n+1, n+2) and answered out of order: the
    // older signature comes after a newer one was accepted, as a cloned authenticator's
    // would, and is refused.
    let (first, first_options) = login_init(&server, "alice@example.com").await;
    let (second, second_options) = login_init(&server, "alice@example.com").await;
    let older = alice_key
        .do_authentication(here.clone(), first_options)
        .unwrap();
    let newer = alice_key
        .do_authentication(here.clone(), second_options)
        .unwrap();
    let accepted = login_complete(&server, &second, &newer).await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    login_complete(&server, &first, &older)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert!(server.log().contains("passkey signature counter went back"));
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sting_passkey_ceremonies_total{ceremony=\"registration\",outcome=\"success\"} 2",
        "sting_passkey_ceremonies_total{ceremony=\"authentication\",outcome=\"success\"} 2",
        "sting_passkey_ceremonies_total{ceremony=\"authentication\",outcome=\"refused\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // Login needs an account with passkeys; the answer does not say which part was missing.
    for email in ["nobody@example.com", "not an email"] {
        server
            .post(
                "/api/auth/webauthn/login/init",
                None,
                json!({ "email": email }),
            )
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    }
    // A completion with no ceremony at all.
    let reply: Value = server
        .post(
            "/api/auth/webauthn/login/complete",
            None,
            json!({ "assertion": assertion }),
        )
        .await
        .body;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR");
}

#[tokio::test]
async fn challenges_expire() {
    let server = ServerOptions::new()
        .env("STING_WEBAUTHN__CHALLENGE_TTL_SECS", "1")
        .start()
        .await;
    let (token, _) = server.register("late@example.com").await;
    let mut key = authenticator();
    let credential = create_credential(
        &server,
        &token,
        &mut key,
        origin(&server, "http://localhost"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    server
        .post(
            "/api/auth/webauthn/register/complete",
            Some(&token),
            json!({ "credential": credential }),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "CHALLENGE_EXPIRED");
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn changing_passkeys_needs_a_recent_login() {
    let server = ServerOptions::new()
        .env("STING_AUTH__REAUTH_WINDOW_SECS", "2")
        .start()
        .await;
    let (token, _) = server.register("fresh@example.com").await;
    let mut key = authenticator();
    let passkey = register_passkey(&server, &token, &mut key).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;

    // The session is older than the window: no passkey can be added or removed with it.
    server
        .call(
            Method::POST,
            "/api/auth/webauthn/register/init",
            Some(&token),
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "REAUTHENTICATION_REQUIRED");
    let path = format!("/api/auth/webauthn/passkeys/{passkey}");
    server
        .call(Method::DELETE, &path, Some(&token), None)
        .await
        .assert_error(StatusCode::FORBIDDEN, "REAUTHENTICATION_REQUIRED");
    // Listing them is fine, and a fresh login may change them.
    let listed = server
        .get("/api/auth/webauthn/passkeys", Some(&token))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let fresh = server
        .session_token("fresh@example.com", "correct horse battery")
        .await;
    let deleted = server.call(Method::DELETE, &path, Some(&fresh), None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
}
