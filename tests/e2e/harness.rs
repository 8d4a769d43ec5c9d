//! Starting and stopping `sting serve` processes, and a small HTTP client around them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings every test server gets unless a test overrides them: the auth rate limit would
/// otherwise throttle tests that log in many users from one IP.
/// Model preparation downloads from PyPI: never in tests (fixture models are copied in).
const TEST_ENV: &[(&str, &str)] = &[
    ("STING_RATE_LIMITS__AUTH__REQUESTS", "1000"),
    ("STING_RATE_LIMITS__AUTH_ACCOUNT__REQUESTS", "1000"),
    ("STING_MODELS__AUTO_PREPARE", "false"),
    ("STING_MODELS__DEFAULT_CHAT_MODEL", "fixture-chat"),
    ("STING_MODELS__DEFAULT_EMBEDDING_MODEL", "fixture-embed"),
];

pub fn sting_binary() -> &'static str {
    env!("CARGO_BIN_EXE_sting")
}

/// A running `sting serve` process.
pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    /// Keeps the temporary data dir alive (None when the caller owns the dir).
    _temp: Option<tempfile::TempDir>,
    pub client: reqwest::Client,
}

/// Builder for a test server.
pub struct ServerOptions {
    env: Vec<(String, String)>,
    tls: bool,
}

impl ServerOptions {
    pub fn new() -> ServerOptions {
        ServerOptions {
            env: TEST_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tls: false,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> ServerOptions {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn tls(mut self) -> ServerOptions {
        self.tls = true;
        self
    }

    pub async fn start(self) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut server = self.start_in(&dir).await;
        server._temp = Some(temp);
        server
    }

    /// Starts a server on an existing data dir (to test restarts). The fixture models are
    /// copied into its models dir.
    pub async fn start_in(self, data_dir: &Path) -> TestServer {
        install_fixture_models(&data_dir.join("models"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("sting.log"))
            .expect("log file");
        let mut command = Command::new(sting_binary());
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .arg(if self.tls { "--tls" } else { "--no-tls" })
            // Never pick up a developer's ./config/sting.toml or environment.
            .env("STING_CONFIG", crate::harness::DEFAULTS_FILE.as_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn sting");
        let base = read_listen_url(&mut child);
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        TestServer {
            child: Some(child),
            base,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            client,
        }
    }
}

/// An empty config file: the built-in defaults apply, untouched by files on the machine.
pub static DEFAULTS_FILE: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    let path = std::env::temp_dir().join(format!("sting-e2e-empty-{}.toml", std::process::id()));
    std::fs::write(&path, "# defaults only\n").unwrap();
    path
});

/// The committed fixture models (tiny, random weights, real I/O layouts).
pub fn fixture_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn install_fixture_models(models_dir: &Path) {
    for name in ["fixture-chat", "fixture-embed"] {
        let target = models_dir.join(name);
        if target.exists() {
            continue;
        }
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(fixture_models().join(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
}

/// Whether the ONNX Runtime library is available to the servers (`ORT_DYLIB_PATH`); when it
/// is not, tests that run models say SKIP, unless `STING_REQUIRE_ORT=1` makes that a failure.
pub fn onnxruntime_available(test: &str) -> bool {
    let present = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|path| Path::new(&path).is_file());
    if !present {
        assert!(
            std::env::var("STING_REQUIRE_ORT").map_or(true, |v| v != "1"),
            "{test}: ORT_DYLIB_PATH must name the ONNX Runtime library (STING_REQUIRE_ORT=1)"
        );
        eprintln!("SKIP {test}: set ORT_DYLIB_PATH to the ONNX Runtime library to run it");
    }
    present
}

/// Waits for the "listening on URL" line on stdout; returns the URL without `/api`.
fn read_listen_url(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.split("listening on ").nth(1) {
                let _ = tx.send(url.trim().trim_end_matches("/api").to_owned());
            }
        }
    });
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(url) => url.replace("localhost", "127.0.0.1"),
        Err(_) => {
            let _ = child.kill();
            panic!("sting did not announce its address within {STARTUP_TIMEOUT:?}");
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        ServerOptions::new().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(request.send().await.expect("request sent")).await
    }

    /// Posts a multipart form with a bearer token.
    pub async fn multipart(
        &self,
        path: &str,
        token: &str,
        form: reqwest::multipart::Form,
    ) -> Reply {
        let request = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .multipart(form);
        Reply::from(request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers a user and returns (token, user id).
    pub async fn register(&self, email: &str) -> (String, String) {
        let reply = self
            .post(
                "/api/auth/register",
                None,
                json!({"email": email, "password": "correct horse battery", "traits": {"name": "Tester"}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        (
            reply.body["session_token"].as_str().unwrap().to_owned(),
            reply.body["user"]["id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Logs in and returns the session token (the login must succeed).
    pub async fn session_token(&self, email: &str, password: &str) -> String {
        let reply = self.login(email, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["session_token"].as_str().unwrap().to_owned()
    }

    /// Creates an admin with the real CLI (password on stdin) and logs in as them.
    pub async fn admin_token(&self, email: &str) -> String {
        create_user_with_cli(&self.data_dir, email, "admin password 1", true);
        self.session_token(email, "admin password 1").await
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        child.wait().expect("wait for sting")
    }

    /// SIGKILL (no shutdown at all), then waits for the process to go.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server running");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process's resident memory, in bytes (Linux).
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("server running")
            .id()
            .to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The server's log so far (for assertions about what is and is not logged).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("sting.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `sting admin create-user` against a data dir.
pub fn create_user_with_cli(data_dir: &Path, email: &str, password: &str, admin: bool) {
    let mut command = Command::new(sting_binary());
    command
        .args(["admin", "create-user", "--email", email, "--data-dir"])
        .arg(data_dir)
        .env("STING_CONFIG", DEFAULTS_FILE.as_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if admin {
        command.arg("--admin");
    }
    let mut child = command.spawn().expect("spawn sting admin");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "create-user failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the error envelope: status, code, and a request id equal to the header's.
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "{}", self.body);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["details"].is_object());
        assert!(error["timestamp"].as_str().is_some());
        let request_id = self.header("x-request-id").expect("X-Request-Id header");
        assert_eq!(error["request_id"], request_id);
    }
}
