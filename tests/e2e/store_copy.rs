//! `sting store copy`: an embedded deployment moved to another store by the real CLI, then
//! served from there with its users, sessions and jars intact.

use std::path::Path;
use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{sting_binary, ServerOptions, DEFAULTS_FILE};
use crate::knowledge::create_jar;

fn store_copy(data_dir: &Path, from: &Path, to: &str) -> Output {
    Command::new(sting_binary())
        .args(["store", "copy", "--data-dir"])
        .arg(data_dir)
        .arg("--from")
        .arg(from)
        .args(["--to", to])
        .env("STING_CONFIG", DEFAULTS_FILE.as_path())
        .output()
        .expect("run sting store copy")
}

#[tokio::test]
async fn an_embedded_deployment_moves_to_another_store_and_keeps_serving() {
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let mut server = ServerOptions::new().start_in(source_dir.path()).await;
    let (token, _) = server.register("mover@example.com").await;
    let jar = create_jar(&server, &token, json!({"name": "Moving notes"})).await;
    server.stop();

    let from = source_dir.path().join("sting.db");
    let to = format!("sqlite:{}", target_dir.path().join("sting.db").display());
    let copied = store_copy(source_dir.path(), &from, &to);
    let stdout = String::from_utf8_lossy(&copied.stdout);
    let stderr = String::from_utf8_lossy(&copied.stderr);
    assert!(copied.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("conversations"),
        "progress is shown: {stderr}"
    );
    assert!(stdout.contains("all 10 tables match"), "{stdout}");
    assert!(source_dir.path().join("sting.db.copy.json").exists());

    // Run again: the finished checkpoint copies nothing more, and the stores still match.
    let again = store_copy(source_dir.path(), &from, &to);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("all 10 tables match"));

    let moved = ServerOptions::new().start_in(target_dir.path()).await;
    let me = moved.get("/api/auth/session", Some(&token)).await;
    assert_eq!(me.status, StatusCode::OK, "the session moved: {}", me.body);
    let login = moved
        .login("mover@example.com", "correct horse battery")
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let reply = moved
        .get(&format!("/api/knowledge/honey-pots/{jar}"), Some(&token))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["name"], "Moving notes");

    for (to, expected) in [
        (
            format!("sqlite:{}", from.display()),
            "names the source itself",
        ),
        (
            "postgres".to_owned(),
            "expected `scylla` or `sqlite:<path>`",
        ),
    ] {
        let refused = store_copy(source_dir.path(), &from, &to);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}
