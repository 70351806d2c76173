//! The SFU's IO shell: one thread owns the UDP socket, the clock and the [`Sfu`] core.
//!
//! Every session shares the one socket; the core routes datagrams by source address and ICE
//! ufrag. The HTTP session endpoint talks to this thread through a bounded command channel
//! (control plane only); the packet path takes no lock.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use switchboard_proto::sfu_token::Claims;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::core::{Output, SessionError, SessionId, Sfu, SfuConfig, SfuStats};

/// A request from the HTTP endpoint to the SFU thread.
#[derive(Debug)]
pub enum Command {
    /// `POST /v1/sessions`.
    Offer {
        /// The verified token claims.
        claims: Claims,
        /// The SDP offer.
        sdp: String,
        /// The session id and SDP answer, or why not.
        reply: oneshot::Sender<Result<(SessionId, String), SessionError>>,
    },
    /// `PATCH /v1/sessions/{id}`: trickled candidates or an ICE restart.
    Patch {
        /// The session.
        id: SessionId,
        /// The `application/trickle-ice-sdpfrag` body.
        fragment: String,
        /// The relay's new ICE credentials (an ICE restart), nothing (trickle), or why not.
        reply: oneshot::Sender<Result<Option<String>, SessionError>>,
    },
    /// `DELETE /v1/sessions/{id}`.
    Delete {
        /// The session.
        id: SessionId,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
}

/// Upper bounds (seconds) of the forward-latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 9] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
];

/// The SFU's counters, written by its thread, read by `/metrics`.
#[derive(Debug, Default)]
pub struct SfuMetrics {
    sessions: AtomicU64,
    sessions_created: AtomicU64,
    dc_messages: AtomicU64,
    dc_bytes: AtomicU64,
    dc_dropped: AtomicU64,
    media_frames: AtomicU64,
    unroutable: AtomicU64,
    slow_consumers: AtomicU64,
    ice_restarts: AtomicU64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`], then +Inf.
    latency_buckets: [AtomicU64; 10],
    latency_sum_ns: AtomicU64,
}

impl SfuMetrics {
    fn publish(&self, s: &SfuStats) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.sessions, s.sessions);
        set(&self.sessions_created, s.sessions_created);
        set(&self.dc_messages, s.dc_messages_forwarded);
        set(&self.dc_bytes, s.dc_bytes_forwarded);
        set(&self.dc_dropped, s.dc_messages_dropped);
        set(&self.media_frames, s.media_frames_forwarded);
        set(&self.unroutable, s.unroutable_datagrams);
        set(&self.slow_consumers, s.slow_consumers);
        set(&self.ice_restarts, s.ice_restarts);
    }

    fn publish_latency(&self, h: &Histogram) {
        for (a, v) in self.latency_buckets.iter().zip(h.cumulative()) {
            a.store(v, Ordering::Relaxed);
        }
        self.latency_sum_ns.store(h.sum_ns, Ordering::Relaxed);
    }

    /// Live sessions.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Prometheus text for the SFU's metrics.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP switchboard_relay_sfu_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_relay_sfu_{name} {kind}");
            let _ = writeln!(out, "switchboard_relay_sfu_{name} {v}");
        };
        metric(
            "sessions",
            "gauge",
            "Live SFU sessions.",
            get(&self.sessions),
        );
        metric(
            "sessions_created_total",
            "counter",
            "SFU sessions created.",
            get(&self.sessions_created),
        );
        metric(
            "datachannel_messages_forwarded_total",
            "counter",
            "DataChannel messages written to receiving sessions (one per receiver).",
            get(&self.dc_messages),
        );
        metric(
            "datachannel_bytes_forwarded_total",
            "counter",
            "Bytes of those DataChannel messages.",
            get(&self.dc_bytes),
        );
        metric(
            "datachannel_messages_dropped_total",
            "counter",
            "DataChannel messages not delivered: no addressee or channel, bad envelope, \
             unreliable channel full.",
            get(&self.dc_dropped),
        );
        metric(
            "media_frames_forwarded_total",
            "counter",
            "Audio/video frames written to receiving sessions (one per receiver).",
            get(&self.media_frames),
        );
        metric(
            "unroutable_datagrams_total",
            "counter",
            "Datagrams no session claimed.",
            get(&self.unroutable),
        );
        metric(
            "slow_consumers_total",
            "counter",
            "Sessions dropped because their DataChannel queue passed its bound.",
            get(&self.slow_consumers),
        );
        metric(
            "ice_restarts_total",
            "counter",
            "ICE restarts done over PATCH /v1/sessions/{id}.",
            get(&self.ice_restarts),
        );
        let name = "switchboard_relay_sfu_forward_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a datagram's receipt to the sending of every datagram it caused."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut count = 0;
        for (i, a) in self.latency_buckets.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            count = get(a);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        let sum = get(&self.latency_sum_ns) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

/// Latency histogram kept by the SFU thread, published once a second.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; 10],
    sum_ns: u64,
}

impl Histogram {
    fn record(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum_ns = self
            .sum_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn cumulative(&self) -> [u64; 10] {
        let mut out = [0; 10];
        let mut acc = 0;
        for (o, c) in out.iter_mut().zip(self.counts) {
            acc += c;
            *o = acc;
        }
        out
    }
}

/// The HTTP side's handle on the SFU thread.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    commands: mpsc::Sender<Command>,
    /// Counters for `/metrics`.
    pub metrics: Arc<SfuMetrics>,
}

impl SfuHandle {
    /// Sends a command; `false` if the SFU thread has stopped or is saturated.
    pub fn try_send(&self, c: Command) -> bool {
        self.commands.try_send(c).is_ok()
    }
}

/// Binds the SFU socket with `buffer` bytes of SO_RCVBUF/SO_SNDBUF (the relay's
/// `--socket-buffer`; 0 keeps the kernel default); done before anything else starts so a bad
/// address fails early. The kernel's default (about 200 KiB, some 90 full-size datagrams) is
/// what a DataChannel burst overflows whenever this thread waits for a CPU: every datagram lost
/// there costs an SCTP retransmission and a congestion-window cut on that hop.
pub fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<StdUdpSocket> {
    let (socket, granted) = crate::net::bind::udp_socket(addr, buffer)?;
    if granted.recv < buffer || granted.send < buffer {
        warn!(
            requested = buffer,
            recv = granted.recv,
            send = granted.send,
            "the kernel capped the SFU socket's buffers; raise net.core.rmem_max and \
             net.core.wmem_max (see docs/OPERATIONS.md)"
        );
    }
    Ok(socket)
}

/// Binds the ICE-TCP listener (RFC 6544 passive candidates) on the UDP socket's address.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<StdTcpListener> {
    let l = StdTcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Starts the SFU thread on `socket` (and `tcp`, for ICE-TCP); it runs until the returned handle
/// and its clones are dropped.
pub fn spawn(
    socket: StdUdpSocket,
    tcp: Option<StdTcpListener>,
    config: SfuConfig,
) -> std::io::Result<SfuHandle> {
    let (tx, rx) = mpsc::channel(256);
    let metrics = Arc::new(SfuMetrics::default());
    let m = metrics.clone();
    let local = socket.local_addr()?;
    std::thread::Builder::new()
        .name("sfu".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("SFU runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let tcp = tcp.map(TcpListener::from_std).transpose();
                match (UdpSocket::from_std(socket), tcp) {
                    (Ok(socket), Ok(tcp)) => run(socket, local, tcp, config, rx, m).await,
                    (Err(e), _) | (_, Err(e)) => warn!("SFU socket: {e}"),
                }
            });
        })?;
    Ok(SfuHandle {
        commands: tx,
        metrics,
    })
}

/// What an ICE-TCP connection task reports to the loop.
enum TcpEvent {
    /// One RFC 4571 frame from this peer.
    Frame(SocketAddr, Vec<u8>),
    /// The connection ended.
    Closed(SocketAddr),
}

/// The loop's IO state besides the core.
struct Io {
    udp: UdpSocket,
    /// Writers of the open ICE-TCP connections, by peer address.
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

async fn run(
    udp: UdpSocket,
    local: SocketAddr,
    tcp: Option<TcpListener>,
    config: SfuConfig,
    mut commands: mpsc::Receiver<Command>,
    metrics: Arc<SfuMetrics>,
) {
    info!(%local, candidates = ?config.candidates, tcp = ?config.tcp_candidates, "SFU ready");
    let max_tcp = config.max_sessions.saturating_mul(2).saturating_add(16);
    let tcp_local = tcp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(local);
    let mut sfu = Sfu::new(config);
    let mut io = Io {
        udp,
        tcp: HashMap::new(),
    };
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpEvent>(1024);
    let mut buf = vec![0u8; 2048];
    let mut histogram = Histogram::default();
    let mut next_publish = Instant::now();
    loop {
        let deadline = flush(&mut sfu, &io).await;
        let now = Instant::now();
        if now >= next_publish {
            metrics.publish(&sfu.stats());
            metrics.publish_latency(&histogram);
            next_publish = now + Duration::from_secs(1);
        }
        let wake = deadline.map_or(next_publish, |d| d.min(next_publish));
        tokio::select! {
            r = io.udp.recv_from(&mut buf) => {
                let received = Instant::now();
                match r {
                    Ok((n, source)) => {
                        let data = buf.get(..n).unwrap_or_default();
                        sfu.handle_datagram(Protocol::Udp, source, local, data, received);
                        flush(&mut sfu, &io).await;
                        histogram.record(received.elapsed());
                    }
                    Err(e) => debug!("SFU recv: {e}"),
                }
            }
            Some(ev) = tcp_rx.recv() => match ev {
                TcpEvent::Frame(source, data) => {
                    let received = Instant::now();
                    sfu.handle_datagram(Protocol::Tcp, source, tcp_local, &data, received);
                    flush(&mut sfu, &io).await;
                    histogram.record(received.elapsed());
                }
                TcpEvent::Closed(source) => {
                    io.tcp.remove(&source);
                }
            },
            a = accept(tcp.as_ref()) => {
                if let Ok((stream, peer)) = a {
                    // Past the bound, new connections are refused (dropped) rather than held.
                    if io.tcp.len() < max_tcp {
                        let (out_tx, out_rx) = mpsc::channel(256);
                        io.tcp.insert(peer, out_tx);
                        tokio::spawn(tcp_connection(stream, peer, out_rx, tcp_tx.clone()));
                    }
                }
            }
            c = commands.recv() => {
                let Some(c) = c else {
                    info!("SFU stopping");
                    return;
                };
                on_command(&mut sfu, c);
                metrics.publish(&sfu.stats());
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                sfu.handle_timeout(Instant::now());
            }
        }
    }
}

async fn accept(l: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Largest ICE-TCP frame accepted; str0m's datagrams are far smaller.
const MAX_TCP_FRAME: usize = 4096;

/// One ICE-TCP connection: RFC 4571 framing (a 2-byte length before each packet) in both
/// directions. Frames go to the loop; the session state stays there.
async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut out: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<TcpEvent>,
) {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let reader = async {
        loop {
            let len = usize::from(r.read_u16().await?);
            if len > MAX_TCP_FRAME {
                return Err(std::io::Error::other("ICE-TCP frame too large"));
            }
            let mut frame = vec![0u8; len];
            r.read_exact(&mut frame).await?;
            if events.send(TcpEvent::Frame(peer, frame)).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some(frame) = out.recv().await {
            w.write_all(&frame).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    let _ = events.send(TcpEvent::Closed(peer)).await;
}

fn on_command(sfu: &mut Sfu, c: Command) {
    let now = Instant::now();
    match c {
        Command::Offer { claims, sdp, reply } => {
            let mut random = [0u8; 32];
            let r = match getrandom::fill(&mut random) {
                Ok(()) => sfu.handle_offer(&claims, &sdp, random, now),
                Err(_) => Err(SessionError::AtCapacity),
            };
            if let Ok((id, _)) = &r {
                info!(session = %id, room = %claims.room, "SFU session opened");
            }
            let _ = reply.send(r);
        }
        Command::Patch {
            id,
            fragment,
            reply,
        } => {
            let mut random = [0u8; 16];
            let r = match getrandom::fill(&mut random) {
                Ok(()) => sfu.handle_patch(id, &fragment, random, now),
                Err(_) => Err(SessionError::AtCapacity),
            };
            if let Ok(Some(_)) = &r {
                info!(session = %id, "SFU session ICE restart");
            }
            let _ = reply.send(r);
        }
        Command::Delete { id, reply } => {
            let _ = reply.send(sfu.handle_delete(id, now));
        }
    }
}

/// Sends every pending datagram; returns the core's next deadline.
async fn flush(sfu: &mut Sfu, io: &Io) -> Option<Instant> {
    loop {
        match sfu.poll_output() {
            Output::Transmit(t) if t.proto == Protocol::Udp => {
                if let Err(e) = io.udp.send_to(&t.contents, t.destination).await {
                    debug!("SFU send: {e}");
                }
            }
            Output::Transmit(t) => {
                // ICE-TCP: frame it; a full or gone connection loses the packet, as UDP would.
                let (Some(conn), Ok(len)) =
                    (io.tcp.get(&t.destination), u16::try_from(t.contents.len()))
                else {
                    continue;
                };
                let mut frame = Vec::with_capacity(2 + t.contents.len());
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&t.contents);
                let _ = conn.try_send(frame);
            }
            Output::Closed(id, why) => {
                info!(session = %id, reason = why.as_str(), "SFU session closed");
            }
            Output::Timeout(t) => return Some(t),
            Output::Idle => return None,
        }
    }
}

/// Binds the SFU socket from the configuration (`socket_buffer`: the relay's
/// `--socket-buffer`) and starts the SFU thread.
pub fn start(
    settings: &crate::config::SfuSettings,
    socket_buffer: usize,
) -> std::io::Result<SfuHandle> {
    let socket = bind(settings.listen, socket_buffer)?;
    let port = socket.local_addr()?.port();
    let tcp = if settings.ice_tcp {
        Some(bind_tcp(SocketAddr::new(settings.listen.ip(), port))?)
    } else {
        None
    };
    let candidates = |port: u16| {
        settings
            .public_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect::<Vec<_>>()
    };
    let tcp_candidates = match &tcp {
        Some(l) => candidates(l.local_addr()?.port()),
        None => Vec::new(),
    };
    let config = SfuConfig {
        candidates: candidates(port),
        tcp_candidates,
        max_sessions: settings.max_sessions,
        max_queue_bytes: settings.queue_bytes,
    };
    spawn(socket, tcp, config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test: failures should be loud")]

    use rustix::net::sockopt;

    /// The kernel's default (about 200 KiB) overflowed during DataChannel bursts whenever the
    /// SFU thread waited for a CPU; the socket gets `--socket-buffer` like the TURN sockets.
    #[test]
    fn the_sfu_socket_gets_the_configured_buffer_sizes() {
        let want = 1 << 20;
        // Linux caps the request at net.core.rmem_max/wmem_max.
        let cap = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(want)
        };
        let socket = super::bind("127.0.0.1:0".parse().unwrap(), want).unwrap();
        // getsockopt reports twice the usable size.
        let recv = sockopt::socket_recv_buffer_size(&socket).unwrap() / 2;
        let send = sockopt::socket_send_buffer_size(&socket).unwrap() / 2;
        assert_eq!(recv, want.min(cap("rmem_max")));
        assert_eq!(send, want.min(cap("wmem_max")));
    }
}
