//! Shared harness for the interop tests: starts the built `relay` binary on 127.0.0.1 in its own
//! process group, finds free ports, runs coturn's tools, and speaks TURN itself where a test needs
//! to look at responses.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test harness: failures should be loud and immediate"
)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::Pid;
pub use rustix::process::Signal;
use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::message::{
    Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use switchboard_relay::stun::{IntegrityKey, IntegrityKind};

pub const SECRET: &str = "interop-secret";
pub const REALM: &str = "interop";

/// Sends `sig` to the process group led by `pid` (never to pid 0 or 1, which mean "everyone").
pub fn signal_group(pid: u32, sig: Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, sig);
}

/// Sends `sig` to exactly the process `pid`.
pub fn signal_process(pid: u32, sig: Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(Pid::from_raw)
    else {
        return;
    };
    rustix::process::kill_process(pid, sig).expect("signal delivered");
}

/// Fails the test (never skips) when a conformance tool is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` is not installed: install the Debian package `coturn` (apt-get install -y coturn)"
    );
}

/// A port free for both UDP and TCP on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// Disjoint relay port ranges per relay started by this test process (tests run in parallel).
pub fn relay_port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    // Each test binary is its own process; spread by pid too so binaries running at once differ.
    let base = 42_000 + (std::process::id() % 20) as u16 * 250 + slot * 50;
    (base, base + 49)
}

/// A wide relay port range (400 ports) for tests with hundreds of allocations, disjoint from
/// [`relay_port_range`]'s.
pub fn wide_relay_port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 20_000 + (std::process::id() % 10) as u16 * 1_600 + slot * 400;
    (base, base + 399)
}

/// A running relay; killed (by pid, whole process group) when dropped.
pub struct Relay {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
}

impl Relay {
    /// Starts the relay with loopback peers allowed and REST secret [`SECRET`].
    pub fn start() -> Self {
        Self::start_with(&["--allow-loopback-peers", "--secret", SECRET])
    }

    /// Starts the relay with extra arguments (listen, realm and port range are set here).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_ports(extra, relay_port_range())
    }

    /// Like [`Relay::start_with`], relaying on ports `low..=high`.
    pub fn start_with_ports(extra: &[&str], (low, high): (u16, u16)) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log =
            std::env::temp_dir().join(format!("relay-test-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--realm")
            .arg(REALM)
            .arg("--port-range")
            .arg(format!("{low}-{high}"))
            .args(extra)
            .env_remove("RELAY_SECRET")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let child = cmd.spawn().expect("start relay");
        let metrics = extra
            .windows(2)
            .find(|w| w[0] == "--metrics-listen")
            .map(|w| w[1].parse().unwrap());
        let relay = Self {
            child: Some(child),
            addr,
            metrics,
            log,
        };
        relay.wait_ready();
        relay
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let req = MessageBuilder::new(
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([1; 12]),
        )
        .finish();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let _ = socket.send_to(&req, self.addr);
            if socket.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!(
            "relay did not answer a Binding request within 15 s; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the relay by pid.
    pub fn signal(&self, sig: Signal) {
        signal_process(self.pid(), sig);
    }

    /// Waits until the relay's log contains `needle` (an event, not a sleep); fails the test if it
    /// does not within `within`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the relay never logged {needle:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the relay process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits for the relay to exit, returning whether it exited successfully.
    pub fn wait_exit(&mut self, within: Duration) -> Option<bool> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The relay leads its own process group; kill exactly that group by its pid.
            signal_group(child.id(), Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("relay log ({}):\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A helper process (e.g. `turnutils_peer`) in its own process group, killed on drop.
pub struct Helper(Child);

impl Helper {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        signal_group(self.0.id(), Signal::KILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `turnutils_peer` (a UDP echo peer) on a free port; returns it and the port.
pub fn echo_peer() -> (Helper, u16) {
    let tool = require_tool("turnutils_peer");
    let port = free_port();
    let helper =
        Helper::spawn(Command::new(tool).args(["-L", "127.0.0.1", "-p", &port.to_string()]));
    // Wait until it echoes.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..100 {
        let _ = socket.send_to(b"ping", ("127.0.0.1", port));
        if socket.recv_from(&mut buf).is_ok() {
            return (helper, port);
        }
    }
    panic!("turnutils_peer did not start");
}

/// A UDP echo peer on its own thread, until `stop` is set (benchmarks).
pub fn echo_thread(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    });
    addr
}

/// The `p` quantile (0..=1) of an ascending slice; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs a command with a deadline, killing its process group on timeout.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            signal_group(child.id(), Signal::KILL);
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Result of one `turnutils_uclient` run.
#[derive(Debug)]
pub struct UclientReport {
    pub lost: Option<u64>,
    pub sent: Option<u64>,
    pub received: Option<u64>,
    pub text: String,
    pub success: bool,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Runs `turnutils_uclient` against the relay with REST credentials and parses its totals.
pub fn uclient(
    relay: &Relay,
    peer_port: u16,
    flags: &[&str],
    messages: u32,
    clients: u32,
) -> UclientReport {
    uclient_as(
        relay,
        peer_port,
        &["-W", SECRET, "-u", "interop"],
        flags,
        messages,
        clients,
    )
}

/// Runs `turnutils_uclient` with the given credential flags (`-W`/`-u`/`-w`) and parses its
/// totals.
pub fn uclient_as(
    relay: &Relay,
    peer_port: u16,
    credentials: &[&str],
    flags: &[&str],
    messages: u32,
    clients: u32,
) -> UclientReport {
    uclient_at(
        relay.addr.port(),
        peer_port,
        credentials,
        flags,
        messages,
        clients,
    )
}

/// [`uclient_as`] against a relay on 127.0.0.1:`relay_port` (usable from another thread).
pub fn uclient_at(
    relay_port: u16,
    peer_port: u16,
    credentials: &[&str],
    flags: &[&str],
    messages: u32,
    clients: u32,
) -> UclientReport {
    let tool = require_tool("turnutils_uclient");
    let mut cmd = Command::new(tool);
    cmd.args(flags).args(credentials).args([
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port.to_string(),
        "-p",
        &relay_port.to_string(),
        "-n",
        &messages.to_string(),
        "-m",
        &clients.to_string(),
        "-l",
        "170",
        "127.0.0.1",
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report = UclientReport {
        lost: None,
        sent: None,
        received: None,
        text: text.clone(),
        success: out.status.success(),
    };
    for line in text.lines() {
        if line.contains("Total lost packets") {
            report.lost = number_after(line, "Total lost packets");
        }
        // The final totals line has no "msz=" (per-interval lines do).
        if line.contains("tot_recv_msgs=") && !line.contains("msz=") {
            report.sent = number_after(line, "tot_send_msgs=");
            report.received = number_after(line, "tot_recv_msgs=");
        }
    }
    report
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A minimal TURN client over UDP for tests that inspect responses.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    nonce: Option<String>,
    tid: u32,
}

/// An owned response.
pub struct Reply(pub Vec<u8>);

impl Reply {
    pub fn msg(&self) -> Message<'_> {
        Message::decode(&self.0).unwrap()
    }
    pub fn is_success(&self) -> bool {
        self.msg().typ.class == Class::Success
    }
    pub fn code(&self) -> Option<u16> {
        self.msg()
            .get(attr::ERROR_CODE)
            .map(|v| attr::decode_error_code(v).unwrap().0)
    }
    pub fn xor(&self, t: attr::AttributeType) -> Option<SocketAddr> {
        self.msg().xor_address(t).map(|r| r.unwrap())
    }
}

impl TurnClient {
    pub fn rest(server: SocketAddr, secret: &str, user: &str, expires: u64) -> Self {
        Self::rest_from(std::net::Ipv4Addr::LOCALHOST, server, secret, user, expires)
    }

    /// Like [`TurnClient::rest`], from a chosen loopback source address.
    pub fn rest_from(
        source: std::net::Ipv4Addr,
        server: SocketAddr,
        secret: &str,
        user: &str,
        expires: u64,
    ) -> Self {
        let username = format!("{expires}:{user}");
        let password = switchboard_relay::turn::auth::rest_password(secret, &username);
        let socket = UdpSocket::bind((source, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        Self {
            socket,
            server,
            username,
            password,
            nonce: None,
            tid: 0,
        }
    }

    fn key(&self) -> IntegrityKey {
        IntegrityKey::long_term(&self.username, REALM, &self.password)
    }

    pub fn raw(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).unwrap();
    }

    /// The next datagram, waiting at most `within`.
    pub fn recv_within(&self, within: Duration) -> Option<Vec<u8>> {
        self.socket
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .unwrap();
        let got = self.recv();
        self.socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        got
    }

    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        let (n, _) = self.socket.recv_from(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Sends a request (fetching/refreshing the nonce as needed) and returns the final response.
    pub fn call(&mut self, method: Method, f: &dyn Fn(&mut MessageBuilder)) -> Reply {
        self.tid += 1;
        let mut tid = [7u8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        for _ in 0..3 {
            let mut b =
                MessageBuilder::new(MessageType::new(method, Class::Request), TransactionId(tid));
            f(&mut b);
            if let Some(nonce) = &self.nonce {
                b.attr(attr::USERNAME, self.username.as_bytes())
                    .attr(attr::REALM, REALM.as_bytes())
                    .attr(attr::NONCE, nonce.as_bytes())
                    .integrity(IntegrityKind::Sha1, &self.key());
            }
            self.raw(&b.fingerprint().finish());
            let reply = loop {
                let bytes = self.recv().expect("response within 2 s");
                // Skip Data indications and ChannelData that may be in flight.
                if Message::decode(&bytes).is_ok_and(|m| m.transaction_id == TransactionId(tid)) {
                    break Reply(bytes);
                }
            };
            let code = reply.code();
            if (self.nonce.is_none() && code == Some(401)) || code == Some(438) {
                self.nonce = reply
                    .msg()
                    .get(attr::NONCE)
                    .map(|n| String::from_utf8(n.to_vec()).unwrap());
                continue;
            }
            return reply;
        }
        panic!("no final response");
    }

    pub fn allocate(&mut self) -> Reply {
        self.call(Method::ALLOCATE, &|b| {
            b.attr(
                attr::REQUESTED_TRANSPORT,
                &attr::encode_requested_transport(attr::TRANSPORT_UDP),
            );
        })
    }

    pub fn refresh(&mut self, lifetime: u32) -> Reply {
        self.call(Method::REFRESH, &|b| {
            b.u32_attr(attr::LIFETIME, lifetime);
        })
    }

    pub fn permit(&mut self, peer: SocketAddr) -> Reply {
        self.call(Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    pub fn bind_channel(&mut self, number: u16, peer: SocketAddr) -> Reply {
        self.call(Method::CHANNEL_BIND, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &attr::encode_channel_number(number))
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// Sends data to a peer through a Send indication.
    pub fn send(&self, peer: SocketAddr, data: &[u8]) {
        let ind = MessageBuilder::new(
            MessageType::new(Method::SEND, Class::Indication),
            TransactionId([9; 12]),
        )
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attr(attr::DATA, data)
        .finish();
        self.raw(&ind);
    }
}

/// Fetches an HTTP path with a plain request, returning (status line, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status.trim().to_owned(), body)
}
