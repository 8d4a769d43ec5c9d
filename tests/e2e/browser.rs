//! A real headless Chromium (Debian's `chromium`), driven over the Chrome DevTools Protocol
//! on a WebSocket: navigate, run script in the page, wait for the page to reach a state,
//! take screenshots, and attach a virtual WebAuthn authenticator.
//!
//! Without Chromium the browser tests are skipped with a message, unless
//! `STING_REQUIRE_BROWSER=1` (CI sets it), which makes a missing browser a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: std::sync::atomic::AtomicU64,
    /// The CDP session of the one page (tab) the browser is driven through.
    session: String,
    /// Uncaught exceptions and console errors of the page, for the test to check.
    page_errors: Arc<Mutex<Vec<String>>>,
    /// The text frames the page's WebSockets received, in order.
    socket_frames: Arc<Mutex<Vec<Value>>>,
}

/// Ids of the commands the event reader sends by itself (dialog answers), apart from ours.
const READER_IDS: u64 = 1 << 40;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts Chromium with one blank page, or `None` (after saying why) when it is not
    /// installed and not required. With `trusted_cert` (a PEM file), that certificate is
    /// trusted as a real one would be: pages served with it are secure contexts without
    /// certificate errors.
    pub async fn launch(test: &str, trusted_cert: Option<&Path>) -> Option<Browser> {
        let executable =
            std::env::var("STING_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if !Path::new(&executable).exists() {
            let required = std::env::var("STING_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: STING_REQUIRE_BROWSER=1 but {executable} is missing"
            );
            eprintln!("SKIPPED {test}: no Chromium at {executable} (apt-get install chromium)");
            return None;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(&executable)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(
                trusted_cert
                    .map(|pem| format!("--ignore-certificate-errors-spki-list={}", spki_hash(pem))),
            )
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let endpoint = devtools_endpoint(profile.path()).await;
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("connect to chromium's devtools");
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let page_errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let socket_frames: Arc<Mutex<Vec<Value>>> = Arc::default();
        {
            let (pending, page_errors) = (pending.clone(), page_errors.clone());
            let (socket_frames, outgoing) = (socket_frames.clone(), outgoing.clone());
            tokio::spawn(async move {
                let mut reader_id = READER_IDS;
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(id) = value["id"].as_u64() {
                        if let Some(reply) = pending.lock().unwrap().remove(&id) {
                            let _ = reply.send(value);
                        }
                        continue;
                    }
                    match value["method"].as_str() {
                        // confirm() before a deletion: the test says yes.
                        Some("Page.javascriptDialogOpening") => {
                            reader_id += 1;
                            let answer = json!({"id": reader_id, "method": "Page.handleJavaScriptDialog",
                                "params": {"accept": true}, "sessionId": value["sessionId"]});
                            let _ = outgoing.send(Message::Text(answer.to_string().into()));
                        }
                        Some("Network.webSocketFrameReceived") => {
                            let payload = value["params"]["response"]["payloadData"].as_str();
                            if let Some(frame) = payload.and_then(|p| serde_json::from_str(p).ok())
                            {
                                socket_frames.lock().unwrap().push(frame);
                            }
                        }
                        _ => {
                            if let Some(error) = page_error(&value) {
                                page_errors.lock().unwrap().push(error);
                            }
                        }
                    }
                }
            });
        }
        let mut browser = Browser {
            child,
            _profile: profile,
            outgoing,
            pending,
            next_id: Default::default(),
            session: String::new(),
            page_errors,
            socket_frames,
        };
        let target = browser
            .command(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .command(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Network.enable"] {
            browser.send(domain, json!({})).await;
        }
        Some(browser)
    }

    /// Sends a command to the page and returns its result; a CDP error fails the test.
    pub async fn send(&self, method: &str, params: Value) -> Value {
        self.command(Some(&self.session), method, params).await
    }

    async fn command(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        self.outgoing
            .send(Message::Text(message.to_string().into()))
            .expect("devtools connection open");
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, answer)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within {COMMAND_TIMEOUT:?}"))
            .expect("devtools connection open");
        assert!(
            answer.get("error").is_none(),
            "{method}: {}",
            answer["error"]
        );
        answer["result"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.send("Page.navigate", json!({ "url": url })).await;
        self.wait_for("document.readyState === 'complete'").await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (an expression) is true in the page.
    pub async fn wait_for(&self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = self
                .send(
                    "Runtime.evaluate",
                    json!({"expression": format!("Boolean({condition})"), "returnByValue": true}),
                )
                .await;
            if value["result"]["value"] == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "the page never reached `{condition}`; it shows:\n{text}\nerrors: {:?}",
                    self.page_errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets an input's value as typing would (the page listens for `input`).
    pub async fn fill(&self, selector: &str, value: &str) {
        let script = format!(
            "(() => {{ const el = document.querySelector({selector}); el.focus(); \
             el.value = {value}; el.dispatchEvent(new Event('input', {{bubbles: true}})); }})()",
            selector = json!(selector),
            value = json!(value),
        );
        self.eval(&script).await;
    }

    pub async fn click(&self, selector: &str) {
        self.wait_for(&format!("document.querySelector({})", json!(selector)))
            .await;
        self.eval(&format!(
            "document.querySelector({}).click()",
            json!(selector)
        ))
        .await;
    }

    /// Saves a PNG of the whole page (not only what is in view) under
    /// `target/tmp/screenshots/` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let metrics = self.send("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let shot = self
            .send(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true, "clip": {
                    "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1,
                }}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Attaches a virtual platform authenticator (a passkey provider with user verification,
    /// as a phone or laptop has) to the page; returns its id.
    pub async fn add_virtual_authenticator(&self) -> String {
        self.send("WebAuthn.enable", json!({})).await;
        let added = self
            .send(
                "WebAuthn.addVirtualAuthenticator",
                json!({"options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": true,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                    "automaticPresenceSimulation": true,
                }}),
            )
            .await;
        added["authenticatorId"].as_str().unwrap().to_owned()
    }

    /// The credentials a virtual authenticator holds.
    pub async fn credentials(&self, authenticator: &str) -> Vec<Value> {
        let listed = self
            .send(
                "WebAuthn.getCredentials",
                json!({ "authenticatorId": authenticator }),
            )
            .await;
        listed["credentials"].as_array().unwrap().clone()
    }

    /// Gives a file input a file from disk, as choosing it in the file dialog would.
    pub async fn set_file(&self, selector: &str, path: &Path) {
        let input = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": format!("document.querySelector({})", json!(selector)) }),
            )
            .await;
        self.send(
            "DOM.setFileInputFiles",
            json!({"files": [path], "objectId": input["result"]["objectId"]}),
        )
        .await;
    }

    /// Shows the page as a phone would (390 CSS pixels wide), or as a desktop again.
    pub async fn phone_width(&self, phone: bool) {
        if phone {
            self.send(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
            )
            .await;
        } else {
            self.send("Emulation.clearDeviceMetricsOverride", json!({}))
                .await;
        }
    }

    /// Fails unless every form control on the page has a label (or an aria-label).
    pub async fn assert_labelled(&self, screen: &str) {
        let unlabelled = self
            .eval(
                "[...document.querySelectorAll('input, select, textarea')] \
                 .filter((el) => el.type !== 'hidden' && !el.labels.length && !el.getAttribute('aria-label')) \
                 .map((el) => el.outerHTML)",
            )
            .await;
        assert_eq!(unlabelled, json!([]), "{screen}: controls without a label");
    }

    /// The frames the page's WebSockets received so far.
    pub fn socket_frames(&self) -> Vec<Value> {
        self.socket_frames.lock().unwrap().clone()
    }

    pub fn page_errors(&self) -> Vec<String> {
        self.page_errors.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium writes its DevTools port and browser path to `DevToolsActivePort` once it listens.
async fn devtools_endpoint(profile: &Path) -> String {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        assert!(Instant::now() < deadline, "chromium did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The base64 SHA-256 of a certificate's public key, as Chromium's SPKI allow-list takes it.
fn spki_hash(pem: &Path) -> String {
    let text = std::fs::read_to_string(pem).expect("certificate file");
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509 certificate");
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// An uncaught exception or a console error of the page, from a CDP event.
fn page_error(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(params["exceptionDetails"].to_string()),
        "Runtime.consoleAPICalled" if params["type"] == "error" => Some(params["args"].to_string()),
        _ => None,
    }
}
