//! The SFU's IO shell: one thread owns the UDP socket, the clock and the [`Sfu`] core.
//!
//! Every session shares the one socket; the core routes datagrams by source address and ICE
//! ufrag. The HTTP session endpoint talks to this thread through a bounded command channel
//! (control plane only); the packet path takes no lock.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_proto::sfu_token::Claims;
use tokio::net::UdpSocket;
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
    /// `PATCH /v1/sessions/{id}` with a trickle fragment.
    Trickle {
        /// The session.
        id: SessionId,
        /// The `application/trickle-ice-sdpfrag` body.
        fragment: String,
        /// Done, or why not.
        reply: oneshot::Sender<Result<(), SessionError>>,
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

/// Binds the SFU socket; done before anything else starts so a bad address fails early.
pub fn bind(addr: SocketAddr) -> std::io::Result<StdUdpSocket> {
    let s = StdUdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Starts the SFU thread on `socket`; it runs until the returned handle and its clones are
/// dropped.
pub fn spawn(socket: StdUdpSocket, config: SfuConfig) -> std::io::Result<SfuHandle> {
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
                match UdpSocket::from_std(socket) {
                    Ok(socket) => run(socket, local, config, rx, m).await,
                    Err(e) => warn!("SFU socket: {e}"),
                }
            });
        })?;
    Ok(SfuHandle {
        commands: tx,
        metrics,
    })
}

async fn run(
    socket: UdpSocket,
    local: SocketAddr,
    config: SfuConfig,
    mut commands: mpsc::Receiver<Command>,
    metrics: Arc<SfuMetrics>,
) {
    info!(%local, candidates = ?config.candidates, "SFU ready");
    let mut sfu = Sfu::new(config);
    let mut buf = vec![0u8; 2048];
    let mut histogram = Histogram::default();
    let mut next_publish = Instant::now();
    loop {
        let deadline = flush(&mut sfu, &socket).await;
        let now = Instant::now();
        if now >= next_publish {
            metrics.publish(&sfu.stats());
            metrics.publish_latency(&histogram);
            next_publish = now + Duration::from_secs(1);
        }
        let wake = deadline.map_or(next_publish, |d| d.min(next_publish));
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let received = Instant::now();
                match r {
                    Ok((n, source)) => {
                        sfu.handle_datagram(source, local, buf.get(..n).unwrap_or_default(), received);
                        flush(&mut sfu, &socket).await;
                        histogram.record(received.elapsed());
                    }
                    Err(e) => debug!("SFU recv: {e}"),
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
        Command::Trickle {
            id,
            fragment,
            reply,
        } => {
            let _ = reply.send(sfu.handle_trickle(id, &fragment, now));
        }
        Command::Delete { id, reply } => {
            let _ = reply.send(sfu.handle_delete(id, now));
        }
    }
}

/// Sends every pending datagram; returns the core's next deadline.
async fn flush(sfu: &mut Sfu, socket: &UdpSocket) -> Option<Instant> {
    loop {
        match sfu.poll_output() {
            Output::Transmit(t) => {
                if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                    debug!("SFU send: {e}");
                }
            }
            Output::Closed(id, why) => {
                info!(session = %id, reason = why.as_str(), "SFU session closed")
            }
            Output::Timeout(t) => return Some(t),
            Output::Idle => return None,
        }
    }
}

/// Binds the SFU socket from the configuration and starts the SFU thread.
pub fn start(settings: &crate::config::SfuSettings) -> std::io::Result<SfuHandle> {
    let socket = bind(settings.listen)?;
    let port = socket.local_addr()?.port();
    let config = SfuConfig {
        candidates: settings
            .public_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect(),
        max_sessions: settings.max_sessions,
        max_queue_bytes: settings.queue_bytes,
    };
    spawn(socket, config)
}
