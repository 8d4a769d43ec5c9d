//! The web app in a real browser (headless Chromium) against a real `sting serve`.

use reqwest::StatusCode;
use serde_json::json;

use crate::browser::Browser;
use crate::harness::TestServer;

/// The app's address on `localhost`: WebAuthn needs a domain (not an IP) and a secure
/// context, which http://localhost is.
fn app_url(server: &TestServer) -> String {
    server.base.replace("127.0.0.1", "localhost")
}

#[tokio::test]
async fn app_is_served_with_a_strict_policy() {
    let server = TestServer::start().await;
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let header = |name: &str| page.headers()[name].to_str().unwrap().to_owned();
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let etag = header("etag");
    let again = server
        .client
        .get(server.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let script = server
        .client
        .get(server.url("/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    server
        .get("/assets/nope.js", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");

    // The session cookie does not let another site change anything.
    let (token, _) = server.register("csrf@example.com").await;
    let forged = server
        .client
        .post(server.url("/api/knowledge/honey-pots"))
        .header("cookie", format!("sting_session={token}"))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"name": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["code"], "CSRF_REJECTED");
}

#[tokio::test]
async fn passkeys_in_a_real_browser() {
    let Some(browser) = Browser::launch("passkeys_in_a_real_browser").await else {
        return;
    };
    let server = TestServer::start().await;
    let authenticator = browser.add_virtual_authenticator().await;
    let app = app_url(&server);

    // Sign up with a password.
    browser.goto(&format!("{app}/#/signup")).await;
    browser
        .wait_for("document.querySelector('#signup-submit')")
        .await;
    browser.screenshot("signup").await;
    browser.fill("input[name=name]", "Pat Browser").await;
    browser.fill("input[name=email]", "pat@example.com").await;
    browser
        .fill("input[name=password]", "correct horse battery")
        .await;
    browser.click("#signup-submit").await;
    browser
        .wait_for("location.hash === '#/account' && document.querySelector('#add-passkey')")
        .await;

    // Add a passkey: the virtual authenticator makes the credential.
    browser
        .fill("input[name=passkey-name]", "this browser")
        .await;
    browser.click("#add-passkey").await;
    browser
        .wait_for("document.querySelector('#passkey-list').innerText.includes('this browser')")
        .await;
    browser.screenshot("account-passkeys").await;
    let held = browser.credentials(&authenticator).await;
    assert_eq!(held.len(), 1, "{held:?}");

    // Sign out, then back in with the passkey alone.
    browser.click("nav a[href='#/signin']").await;
    browser
        .wait_for("document.querySelector('#signin-passkey')")
        .await;
    browser.screenshot("signin").await;
    browser.fill("input[name=email]", "pat@example.com").await;
    browser.click("#signin-passkey").await;
    browser.wait_for("location.hash === '#/account'").await;
    let session = browser
        .eval("fetch('/api/auth/session').then((r) => r.json())")
        .await;
    assert_eq!(session["authenticated"], true, "{session}");
    assert_eq!(session["user"]["email"], "pat@example.com");
    let used = browser
        .eval("fetch('/api/auth/webauthn/passkeys').then((r) => r.json())")
        .await;
    assert!(used["passkeys"][0]["last_used_at"].is_string(), "{used}");
    let held = browser.credentials(&authenticator).await;
    assert!(held[0]["signCount"].as_u64().unwrap() >= 1, "{held:?}");
    assert_eq!(browser.page_errors(), Vec::<String>::new());
}
