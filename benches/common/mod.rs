//! Helpers shared by the benchmarks that drive real `sting serve` processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `sting serve` (the bench's release build) on a free loopback port over plain HTTP, with
/// its data in `data_dir`, models from `models_dir`, no rate limits, quiet logs and stdout
/// piped for [`listen_url`].
pub fn serve_command(data_dir: &Path, models_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sting"));
    command
        .args(["serve", "--no-tls", "--host", "127.0.0.1", "--port", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env("STING_MODELS__DIR", models_dir)
        .env("STING_MODELS__AUTO_PREPARE", "false")
        .env("STING_RATE_LIMITS__ENABLED", "false")
        .env("STING_LOGGING__LEVEL", "warn")
        .stdout(Stdio::piped());
    command
}

/// Reads a starting node's stdout until it prints where it listens; returns the base URL
/// (without `/api`).
pub fn listen_url(stdout: std::process::ChildStdout) -> String {
    use std::io::BufRead;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(url) = line.split("listening on ").nth(1) {
            return url
                .trim()
                .trim_end_matches("/api")
                .replace("localhost", "127.0.0.1");
        }
    }
    panic!("sting exited before listening");
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Registers a user on the node at `base`; returns the session token.
pub async fn register(client: &reqwest::Client, base: &str, email: &str) -> String {
    let registered: serde_json::Value = client
        .post(format!("{base}/api/auth/register"))
        .json(&serde_json::json!({"email": email, "password": "bench password 1", "traits": {"name": "Bench"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    registered["session_token"].as_str().unwrap().to_owned()
}
