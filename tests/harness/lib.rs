//! Harness for the end-to-end tests.
//!
//! `scripts/test.sh` builds the Worker once and starts two `wrangler dev`
//! instances on workerd (one with rooms open, one with `JWT_SECRET` set), then
//! runs these tests with their addresses in the environment. Tests wait on
//! frames with deadlines, never on fixed sleeps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // a failing harness step must fail the test loudly

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod fleet;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Settings the harness started the Worker instances with.
#[derive(Debug, Clone)]
pub struct Env {
    /// Base `http://127.0.0.1:PORT` of the instance with open rooms.
    pub open: String,
    /// Base URL of the instance that requires JWTs.
    pub auth: String,
    /// `JWT_SECRET` of the auth instance.
    pub jwt_secret: String,
    /// `TURN_SECRET` of both instances.
    pub turn_secret: String,
    /// `ADMIN_TOKEN` of both instances.
    pub admin_token: String,
    /// `HEARTBEAT_MS` of both instances.
    pub heartbeat_ms: u64,
    /// `RESUME_WINDOW_MS` of both instances.
    pub resume_window_ms: u64,
}

pub(crate) fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which starts wrangler dev")
    })
}

/// The running instances, from the environment set by `scripts/test.sh`.
pub fn env() -> Env {
    Env {
        open: var("SWITCHBOARD_URL"),
        auth: var("SWITCHBOARD_AUTH_URL"),
        jwt_secret: var("SWITCHBOARD_JWT_SECRET"),
        turn_secret: var("SWITCHBOARD_TURN_SECRET"),
        admin_token: var("SWITCHBOARD_ADMIN_TOKEN"),
        heartbeat_ms: var("SWITCHBOARD_HEARTBEAT_MS").parse().unwrap(),
        resume_window_ms: var("SWITCHBOARD_RESUME_WINDOW_MS").parse().unwrap(),
    }
}

/// A room name no other test uses.
pub fn unique_room(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let suffix: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}-{suffix}")
}

/// `ws://` form of an `http://` base URL.
pub fn ws_url(base: &str, path_and_query: &str) -> String {
    format!("{}{}", base.replacen("http://", "ws://", 1), path_and_query)
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// `GET url` with optional headers, never following redirects; statuses are not errors.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut req = ureq::get(url).config().http_status_as_error(false).build();
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    HttpResponse { status, body }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a test can tell the writer task.
enum Cmd {
    Text(String),
    Binary(Vec<u8>),
    StopPinging,
    /// Drop the TCP connection without a closing handshake.
    Drop,
}

/// A signaling client: reads frames in order; a background task writes and pings.
pub struct Client {
    /// Frames received, `pong`s filtered out.
    rx: mpsc::UnboundedReceiver<Result<Value, String>>,
    tx: mpsc::UnboundedSender<Cmd>,
    /// The `welcome` frame.
    pub welcome: Value,
    /// Highest `seq` received so far.
    pub last_seq: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peer_id", &self.welcome["peer_id"])
            .finish()
    }
}

/// Connects and returns the raw stream (for HTTP-level assertions on the upgrade).
pub async fn connect_raw(url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

impl Client {
    /// Joins `room` on `base` with an extra query string (e.g. `meta=…`), waiting for `welcome`.
    pub async fn join(base: &str, room: &str, query: &str) -> Client {
        let mut c = Client::connect(base, room, query).await;
        let w = c.next().await;
        assert_eq!(w["type"], "welcome", "first frame: {w}");
        c.welcome = w;
        c
    }

    /// Joins like [`Client::join`], sending extra request headers with the upgrade.
    pub async fn join_with_headers(
        base: &str,
        room: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let sep = if query.is_empty() { "" } else { "?" };
        let url = ws_url(base, &format!("/v1/rooms/{room}{sep}{query}"));
        let mut req = url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|e| panic!("request {url}: {e}"));
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .unwrap_or_else(|e| panic!("header {k}: {e}"));
            let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(v)
                .unwrap_or_else(|e| panic!("header {k}: {e}"));
            req.headers_mut().insert(name, value);
        }
        let ws = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timed out"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
            .0;
        let mut c = Client::from_stream(ws);
        let w = c.next().await;
        assert_eq!(w["type"], "welcome", "first frame: {w}");
        c.welcome = w;
        c
    }

    /// Connects without waiting for any frame (`welcome` stays `null`).
    pub async fn connect(base: &str, room: &str, query: &str) -> Client {
        let sep = if query.is_empty() { "" } else { "?" };
        let url = ws_url(base, &format!("/v1/rooms/{room}{sep}{query}"));
        let ws = tokio::time::timeout(DEADLINE, connect_raw(&url))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timed out"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client::from_stream(ws)
    }

    fn from_stream(ws: Ws) -> Client {
        let (rx, tx) = spawn_io(ws, Duration::from_millis(env().heartbeat_ms / 2));
        Client {
            rx,
            tx,
            welcome: Value::Null,
            last_seq: 0,
        }
    }

    /// This client's peer id.
    pub fn peer_id(&self) -> String {
        self.welcome["peer_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// This client's resume token.
    pub fn resume_token(&self) -> String {
        self.welcome["resume_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a JSON frame.
    pub fn send(&self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends raw text.
    pub fn send_text(&self, text: &str) {
        let _ = self.tx.send(Cmd::Text(text.to_owned()));
    }

    /// Sends a binary frame.
    pub fn send_binary(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(Cmd::Binary(bytes));
    }

    /// Stops the heartbeat, turning this client into a zombie.
    pub fn stop_pinging(&self) {
        let _ = self.tx.send(Cmd::StopPinging);
    }

    /// Drops the TCP connection abruptly (no close frame), as a network failure would.
    pub fn drop_connection(self) {
        let _ = self.tx.send(Cmd::Drop);
    }

    /// Sends `signal` to `to`.
    pub fn signal(&self, to: &str, payload: Value) {
        self.send(json!({"type":"signal","to":to,"payload":payload}));
    }

    /// Sends `signal` to `to` with client sequence number `cseq` (protocol v1.1).
    pub fn signal_cseq(&self, to: &str, payload: Value, cseq: u64) {
        self.send(json!({"type":"signal","to":to,"payload":payload,"cseq":cseq}));
    }

    /// Reads frames until an `ack` covering `cseq` arrives; returns the other frames seen.
    pub async fn wait_ack(&mut self, cseq: u64) -> Vec<Value> {
        let mut others = Vec::new();
        loop {
            let f = self.next().await;
            if f["type"] == "ack" {
                if f["cseq"].as_u64().unwrap_or(0) >= cseq {
                    return others;
                }
            } else {
                others.push(f);
            }
        }
    }

    /// The next frame, failing the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(DEADLINE, self.rx.recv()).await {
            Err(_) => panic!("no frame within {DEADLINE:?}"),
            Ok(None) => panic!("connection ended"),
            Ok(Some(Err(closed))) => panic!("connection closed: {closed}"),
            Ok(Some(Ok(v))) => {
                if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                    assert_eq!(
                        seq,
                        self.last_seq + 1,
                        "seq must increase by exactly 1: {v}"
                    );
                    self.last_seq = seq;
                }
                v
            }
        }
    }

    /// The next frame, allowing `within` instead of [`DEADLINE`].
    pub async fn next_within(&mut self, within: Duration) -> Value {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Err(_) => panic!("no frame within {within:?}"),
            Ok(None) => panic!("connection ended"),
            Ok(Some(Err(closed))) => panic!("connection closed: {closed}"),
            Ok(Some(Ok(v))) => v,
        }
    }

    /// The next frame that is not an `ack`.
    pub async fn next_skip_acks(&mut self) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] != "ack" {
                return f;
            }
        }
    }

    /// Every frame until the server closes the connection (checking `seq` as
    /// [`Client::next`] does), and the close.
    pub async fn frames_until_closed(&mut self) -> (Vec<Value>, String) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(DEADLINE, self.rx.recv()).await {
                Err(_) => panic!("connection not closed within {DEADLINE:?}"),
                Ok(None) => return (frames, "ended".into()),
                Ok(Some(Err(closed))) => return (frames, closed),
                Ok(Some(Ok(v))) => {
                    if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                        assert_eq!(
                            seq,
                            self.last_seq + 1,
                            "seq must increase by exactly 1: {v}"
                        );
                        self.last_seq = seq;
                    }
                    frames.push(v);
                }
            }
        }
    }

    /// The next frame, which must have `type` `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.next().await;
        assert_eq!(v["type"], ty, "expected a {ty} frame, got {v}");
        v
    }

    /// The next frame, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        assert!(v.get("seq").is_none(), "error frames carry no seq: {v}");
        v
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn expect_closed(&mut self) -> String {
        match tokio::time::timeout(DEADLINE, self.rx.recv()).await {
            Err(_) => panic!("connection not closed within {DEADLINE:?}"),
            Ok(None) => "ended".into(),
            Ok(Some(Err(closed))) => closed,
            Ok(Some(Ok(v))) => panic!("expected close, got frame {v}"),
        }
    }
}

fn spawn_io(
    ws: Ws,
    ping_every: Duration,
) -> (
    mpsc::UnboundedReceiver<Result<Value, String>>,
    mpsc::UnboundedSender<Cmd>,
) {
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value = match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = frames_tx.send(Err(format!("server sent non-JSON {t}: {e}")));
                            return;
                        }
                    };
                    if v["type"] == "pong" && v.as_object().is_some_and(|o| o.len() == 1) {
                        continue;
                    }
                    let _ = frames_tx.send(Ok(v));
                }
                Ok(Message::Close(frame)) => {
                    // "close <code> <reason>", e.g. "close 4003 retry_after_ms=1000".
                    let code = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "no code".into());
                    let _ = frames_tx.send(Err(format!("close {code}")));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = frames_tx.send(Err(format!("error {e}")));
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut pinging = true;
        let mut ticker = tokio::time::interval(ping_every);
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Cmd::Text(t)) => { if sink.send(Message::text(t)).await.is_err() { break; } }
                    Some(Cmd::Binary(b)) => { if sink.send(Message::binary(b)).await.is_err() { break; } }
                    Some(Cmd::StopPinging) => pinging = false,
                    Some(Cmd::Drop) | None => {
                        // Dropping both halves closes the TCP socket without a close frame.
                        reader.abort();
                        break;
                    }
                },
                _ = ticker.tick() => {
                    if pinging && sink.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    (frames_rx, cmd_tx)
}

/// A WebSocket upgrade request sent as plain HTTP, to read a refusal's status and JSON body.
pub fn upgrade_request(base: &str, path_and_query: &str) -> HttpResponse {
    http_get(
        &format!("{base}{path_and_query}"),
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
}

/// A `wrangler dev` instance owned by one test (for tests that restart the Worker).
///
/// It runs in its own process group and is stopped by group id, never by name.
#[derive(Debug)]
pub struct WorkerProcess {
    child: std::process::Child,
    persist: std::path::PathBuf,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub base: String,
}

impl WorkerProcess {
    /// Starts the already-built Worker on `port` with `persist` as its storage
    /// directory and the harness's settings plus `vars`; waits until it serves.
    pub async fn start(
        port: u16,
        inspector_port: u16,
        persist: &std::path::Path,
        vars: &[(&str, &str)],
    ) -> WorkerProcess {
        use std::os::unix::process::CommandExt;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let e = env();
        let env_file = persist.join("empty.env");
        std::fs::create_dir_all(persist).unwrap();
        std::fs::write(&env_file, "").unwrap();
        let log = std::fs::File::create(persist.join("wrangler.log")).unwrap();
        let mut cmd = std::process::Command::new(root.join("node_modules/.bin/wrangler"));
        cmd.current_dir(&root)
            .args([
                "dev",
                "--local",
                "--ip",
                "127.0.0.1",
                "--show-interactive-dev-session=false",
            ])
            .args([
                "--port",
                &port.to_string(),
                "--inspector-port",
                &inspector_port.to_string(),
            ])
            .arg("--persist-to")
            .arg(persist.join("state"))
            .arg("--env-file")
            .arg(&env_file)
            .args(["--var", &format!("HEARTBEAT_MS:{}", e.heartbeat_ms)])
            .env("SWITCHBOARD_SKIP_BUILD", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        for (k, v) in vars {
            cmd.args(["--var", &format!("{k}:{v}")]);
        }
        let child = cmd.spawn().expect("start wrangler dev");
        let base = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        loop {
            let ok = ureq::get(&format!("{base}/healthz"))
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ok {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "wrangler dev on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        WorkerProcess {
            child,
            persist: persist.to_owned(),
            base,
        }
    }

    /// Stops the whole process group (wrangler, its proxy and workerd) and waits for it.
    pub fn stop(mut self) {
        self.kill_group();
    }

    fn kill_group(&mut self) {
        // kill(2) on the group, never the `kill` command (procps once read a
        // negative pid as "every process").
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }

    /// The wrangler dev log so far (the Worker's console lines included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.persist.join("wrangler.log")).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// Two clients in a fresh room whose name starts with `prefix`; the first has
/// already seen the second's `peer-joined`.
pub async fn joined_pair(base: &str, prefix: &str) -> (String, Client, Client) {
    let room = unique_room(prefix);
    let mut a = Client::join(base, &room, "").await;
    let b = Client::join(base, &room, "").await;
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["peer_id"], b.peer_id().as_str());
    (room, a, b)
}

/// `POST url` with a body and headers, never following redirects; statuses are not errors.
pub fn http_post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut req = ureq::post(url).config().http_status_as_error(false).build();
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    HttpResponse { status, body }
}
