//! Admin endpoints: access control, user management, deactivation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{ServerOptions, TestServer};

#[tokio::test]
async fn non_admins_are_refused() {
    let server = TestServer::start().await;
    let (token, user_id) = server.register("user@example.com").await;
    let user_path = format!("/api/admin/users/{user_id}");
    let deactivate_path = format!("{user_path}/deactivate");
    let calls = [
        (Method::GET, "/api/admin/users", None),
        (Method::GET, user_path.as_str(), None),
        (
            Method::PUT,
            user_path.as_str(),
            Some(json!({"role": "admin"})),
        ),
        (Method::POST, deactivate_path.as_str(), None),
        (Method::GET, "/api/system/status", None),
        (Method::GET, "/api/system/metrics", None),
    ];
    for (method, path, body) in calls {
        server
            .call(method.clone(), path, Some(&token), body.clone())
            .await
            .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
        server
            .call(method, path, None, body)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    }
    let me = server.get("/api/auth/session", Some(&token)).await;
    assert_eq!(
        me.body["user"]["role"], "user",
        "the PUT did not promote anyone"
    );
}

#[tokio::test]
async fn admin_manages_users_and_deactivation_revokes_sessions() {
    let server = TestServer::start().await;
    let admin = server.admin_token("root@example.com").await;
    let (user_token, user_id) = server.register("worker@example.com").await;
    let second_login = server
        .login("worker@example.com", "correct horse battery")
        .await;
    let second_token = second_login.body["session_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let list = server
        .get("/api/admin/users?limit=1&offset=1", Some(&admin))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["total"], 2);
    assert_eq!(list.body["limit"], 1);
    assert_eq!(list.body["users"][0]["email"], "worker@example.com");
    server
        .get("/api/admin/users?limit=0", Some(&admin))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");
    server
        .get("/api/admin/users?limit=abc", Some(&admin))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    let path = format!("/api/admin/users/{user_id}");
    let got = server.get(&path, Some(&admin)).await;
    assert_eq!(got.body["role"], "user");
    assert_eq!(got.body["active"], true);
    server
        .get(&format!("/api/admin/users/{}", uuid_zero()), Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND");

    let updated = server
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"name": "Worker Bee", "email": "Bee@Example.com"})),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["name"], "Worker Bee");
    assert_eq!(updated.body["email"], "bee@example.com");
    server
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"email": "root@example.com"})),
        )
        .await
        .assert_error(StatusCode::CONFLICT, "EMAIL_TAKEN");
    server
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"role": "emperor"})),
        )
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR");

    let deactivated = server
        .call(
            Method::POST,
            &format!("{path}/deactivate"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    assert_eq!(deactivated.body["sessions_revoked"], 2);
    assert_eq!(deactivated.body["user"]["active"], false);

    for token in [&user_token, &second_token] {
        let session = server.get("/api/auth/session", Some(token)).await;
        assert_eq!(session.body["authenticated"], false);
        server
            .call(Method::POST, "/api/auth/logout", Some(token), None)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED");
    }
    server
        .login("bee@example.com", "correct horse battery")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");

    let reactivated = server
        .call(
            Method::POST,
            &format!("{path}/activate"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reactivated.body["user"]["active"], true);
    assert_eq!(
        server
            .login("bee@example.com", "correct horse battery")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn admins_cannot_lock_themselves_out() {
    let server = TestServer::start().await;
    let admin = server.admin_token("solo@example.com").await;
    let me = server.get("/api/auth/session", Some(&admin)).await;
    let path = format!(
        "/api/admin/users/{}",
        me.body["user"]["id"].as_str().unwrap()
    );
    server
        .call(
            Method::POST,
            &format!("{path}/deactivate"),
            Some(&admin),
            None,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
    server
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"role": "user"})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED");
}

#[tokio::test]
async fn bootstrap_admin_from_the_environment() {
    let server = ServerOptions::new()
        .env("STING_BOOTSTRAP__ADMIN_EMAIL", "boot@example.com")
        .env("STING_BOOTSTRAP__ADMIN_PASSWORD", "bootstrap secret 1")
        .start()
        .await;
    let login = server.login("boot@example.com", "bootstrap secret 1").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["user"]["role"], "admin");
    assert!(
        !server.log().contains("bootstrap secret 1"),
        "secrets never reach the log"
    );
}

fn uuid_zero() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}
