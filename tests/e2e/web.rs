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
    // Over HTTPS, with the certificate Sting generated, as a deployment would serve it.
    let server = crate::harness::ServerOptions::new().tls().start().await;
    let cert = server.data_dir.join("tls/cert.pem");
    let Some(browser) = Browser::launch("passkeys_in_a_real_browser", Some(&cert)).await else {
        return;
    };
    assert!(server.base.starts_with("https://"));
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
    browser.wait_for("location.hash === '#/chat'").await;
    browser.click("nav a[href='#/account']").await;
    browser
        .wait_for("document.querySelector('#add-passkey')")
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
    browser.wait_for("location.hash === '#/chat'").await;
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

async fn sign_up(browser: &Browser, app: &str, name: &str, email: &str) {
    browser.goto(&format!("{app}/#/signup")).await;
    browser
        .wait_for("document.querySelector('#signup-submit')")
        .await;
    browser.fill("input[name=name]", name).await;
    browser.fill("input[name=email]", email).await;
    browser
        .fill("input[name=password]", "correct horse battery")
        .await;
    browser.click("#signup-submit").await;
    browser
        .wait_for("location.hash === '#/chat' && document.querySelector('#composer')")
        .await;
}

async fn sign_out(browser: &Browser) {
    browser.click("nav a[href='#/signin']").await;
    browser
        .wait_for("document.querySelector('#signin-password')")
        .await;
}

/// Goes to a screen through the navigation bar and waits for `ready` (a selector).
async fn open(browser: &Browser, screen: &str, ready: &str) {
    browser.click(&format!("nav a[href='#/{screen}']")).await;
    browser
        .wait_for(&format!("document.querySelector({})", json!(ready)))
        .await;
}

/// Searches from the Ask screen, waits for `ready`, and returns what the results say.
async fn search(browser: &Browser, ready: &str) -> String {
    open(browser, "ask", "#ask").await;
    browser
        .fill("#ask-question", "What is the lavender meadow protocol?")
        .await;
    browser.click("#search").await;
    browser.wait_for(ready).await;
    let found = browser
        .eval("document.querySelector('#ask-results').innerText")
        .await;
    found.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn people_use_the_platform_from_the_browser() {
    if !crate::harness::onnxruntime_available("people_use_the_platform_from_the_browser") {
        return;
    }
    let Some(browser) = Browser::launch("people_use_the_platform_from_the_browser", None).await
    else {
        return;
    };
    // A short system prompt leaves the fixture model's small context room for sources; greedy
    // decoding makes the fixture model's answer the same on every run.
    let server = crate::harness::ServerOptions::new()
        .env("STING_RATE_LIMITS__UPLOAD__REQUESTS", "1000")
        .env("STING_CHAT__SYSTEM_PROMPT", "You are Bee.")
        .env("STING_CHAT__DEFAULT_TEMPERATURE", "0")
        .start()
        .await;
    let app = app_url(&server);
    sign_up(&browser, &app, "Ann Reader", "ann@example.com").await;
    browser.assert_labelled("chat").await;

    // Chat: the answer streams in over the WebSocket and is rendered.
    browser
        .fill("#composer", "Hello Bee, what can you do?")
        .await;
    browser.click("#send").await;
    browser
        .wait_for(
            "location.hash.startsWith('#/chat/') \
             && document.querySelector('#messages .message.assistant .note') \
             && !document.querySelector('#messages .streaming')",
        )
        .await;
    let frames = browser.socket_frames();
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    let chunks = kinds.iter().filter(|k| **k == "response_chunk").count();
    assert!(chunks >= 2, "the answer came in pieces: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"response_complete"), "{kinds:?}");
    let conversation = browser
        .eval("location.hash.split('/')[2]")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .wait_for("document.querySelector('#conversation-list [data-conversation]')")
        .await;
    browser
        .wait_for("document.querySelector('#token-usage').value > 0")
        .await;
    browser.fill("#conversation-search", "no such title").await;
    browser
        .wait_for("document.querySelector('#conversation-list').innerText.includes('No conversation matches')")
        .await;
    browser.fill("#conversation-search", "HELLO bee").await;
    browser
        .wait_for("document.querySelector('#conversation-list [data-conversation]')")
        .await;
    browser.screenshot("chat").await;

    // Answers render as markdown, and HTML in them stays text.
    let rendered = browser
        .eval(
            r#"import('/assets/lib/markdown.js').then((m) => {
                const el = document.createElement('div');
                m.renderMarkdown(el, '<img src=x onerror=alert(1)> **bold** `code` [x](javascript:alert(1))\n\n```\nlet a = "<b>";\n```');
                return el.innerHTML;
            })"#,
        )
        .await;
    let rendered = rendered.as_str().unwrap();
    for expected in [
        "&lt;img src=x onerror=alert(1)&gt;",
        "<strong>bold</strong>",
        "<code>code</code>",
        "<pre><code>let a = \"&lt;b&gt;\";",
    ] {
        assert!(rendered.contains(expected), "{expected} not in {rendered}");
    }
    assert!(!rendered.contains("href=\"javascript"), "{rendered}");

    // A honey jar, a PDF uploaded into it, processed.
    open(&browser, "jars", "#create-jar").await;
    browser.assert_labelled("honey jars").await;
    browser.fill("input[name=jar-name]", "Ann's handbook").await;
    browser.click("#create-jar").await;
    browser.wait_for("document.querySelector('#upload')").await;
    let jar = browser
        .eval("location.hash.split('/')[2]")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    let pdf = sting_actors::ingestion::samples::pdf(&[
        "This page is about the hive and how the colony works through the seasons.",
        "Page two describes the lavender meadow protocol for late summer foraging.",
        "Winter is when the cluster keeps the queen warm.",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("handbook.pdf");
    std::fs::write(&file, pdf).unwrap();
    browser.set_file("#upload-file", &file).await;
    browser.click("#upload").await;
    browser
        .wait_for("document.querySelector('#document-list [data-status=processed]')")
        .await;
    browser.screenshot("honey-jar").await;

    // Ask, and see the cited source with its page, linking to the document.
    open(&browser, "ask", "#ask").await;
    browser.assert_labelled("ask").await;
    browser
        .eval(&format!(
            "document.querySelector('input[name=ask-jar][value=\"{jar}\"]').click()"
        ))
        .await;
    browser
        .fill("#ask-question", "What is the lavender meadow protocol?")
        .await;
    browser.click("#ask").await;
    browser
        .wait_for("document.querySelector('#sources li a')")
        .await;
    let source = browser
        .eval("(() => { const li = document.querySelector('#sources li'); return [li.innerText, li.querySelector('a').getAttribute('href')]; })()")
        .await;
    assert!(source[0].as_str().unwrap().contains("page 2"), "{source}");
    assert!(
        source[1]
            .as_str()
            .unwrap()
            .starts_with(&format!("#/jars/{jar}/")),
        "{source}"
    );
    browser.screenshot("ask").await;
    browser.click("#sources li a").await;
    browser
        .wait_for("document.querySelector('#document-list .highlight[data-status=processed]')")
        .await;

    // Sell the jar on the marketplace.
    open(&browser, "market", "#market-filter").await;
    browser.assert_labelled("marketplace").await;
    browser
        .fill("input[name=sell-title]", "Meadow handbook")
        .await;
    browser.fill("input[name=sell-price]", "4.50").await;
    browser
        .fill("input[name=sell-category]", "beekeeping")
        .await;
    browser
        .click("form[aria-labelledby=sell-title-heading] button[type=submit]")
        .await;
    browser
        .wait_for("document.querySelector('#listings [data-listing]')")
        .await;

    // Phone width: every screen fits without sideways scrolling.
    browser.phone_width(true).await;
    for (screen, ready) in [
        ("chat", "#composer"),
        ("jars", "#create-jar"),
        ("ask", "#ask"),
    ] {
        open(&browser, screen, ready).await;
        let overflow = browser
            .eval("document.documentElement.scrollWidth - window.innerWidth")
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{screen} scrolls sideways by {overflow}px"
        );
    }
    browser.screenshot("phone-ask").await;
    browser.phone_width(false).await;

    // Another person sees none of Ann's data, but can buy her listing.
    sign_out(&browser).await;
    sign_up(&browser, &app, "Bob Other", "bob@example.com").await;
    browser
        .wait_for("document.querySelector('#conversation-list').innerText.includes('No conversations yet')")
        .await;
    browser.goto(&format!("{app}/#/chat/{conversation}")).await;
    browser
        .wait_for("document.querySelector('main .alert.error')")
        .await;
    browser.goto(&format!("{app}/#/jars/{jar}")).await;
    browser
        .wait_for("document.querySelector('main .alert.error')")
        .await;
    open(&browser, "jars", "#create-jar").await;
    let listed = browser
        .eval("document.querySelector('main').innerText")
        .await;
    assert!(
        !listed.as_str().unwrap().contains("Ann's handbook"),
        "{listed}"
    );
    let found = search(&browser, "document.querySelector('#results-title')").await;
    assert!(found.starts_with("0 results"), "{found}");
    open(&browser, "market", "#market-filter").await;
    browser.click("#listings [data-listing] button").await;
    for (field, value) in [
        ("billing-name", "Bob Other"),
        ("billing-address", "1 Hive Lane"),
        ("billing-city", "Apiary"),
        ("billing-zip", "12345"),
    ] {
        browser.fill(&format!("input[name={field}]"), value).await;
    }
    browser.click("form.purchase button[type=submit]").await;
    browser
        .wait_for("document.querySelector('form.purchase .alert.ok')")
        .await;
    browser
        .wait_for("document.querySelector('#purchases').innerText.includes('pending invoice')")
        .await;
    browser.screenshot("marketplace").await;

    // The admin area: health, cluster members, models, users.
    sign_out(&browser).await;
    crate::harness::create_user_with_cli(
        &server.data_dir,
        "root@example.com",
        "admin password 1",
        true,
    );
    browser.fill("input[name=email]", "root@example.com").await;
    browser
        .fill("input[name=password]", "admin password 1")
        .await;
    browser.click("#signin-password").await;
    browser.wait_for("location.hash === '#/chat'").await;
    open(&browser, "admin", "#admin-users table").await;
    let admin = browser
        .eval("document.querySelector('main').innerText")
        .await;
    let admin = admin.as_str().unwrap();
    for expected in [
        "ann@example.com",
        "bob@example.com",
        "Cluster members",
        "fixture-chat",
    ] {
        assert!(
            admin.contains(expected),
            "{expected} missing from:\n{admin}"
        );
    }
    browser.screenshot("admin").await;

    // The admin settles Bob's invoice; Bob's searches now reach Ann's jar, and he rates it.
    browser.click("#admin-invoices button").await;
    browser
        .wait_for(
            "document.querySelector('#admin-invoices').innerText.includes('No invoice is waiting')",
        )
        .await;
    sign_out(&browser).await;
    browser.fill("input[name=email]", "bob@example.com").await;
    browser
        .fill("input[name=password]", "correct horse battery")
        .await;
    browser.click("#signin-password").await;
    browser.wait_for("location.hash === '#/chat'").await;
    open(&browser, "market", "#purchases [data-order] form").await;
    browser
        .click("#purchases [data-order] button[type=submit]")
        .await;
    browser
        .wait_for("document.querySelector('#listings').innerText.includes('★ 5.0 (1)')")
        .await;
    let found = search(
        &browser,
        "document.querySelector('#results-title') \
         && document.querySelector('#results-title').innerText !== '0 results'",
    )
    .await;
    assert!(found.contains("handbook"), "{found}");
    assert_eq!(browser.page_errors(), Vec::<String>::new());
}
