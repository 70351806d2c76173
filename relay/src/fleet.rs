//! Fleet membership: the relay announces itself to the Worker's relay registry.
//!
//! Every `--heartbeat-interval` the node sends a heartbeat (its id, region, public URLs,
//! load and draining flag), signed with HMAC-SHA256 under the registration secret
//! (`proto::registry::sign_heartbeat`); the secret itself never leaves the node. The
//! registry lists the node for one lease per heartbeat, so a node that dies drops out on
//! its own.
//!
//! With `--heartbeat-transport ws` (the default) the node keeps one WebSocket to
//! `{worker-url}/v1/relays/ws` (`ws://` or `wss://`; the upgrade signed over the node id,
//! `proto::registry::sign_upgrade`) and sends each heartbeat as one text frame, then waits
//! for the registry's one reply frame. Any failure of the socket (connect or upgrade
//! refused, a timeout, a close) drops it, and that beat goes out as
//! `POST {worker-url}/v1/relays/heartbeat` instead; the socket is opened again after the
//! backoff below, counted in the socket's own failures. With `http`, every heartbeat is a
//! POST. A heartbeat the registry refuses (a typed error reply) is not sent again by POST:
//! the POST would be refused alike. The last heartbeat of a stopping relay is a POST.
//!
//! The sender runs on its own thread with blocking clients: it never touches the
//! packet path, and a Worker that cannot be reached only delays the next try (backoff
//! with full jitter, capped), while the relay keeps serving what it has.
//!
//! Heartbeats go out at a fixed rate (every `--heartbeat-interval` counted from the start of
//! the previous accepted one, so a slow answer does not stretch the period), and each request
//! (or each frame's reply) gives up after [`request_timeout`] (three quarters of the
//! interval): with the defaults (2 s beats, the Worker's 5 s lease) a lost or hung heartbeat
//! is followed by another try well before the lease ends. A beat whose socket failed may take
//! up to two timeouts (the frame's, then the POST's).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_proto::Millis;
use switchboard_proto::registry::{
    Heartbeat, HeartbeatFrame, HeartbeatReply, NODE_HEADER, NodeId, NodeLoad, NodeUrls, Region,
    SIGNATURE_HEADER, sign_heartbeat, sign_upgrade,
};
use tracing::{info, warn};

use crate::http::Metrics;
#[cfg(feature = "sfu")]
pub use crate::sfu::shell::SfuMetrics;

/// Without the `sfu` feature there are no SFU sessions to report: no value of this type exists.
#[cfg(not(feature = "sfu"))]
#[derive(Debug)]
pub enum SfuMetrics {}

#[cfg(not(feature = "sfu"))]
impl SfuMetrics {
    fn sessions(&self) -> u64 {
        match *self {}
    }
}

/// Default seconds between heartbeats (`--heartbeat-interval`): under half the Worker's default
/// lease (`RELAY_LEASE_MS`, 5 s), so a node survives one lost heartbeat.
pub const DEFAULT_INTERVAL_S: u64 = 2;

/// How long one heartbeat request may take: three quarters of the interval (at least 500 ms,
/// at most 5 s), so a hung request leaves time for a retry within the same lease.
pub fn request_timeout(interval: Duration) -> Duration {
    (interval * 3 / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// How heartbeats travel (`--heartbeat-transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatTransport {
    /// One WebSocket to the registry, a frame per heartbeat; a POST for a beat it fails.
    #[default]
    Ws,
    /// One `POST /v1/relays/heartbeat` per heartbeat.
    Http,
}

/// What the node says about itself, from the `--worker-url`/`--node-id`/… flags.
#[derive(Clone)]
pub struct FleetConfig {
    /// Base URL of the Worker (`https://signal.example.com`).
    pub worker_url: String,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's region.
    pub region: Region,
    /// Public URLs clients use (`stun:`, `turn:`, `turns:`, `https://` for the SFU).
    pub urls: NodeUrls,
    /// The registration secret shared with the Worker (`REGISTRY_SECRET` there).
    pub secret: String,
    /// Time between heartbeats.
    pub interval: Duration,
    /// How heartbeats travel.
    pub transport: HeartbeatTransport,
    /// Capacities reported with the load.
    pub max_allocations: u64,
    /// SFU session capacity (0 when the node runs no SFU).
    pub max_sfu_sessions: u64,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("FleetConfig")
            .field("worker_url", &self.worker_url)
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("urls", &self.urls)
            .field("interval", &self.interval)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Sorts `--public-url` values into the heartbeat's URL groups; `None` names a bad one.
pub fn sort_urls(urls: &[String]) -> Result<NodeUrls, String> {
    let mut out = NodeUrls::default();
    for u in urls {
        if u.starts_with("stun:") {
            out.stun.push(u.clone());
        } else if u.starts_with("turn:") || u.starts_with("turns:") {
            out.turn.push(u.clone());
        } else if u.starts_with("https://") || u.starts_with("http://") {
            if out.sfu.replace(u.clone()).is_some() {
                return Err("at most one http(s) --public-url (the SFU endpoint)".into());
            }
        } else {
            return Err(format!(
                "--public-url {u}: expected stun:, turn:, turns:, http:// or https://"
            ));
        }
    }
    Ok(out)
}

/// The delay before try `failures + 1` after `failures` failed tries in a row: the normal
/// interval when all is well, else exponential from 1 s, capped at 30 s, with full jitter
/// (`rand01` in [0, 1)) so a fleet that lost the Worker does not come back in step.
pub fn next_delay(interval: Duration, failures: u32, rand01: f64) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = Duration::from_secs(30).min(interval.max(Duration::from_secs(1)) * 6);
    let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.min(5).saturating_sub(1));
    exp.min(cap).mul_f64(rand01.clamp(0.0, 1.0))
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux the relay targets.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Starts the heartbeat thread; load and the draining flag come from the relay's metrics.
pub fn spawn(
    cfg: FleetConfig,
    metrics: Arc<Metrics>,
    sfu: Option<Arc<SfuMetrics>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet-heartbeat".into())
        .spawn(move || run(&cfg, &metrics, sfu.as_deref()))
}

/// One last heartbeat with the draining flag set, sent as the relay stops: the registry stops
/// handing the node out at once instead of at the end of its lease.
///
/// It is a POST whatever the transport: one request, no socket to open on the way out.
pub fn final_heartbeat(cfg: &FleetConfig, metrics: &Metrics, sfu: Option<&SfuMetrics>) {
    let mut sender = Sender::new(cfg, metrics);
    sender.transport = HeartbeatTransport::Http;
    if let Err(e) = sender.send(cfg, metrics, sfu, true) {
        warn!(node = %cfg.node_id, "final heartbeat failed: {e}");
    }
}

/// The HTTP client, the WebSocket, and the previous readings the load is computed from.
struct Sender {
    agent: ureq::Agent,
    url: String,
    transport: HeartbeatTransport,
    socket: Option<HeartbeatSocket>,
    /// Failed socket attempts in a row, for the reconnect backoff.
    socket_failures: u32,
    /// No new socket before this.
    socket_retry_at: Instant,
    /// The last signing time: each heartbeat is signed strictly later (the replay guard).
    last_ts: u64,
    cores: u32,
    last_cpu: (std::time::Instant, Duration),
    last_bytes: u64,
}

impl Sender {
    fn new(cfg: &FleetConfig, metrics: &Metrics) -> Sender {
        Sender {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(request_timeout(cfg.interval)))
                .http_status_as_error(false)
                .build()
                .into(),
            url: format!(
                "{}/v1/relays/heartbeat",
                cfg.worker_url.trim_end_matches('/')
            ),
            transport: cfg.transport,
            socket: None,
            socket_failures: 0,
            socket_retry_at: Instant::now(),
            last_ts: 0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            last_cpu: (std::time::Instant::now(), process_cpu().unwrap_or_default()),
            last_bytes: metrics.relayed_bytes(),
        }
    }

    /// A signing time strictly after the previous one.
    fn next_ts(&mut self) -> Millis {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_ts = now.max(self.last_ts.saturating_add(1));
        Millis(self.last_ts)
    }

    /// Measures the load since the last call and sends one heartbeat (over the socket, else
    /// by POST).
    fn send(
        &mut self,
        cfg: &FleetConfig,
        metrics: &Metrics,
        sfu: Option<&SfuMetrics>,
        draining: bool,
    ) -> Result<(), String> {
        let now = std::time::Instant::now();
        let cpu = process_cpu().unwrap_or(self.last_cpu.1);
        let wall = now.duration_since(self.last_cpu.0).as_secs_f64().max(0.001);
        let cpu_s = cpu.saturating_sub(self.last_cpu.1).as_secs_f64();
        let bytes = metrics.relayed_bytes();
        let bandwidth_bps = (bytes.saturating_sub(self.last_bytes) as f64 * 8.0 / wall) as u64;
        self.last_cpu = (now, cpu);
        self.last_bytes = bytes;
        let hb = Heartbeat {
            node_id: cfg.node_id.clone(),
            region: cfg.region.clone(),
            urls: cfg.urls.clone(),
            load: NodeLoad {
                allocations: metrics.allocation_count(),
                max_allocations: cfg.max_allocations,
                sfu_sessions: sfu.map_or(0, SfuMetrics::sessions),
                max_sfu_sessions: cfg.max_sfu_sessions,
                bandwidth_bps,
                cpu_percent: (cpu_s / wall * 100.0) as u32,
                cores: self.cores,
            },
            draining: draining || metrics.is_draining(),
        };
        let body = serde_json::to_string(&hb).map_err(|e| e.to_string())?;
        if self.transport == HeartbeatTransport::Ws {
            match self.send_frame(cfg, &body) {
                Frame::Answered(result) => return result,
                Frame::SocketFailed(e) => {
                    self.socket = None;
                    self.socket_failures = self.socket_failures.saturating_add(1);
                    let wait = next_delay(cfg.interval, self.socket_failures, rand01());
                    self.socket_retry_at = Instant::now() + wait;
                    warn!(node = %cfg.node_id, failures = self.socket_failures, "heartbeat socket failed, posting this heartbeat: {e}");
                }
                Frame::NoSocket => {}
            }
        }
        let ts = self.next_ts();
        post(&self.agent, &self.url, &cfg.secret, ts, body.as_bytes())
    }

    /// Sends `body` as a frame on the socket, opening it first if its backoff allows.
    fn send_frame(&mut self, cfg: &FleetConfig, body: &str) -> Frame {
        let timeout = request_timeout(cfg.interval);
        if self.socket.is_none() {
            if Instant::now() < self.socket_retry_at {
                return Frame::NoSocket;
            }
            let ts = self.next_ts();
            match HeartbeatSocket::open(cfg, ts, timeout) {
                Ok(s) => {
                    info!(node = %cfg.node_id, "heartbeat socket open");
                    self.socket = Some(s);
                }
                Err(e) => return Frame::SocketFailed(e),
            }
        }
        let ts = self.next_ts();
        let sig = sign_heartbeat(cfg.secret.as_bytes(), ts, body.as_bytes());
        let frame = HeartbeatFrame::encode(&sig, body);
        let Some(socket) = self.socket.as_mut() else {
            return Frame::NoSocket;
        };
        match socket.beat(frame, timeout) {
            Ok(answer) => {
                self.socket_failures = 0;
                Frame::Answered(answer)
            }
            Err(e) => Frame::SocketFailed(e),
        }
    }
}

/// What became of a heartbeat offered to the socket.
enum Frame {
    /// No socket now (its reconnect backoff runs): the beat goes by POST.
    NoSocket,
    /// The socket failed (connect, upgrade, send, timeout, close): the beat goes by POST.
    SocketFailed(String),
    /// The registry answered: accepted, or refused with its error code.
    Answered(Result<(), String>),
}

/// A uniform draw in [0, 1) for the backoff's jitter.
fn rand01() -> f64 {
    let mut r = [0u8; 4];
    match getrandom::fill(&mut r) {
        Ok(()) => f64::from(u32::from_le_bytes(r)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

fn run(cfg: &FleetConfig, metrics: &Metrics, sfu: Option<&SfuMetrics>) {
    let mut sender = Sender::new(cfg, metrics);
    let mut failures = 0u32;
    let mut announced = false;
    loop {
        let started = std::time::Instant::now();
        match sender.send(cfg, metrics, sfu, false) {
            Ok(()) => {
                if !announced || failures > 0 {
                    info!(node = %cfg.node_id, region = cfg.region.as_str(), "registered with the relay registry");
                }
                announced = true;
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(node = %cfg.node_id, failures, "heartbeat failed: {e}");
            }
        }
        let mut wait = next_delay(cfg.interval, failures, rand01());
        if failures == 0 {
            // Fixed rate: the time the request took counts towards the wait. A retry's backoff
            // counts from the failure, so the jitter keeps a fleet's retries apart.
            wait = wait.saturating_sub(started.elapsed());
        }
        std::thread::sleep(wait);
    }
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    secret: &str,
    ts: Millis,
    body: &[u8],
) -> Result<(), String> {
    let sig = sign_heartbeat(secret.as_bytes(), ts, body);
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, &sig)
        .send(body)
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        200 => Ok(()),
        s => Err(format!("the registry answered {s}")),
    }
}

/// The socket's URL for a `--worker-url`: `http` becomes `ws`, `https` becomes `wss`.
pub fn socket_url(worker_url: &str) -> Option<String> {
    let base = worker_url.trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))?;
    Some(format!("{rest}/v1/relays/ws"))
}

/// The byte stream under the socket: plain TCP for `ws://`, rustls for `wss://`.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// The relay's WebSocket to the registry: blocking, with the request timeout on every read
/// and write.
struct HeartbeatSocket {
    ws: tungstenite::WebSocket<Conn>,
}

impl HeartbeatSocket {
    /// Connects and upgrades, signing the upgrade at `ts`. Errors never carry the secret or a
    /// signature (tungstenite reports the status of a refused upgrade, not our headers).
    fn open(cfg: &FleetConfig, ts: Millis, timeout: Duration) -> Result<HeartbeatSocket, String> {
        use tungstenite::client::IntoClientRequest;
        use tungstenite::http::HeaderValue;
        let url = socket_url(&cfg.worker_url).ok_or("--worker-url is not http(s)")?;
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let host = req.uri().host().ok_or("no host")?.to_owned();
        let tls = req.uri().scheme_str() == Some("wss");
        let port = req.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
        let sig = sign_upgrade(cfg.secret.as_bytes(), &cfg.node_id, ts);
        let headers = req.headers_mut();
        headers.insert(
            NODE_HEADER,
            HeaderValue::from_str(cfg.node_id.as_str()).map_err(|e| e.to_string())?,
        );
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sig).map_err(|e| e.to_string())?,
        );
        // IPv6 literals come bracketed in the URI.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = (bare, port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving the worker: {e}"))?;
        let mut last = String::from("the worker's name has no address");
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connecting: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .and_then(|()| tcp.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let conn = if tls {
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| e.to_string())?;
            let tls =
                rustls::ClientConnection::new(tls_config()?, name).map_err(|e| e.to_string())?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(tls, tcp)))
        } else {
            Conn::Plain(tcp)
        };
        match tungstenite::client(req, conn) {
            Ok((ws, _)) => Ok(HeartbeatSocket { ws }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(
                format!("the registry refused the socket: {}", resp.status()),
            ),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(format!("upgrade: {e}")),
            Err(tungstenite::HandshakeError::Interrupted(_)) => Err("upgrade timed out".into()),
        }
    }

    /// Sends one heartbeat frame and waits up to `timeout` for the registry's reply.
    /// `Ok(Err(code))`: the registry refused the heartbeat; `Err`: the socket failed.
    fn beat(&mut self, frame: String, timeout: Duration) -> Result<Result<(), String>, String> {
        let deadline = Instant::now() + timeout;
        self.ws
            .send(tungstenite::Message::text(frame))
            .map_err(|e| format!("sending: {e}"))?;
        // Bounded: every read waits at most `timeout`, and the loop ends at the deadline.
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    return match HeartbeatReply::parse(text.as_str()) {
                        Some(HeartbeatReply::Accepted) => Ok(Ok(())),
                        Some(HeartbeatReply::Error { code, message }) => {
                            Ok(Err(format!("the registry refused it: {code} ({message})")))
                        }
                        None => Err("the registry sent an unknown frame".into()),
                    };
                }
                Ok(tungstenite::Message::Close(_)) => return Err("the registry closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("waiting for the reply: {e}")),
            }
        }
        Err("no reply in time".into())
    }
}

/// rustls with the web PKI roots, as ureq uses them (built once).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        })
        .clone()
        .ok_or_else(|| "no TLS configuration".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_sorted_by_scheme() {
        let urls = sort_urls(&[
            "stun:r1.example.com:3478".into(),
            "turn:r1.example.com:3478?transport=udp".into(),
            "turns:r1.example.com:5349?transport=tcp".into(),
            "https://r1.example.com:8443".into(),
        ])
        .unwrap();
        assert_eq!(urls.stun.len(), 1);
        assert_eq!(urls.turn.len(), 2);
        assert_eq!(urls.sfu.as_deref(), Some("https://r1.example.com:8443"));
        assert!(sort_urls(&["ftp://x".into()]).is_err());
        assert!(sort_urls(&["https://a".into(), "https://b".into()]).is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let i = Duration::from_secs(5);
        assert_eq!(next_delay(i, 0, 0.3), i);
        assert_eq!(next_delay(i, 1, 0.999_999).as_millis(), 999);
        assert_eq!(next_delay(i, 3, 0.5), Duration::from_secs(2));
        assert_eq!(next_delay(i, 30, 1.0), Duration::from_secs(16));
        assert_eq!(
            next_delay(Duration::from_secs(60), 30, 1.0),
            Duration::from_secs(16)
        );
        assert_eq!(next_delay(i, 4, 0.0), Duration::ZERO);
    }

    #[test]
    fn a_hung_heartbeat_leaves_time_for_a_retry_within_the_default_lease() {
        let interval = Duration::from_secs(DEFAULT_INTERVAL_S);
        let lease = Duration::from_millis(switchboard_proto::registry::DEFAULT_LEASE_MS);
        // Beat at 0 renews the lease to `lease`; the beat at `interval` hangs until the
        // timeout; the retry after it waits at most the first backoff step.
        let retry_by = interval + request_timeout(interval) + next_delay(interval, 1, 0.999_999);
        assert!(retry_by < lease, "{retry_by:?} >= {lease:?}");
        // Without the retry, the next regular beat still lands inside the lease.
        assert!(interval * 2 < lease);
        assert_eq!(
            request_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            request_timeout(Duration::from_millis(100)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_socket_url_follows_the_worker_url() {
        assert_eq!(
            socket_url("https://signal.example.com/").as_deref(),
            Some("wss://signal.example.com/v1/relays/ws")
        );
        assert_eq!(
            socket_url("http://127.0.0.1:8787").as_deref(),
            Some("ws://127.0.0.1:8787/v1/relays/ws")
        );
        assert_eq!(socket_url("ftp://x"), None);
    }

    fn cfg(worker_url: String) -> FleetConfig {
        FleetConfig {
            worker_url,
            node_id: NodeId::parse("n1").unwrap(),
            region: Region::parse("eu").unwrap(),
            urls: NodeUrls::default(),
            secret: "fleet-secret".into(),
            interval: Duration::from_secs(1),
            transport: HeartbeatTransport::Ws,
            max_allocations: 0,
            max_sfu_sessions: 0,
        }
    }

    /// A one-connection WebSocket server on loopback that checks the upgrade's signature,
    /// answers the first frame with `reply` and then closes.
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    fn registry_stub(reply: HeartbeatReply) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut ws = tungstenite::accept_hdr(
                tcp,
                |req: &tungstenite::handshake::server::Request,
                 resp: tungstenite::handshake::server::Response| {
                    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
                    let now = Millis(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as u64,
                    );
                    let node = switchboard_proto::registry::verify_upgrade(
                        b"fleet-secret",
                        h(NODE_HEADER),
                        h(SIGNATURE_HEADER),
                        now,
                    );
                    assert_eq!(node.unwrap().as_str(), "n1");
                    assert_eq!(req.uri().path(), "/v1/relays/ws");
                    Ok(resp)
                },
            )
            .unwrap();
            if let Ok(tungstenite::Message::Text(t)) = ws.read() {
                seen.push(t.as_str().to_owned());
                ws.send(tungstenite::Message::text(reply.encode())).unwrap();
            }
            let _ = ws.close(None);
            let _ = ws.flush();
            seen
        });
        (base, server)
    }

    #[test]
    fn a_heartbeat_frame_is_signed_and_its_reply_read() {
        let (base, server) = registry_stub(HeartbeatReply::Accepted);
        let c = cfg(base);
        let mut sock = HeartbeatSocket::open(&c, Millis(now_ms()), Duration::from_secs(5)).unwrap();
        let body = r#"{"node_id":"n1","region":"eu","urls":{}}"#;
        let ts = Millis(now_ms());
        let sig = sign_heartbeat(c.secret.as_bytes(), ts, body.as_bytes());
        let answer = sock.beat(HeartbeatFrame::encode(&sig, body), Duration::from_secs(5));
        assert_eq!(answer, Ok(Ok(())));
        let seen = server.join().unwrap();
        let frame = HeartbeatFrame::parse(seen.first().unwrap()).unwrap();
        assert_eq!(frame.body, body);
        let checked = switchboard_proto::registry::check_heartbeat(
            b"fleet-secret",
            Some(&frame.signature),
            frame.body.as_bytes(),
            Some(&c.node_id),
            ts,
        );
        assert!(checked.is_ok(), "{checked:?}");
        // The server closed: the next beat fails as a socket failure (the POST takes it).
        let again = sock.beat(HeartbeatFrame::encode(&sig, body), Duration::from_secs(5));
        assert!(again.is_err(), "{again:?}");
    }

    #[test]
    fn a_refusal_is_the_registry_answer_not_a_socket_failure() {
        let refusal = HeartbeatReply::refused(switchboard_proto::registry::HeartbeatError::Stale);
        let (base, server) = registry_stub(refusal);
        let c = cfg(base);
        let mut sock = HeartbeatSocket::open(&c, Millis(now_ms()), Duration::from_secs(5)).unwrap();
        let answer = sock.beat("{}".into(), Duration::from_secs(5));
        let refused = answer.unwrap().unwrap_err();
        assert!(refused.contains("unauthorized"), "{refused}");
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_a_socket_failure() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = cfg(format!("http://127.0.0.1:{port}"));
        let e = HeartbeatSocket::open(&c, Millis(now_ms()), Duration::from_secs(2))
            .err()
            .unwrap();
        assert!(e.contains("connecting"), "{e}");
        assert!(!e.contains("fleet-secret"), "{e}");
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn process_cpu_is_readable() {
        assert!(process_cpu().is_some());
    }
}
