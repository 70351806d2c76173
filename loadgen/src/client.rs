//! One load client: connects from its own loopback source address, joins, heartbeats, sends
//! probes at its rate, acks, drops and resumes when told to, and reports what it saw.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{
    Instant, Interval, MissedTickBehavior, interval_at, sleep, sleep_until, timeout,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::track::{ClientIdx, Outbox, Received, Rng, Sent};
use crate::wire::{self, Incoming, PEERJS_HEARTBEAT, PING, Probe};

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Switchboard protocol v1 (`/v1/rooms/{room}`).
    V1,
    /// The echo floor: raw frames forwarded to the other sockets of the room.
    Echo,
    /// PeerJS server 1.0 (`/peerjs?key=..&id=..&token=..`).
    Peerjs,
}

/// Whom a client sends each probe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// One other member per probe, round robin (`signal`; PeerJS `OFFER`/`ANSWER`/`CANDIDATE`).
    Signal,
    /// Every other member (`broadcast`; the echo floor always forwards to every other socket).
    Broadcast,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Clients are joining.
    Connect,
    /// Clients send probes.
    Send,
    /// Sending stopped; clients still receive and ack.
    Drain,
    /// Clients close and report.
    Stop,
}

/// Settings shared by every client of a run.
#[derive(Debug)]
pub struct Config {
    /// Server protocol.
    pub mode: Mode,
    /// Server address.
    pub target: SocketAddr,
    /// Send pattern.
    pub pattern: Pattern,
    /// Probes per second per client (0: none).
    pub rate: f64,
    /// Padding of each probe.
    pub pad: String,
    /// Ack after this many sequenced frames (and at least every second).
    pub ack_every: u32,
    /// Protocol v1.1 acked client frames.
    pub cseq: bool,
    /// Join with `presence=off`; partners are found in [`Shared::directory`].
    pub presence_off: bool,
    /// Forced drop period per client.
    pub drop_every: Option<Duration>,
    /// TCP connect + upgrade + welcome timeout.
    pub connect_timeout: Duration,
    /// Source address of client 0; client i uses `src_base + (first_client + i) / clients_per_ip`.
    pub src_base: Ipv4Addr,
    /// Clients sharing one source address.
    pub clients_per_ip: u32,
    /// Heartbeat period when the server does not announce one (echo floor) or to override it.
    pub heartbeat_override: Option<Duration>,
    /// Reconnect attempts after a drop before the client gives up.
    pub reconnect_attempts: u32,
    /// PeerJS id prefix (unique per run).
    pub id_prefix: String,
}

/// Live counters read by the progress bar and the phase logic.
#[derive(Debug, Default)]
pub struct Shared {
    /// Clients that joined.
    pub connected: AtomicU64,
    /// Clients that never joined.
    pub failed: AtomicU64,
    /// Probes sent (first sends only).
    pub sent: AtomicU64,
    /// Probe deliveries expected by the senders.
    pub expected: AtomicU64,
    /// Distinct probe deliveries.
    pub delivered: AtomicU64,
    /// `error` frames received.
    pub errors: AtomicU64,
    /// Reconnects done.
    pub reconnects: AtomicU64,
    /// v1.1 frames waiting for the room's `ack`, over all clients.
    pub unacked: AtomicU64,
    /// Signalled when a client joined or failed.
    pub settled: Notify,
    /// Clients whose send tick is running: a probe may still be sent. The drain ends early only
    /// at 0, so a probe sent just after the window closed is waited for, not missed.
    pub sending: AtomicU64,
    /// Peer ids of this process's clients by index, for `presence_off` (the rooms send no presence).
    pub directory: std::sync::Mutex<std::collections::HashMap<ClientIdx, String>>,
}

/// A 4003 "going away" close and the resume that followed.
#[derive(Debug, Clone, Serialize)]
pub struct GoingAway {
    /// When the close arrived, ms since the Unix epoch.
    pub closed_unix_ms: f64,
    /// The announced window.
    pub retry_after_ms: u64,
    /// The full-jitter wait drawn in [0, retry_after_ms].
    pub waited_ms: u64,
    /// When the reconnect started, ms since the Unix epoch.
    pub reconnect_unix_ms: f64,
    /// When `welcome` arrived on the new connection, ms since the Unix epoch (absent if it failed).
    pub resumed_unix_ms: Option<f64>,
    /// The welcome said `resumed: true`.
    pub resumed: bool,
}

/// What one client reports at the end.
#[derive(Debug, Default)]
pub struct Report {
    /// Client index.
    pub idx: ClientIdx,
    /// Why the first join failed.
    pub failed: Option<String>,
    /// Time from the connect attempt to `welcome` (or OPEN, or the upgrade), µs.
    pub join_us: Option<u32>,
    /// Probes sent, by destination.
    pub sent: Sent,
    /// Probes received, by sender.
    pub received: Received,
    /// Probe latencies, µs.
    pub latencies_us: Vec<u32>,
    /// When each of those probes was sent, ms since the Unix epoch (same order).
    pub sent_unix_ms: Vec<u64>,
    /// `error` frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Connection ends other than the run's own close, by cause.
    pub ends: BTreeMap<String, u64>,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Failed reconnect attempts by reason.
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Resumes the server could not honour (fresh join instead).
    pub resume_failed: u64,
    /// Sequenced frames that skipped a `seq`.
    pub seq_gaps: u64,
    /// Sequenced frames with a `seq` already processed.
    pub seq_repeats: u64,
    /// Frames sent again from the v1.1 outbox.
    pub resent: u64,
    /// v1.1 frames still unacknowledged at the end.
    pub unacked: u64,
    /// Probes not sent because no other member was known yet.
    pub no_peer: u64,
    /// Probes from clients outside this client's planned room (another loadgen process sharing a
    /// room, or a frame routed to the wrong room).
    pub foreign: u64,
    /// 4003 closes and their resumes.
    pub going_away: Vec<GoingAway>,
    /// The client could not reconnect and stopped early.
    pub gave_up: Option<String>,
}

type Ws = WebSocketStream<TcpStream>;

/// How a connection ended.
enum End {
    Stop,
    Forced,
    Closed(u16, String),
    Dead(String),
}

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[allow(clippy::cast_precision_loss)] // ms with µs resolution, for reports
fn unix_ms_f() -> f64 {
    unix_us() as f64 / 1000.0
}

/// Source address of client `idx`.
pub fn src_ip(base: Ipv4Addr, clients_per_ip: u32, idx: ClientIdx) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(idx / clients_per_ip.max(1)))
}

fn io_reason(e: &std::io::Error) -> String {
    format!("io_{:?}", e.kind()).to_lowercase()
}

fn ws_reason(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http_{}", resp.status().as_u16()),
        WsError::Io(io) => io_reason(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(_) => "ws_protocol".into(),
        _ => "ws_other".into(),
    }
}

/// How many other members a client sends to: every one for a broadcast (the server fans out to
/// all), a few for signals (round robin), so a large room does not cost the client quadratic memory.
fn known_cap(p: Pattern) -> usize {
    match p {
        Pattern::Broadcast => usize::MAX,
        Pattern::Signal => 16,
    }
}

async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One client of the run.
pub struct Client {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    idx: ClientIdx,
    room: String,
    /// The clients planned for this client's room (itself included).
    members: Range<ClientIdx>,
    rng: Rng,
    report: Report,
    // protocol v1 session
    peer_id: Option<String>,
    resume_token: Option<String>,
    last_seq: u64,
    acked_seq: u64,
    since_ack: u32,
    /// How often a client that is behind sends `ack`: `welcome.limits.ack_delay_ms`, else 1 s.
    ack_period: Duration,
    /// The room speaks v1.2 (`welcome.rev` >= 2): the client's ack rides on its frames.
    acks_ride: bool,
    /// When the oldest frame not yet acknowledged arrived: an `ack` frame goes out
    /// `ack_period` after it unless a frame of this client carried the ack first (as the SDK).
    unacked_since: Option<Instant>,
    heartbeat: Duration,
    unanswered_pings: u32,
    /// Members known to be present: client index -> peer id (v1), or the plan (echo, PeerJS).
    known: BTreeMap<ClientIdx, String>,
    rr: usize,
    bcast_n: u64,
    outbox: Outbox,
    resend_at: Option<(Instant, u64)>,
    send_tick: Option<Interval>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("idx", &self.idx).finish()
    }
}

impl Client {
    /// A client `idx` of `room`, whose other members are `members`.
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        phase: watch::Receiver<Phase>,
        idx: ClientIdx,
        room: String,
        members: Range<ClientIdx>,
    ) -> Client {
        // Echo floor and PeerJS have no presence: the destinations are the plan.
        let known = if cfg.mode == Mode::V1 || cfg.rate <= 0.0 {
            BTreeMap::new()
        } else {
            members
                .clone()
                .filter(|c| *c != idx)
                .take(known_cap(cfg.pattern))
                .map(|c| (c, format!("{}-{c}", cfg.id_prefix)))
                .collect()
        };
        let heartbeat = cfg.heartbeat_override.unwrap_or(match cfg.mode {
            Mode::Peerjs => Duration::from_secs(5),
            _ => Duration::from_secs(30),
        });
        Client {
            report: Report {
                idx,
                ..Report::default()
            },
            cfg,
            shared,
            phase,
            idx,
            room,
            members,
            rng: Rng::from_os(),
            peer_id: None,
            resume_token: None,
            last_seq: 0,
            acked_seq: 0,
            since_ack: 0,
            ack_period: Duration::from_secs(1),
            acks_ride: false,
            unacked_since: None,
            heartbeat,
            unanswered_pings: 0,
            known,
            rr: 0,
            bcast_n: 0,
            outbox: Outbox::default(),
            resend_at: None,
            send_tick: None,
        }
    }

    fn path(&self, resume: bool) -> String {
        match self.cfg.mode {
            Mode::V1 => {
                let meta = wire::urlencode(&format!(r#"{{"c":{}}}"#, self.idx));
                // v1.1 clients read `acked` on the frames they are sent (v1.2, `caps=acks`).
                let acks = if self.cfg.cseq { "&caps=acks" } else { "" };
                let presence = if self.cfg.presence_off {
                    "&presence=off"
                } else {
                    ""
                };
                let caps = format!("{acks}{presence}");
                match (&self.resume_token, resume) {
                    (Some(t), true) => format!(
                        "/v1/rooms/{}?meta={meta}{caps}&resume={}&last_seq={}",
                        self.room,
                        wire::urlencode(t),
                        self.last_seq
                    ),
                    _ => format!("/v1/rooms/{}?meta={meta}{caps}", self.room),
                }
            }
            Mode::Echo => format!("/v1/rooms/{}", self.room),
            Mode::Peerjs => format!(
                "/peerjs?key=peerjs&id={}-{}&token=t{}",
                self.cfg.id_prefix, self.idx, self.idx
            ),
        }
    }

    async fn open(&self, path: &str) -> Result<Ws, String> {
        let sock = TcpSocket::new_v4().map_err(|e| io_reason(&e))?;
        let src = src_ip(self.cfg.src_base, self.cfg.clients_per_ip, self.idx);
        sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
            .map_err(|e| format!("bind_{}", io_reason(&e)))?;
        let tcp = timeout(self.cfg.connect_timeout, sock.connect(self.cfg.target))
            .await
            .map_err(|_| "tcp_timeout".to_owned())?
            .map_err(|e| io_reason(&e))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{}{}", self.cfg.target, path);
        let (ws, _) = timeout(
            self.cfg.connect_timeout,
            tokio_tungstenite::client_async(url, tcp),
        )
        .await
        .map_err(|_| "upgrade_timeout".to_owned())?
        .map_err(|e| ws_reason(&e))?;
        Ok(ws)
    }

    /// Connects and waits for the server's first frame (`welcome`, PeerJS `OPEN`); the echo floor has none.
    async fn join(&mut self, resume: bool) -> Result<Ws, String> {
        let path = self.path(resume);
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let mut ws = self.open(&path).await?;
        if self.cfg.mode == Mode::Echo {
            return Ok(ws);
        }
        loop {
            let msg = match timeout(
                deadline.saturating_duration_since(Instant::now()),
                ws.next(),
            )
            .await
            {
                Err(_) => return Err("welcome_timeout".into()),
                Ok(None) => return Err("closed_before_welcome".into()),
                Ok(Some(Err(e))) => return Err(ws_reason(&e)),
                Ok(Some(Ok(m))) => m,
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(f) => {
                    return Err(format!("close_{}", f.map_or(1005, |f| u16::from(f.code))));
                }
                _ => continue,
            };
            let Ok(f) = serde_json::from_str::<Incoming>(&text) else {
                return Err("bad_first_frame".into());
            };
            match (self.cfg.mode, f.kind.as_ref()) {
                (Mode::Peerjs, "OPEN") => return Ok(ws),
                (Mode::Peerjs, other) => return Err(format!("peerjs_{}", other.to_lowercase())),
                (_, "error") if f.code.as_deref() == Some("resume_failed") => {
                    self.report.resume_failed += 1;
                    self.count_error("resume_failed");
                }
                (_, "error") => return Err(f.code.unwrap_or_else(|| "error".into())),
                (_, "welcome") => {
                    self.welcome(&f, resume)?;
                    return Ok(ws);
                }
                (_, other) => return Err(format!("unexpected_{other}")),
            }
        }
    }

    fn welcome(&mut self, f: &Incoming<'_>, resume: bool) -> Result<(), String> {
        let fresh = !f.resumed.unwrap_or(false);
        if self.cfg.cseq && f.rev.unwrap_or(0) < 1 {
            return Err("server_without_v1.1".into());
        }
        if fresh {
            self.last_seq = 0;
            self.acked_seq = 0;
            if resume || self.peer_id.is_some() {
                // A fresh join after a failed resume: the old peer and its outbox are gone.
                let dropped = self.outbox.len() as u64;
                self.shared.unacked.fetch_sub(dropped, Relaxed);
                self.outbox = Outbox::default();
            }
        }
        self.peer_id.clone_from(&f.peer_id);
        self.resume_token.clone_from(&f.resume_token);
        if self.cfg.presence_off
            && let Some(id) = &f.peer_id
            && let Ok(mut dir) = self.shared.directory.lock()
        {
            dir.insert(self.idx, id.clone());
        }
        if let Some(hb) = f.heartbeat_ms
            && self.cfg.heartbeat_override.is_none()
        {
            self.heartbeat = Duration::from_millis(hb.max(100));
        }
        if let Some(ms) = f.limits.as_ref().and_then(|l| l.ack_delay_ms) {
            self.ack_period = Duration::from_millis(ms.clamp(10, 60_000));
        }
        self.acks_ride = self.cfg.cseq && f.rev.unwrap_or(0) >= 2;
        self.known.clear();
        for p in f.peers.iter().flatten() {
            if let Some(c) = p.meta.and_then(|m| m.c) {
                self.learn(c, &p.peer_id);
            }
        }
        if self.cfg.cseq {
            self.confirm(f.cseq.unwrap_or(0));
        }
        Ok(())
    }

    /// Forgets outbox frames up to `cseq` and keeps the shared count in step.
    fn confirm(&mut self, cseq: u64) {
        let n = self.outbox.confirm(cseq) as u64;
        self.shared.unacked.fetch_sub(n, Relaxed);
    }

    fn count_error(&mut self, code: &str) {
        *self.report.errors.entry(code.to_owned()).or_default() += 1;
        self.shared.errors.fetch_add(1, Relaxed);
    }

    /// Runs the client until the run stops; returns its report.
    pub async fn run(mut self) -> Report {
        let started = Instant::now();
        let mut ws = match self.join(false).await {
            Ok(ws) => ws,
            Err(reason) => {
                self.report.failed = Some(reason);
                self.shared.failed.fetch_add(1, Relaxed);
                self.shared.settled.notify_one();
                return self.report;
            }
        };
        self.report.join_us = u32::try_from(started.elapsed().as_micros()).ok();
        self.shared.connected.fetch_add(1, Relaxed);
        self.shared.settled.notify_one();
        loop {
            let end = self.session(&mut ws).await;
            let (wait, away) = match end {
                End::Stop => {
                    self.close(&mut ws).await;
                    break;
                }
                End::Forced => (Duration::ZERO, None),
                End::Closed(code, reason) => {
                    *self.report.ends.entry(format!("close_{code}")).or_default() += 1;
                    match (code, wire::retry_after_ms(&reason)) {
                        (4003, Some(n)) => {
                            let waited = self.rng.upto(n);
                            (
                                Duration::from_millis(waited),
                                Some(GoingAway {
                                    closed_unix_ms: unix_ms_f(),
                                    retry_after_ms: n,
                                    waited_ms: waited,
                                    reconnect_unix_ms: 0.0,
                                    resumed_unix_ms: None,
                                    resumed: false,
                                }),
                            )
                        }
                        (4002 | 4004, _) => {
                            self.report.gave_up = Some(format!("close_{code}"));
                            break;
                        }
                        _ => (Duration::from_millis(self.rng.upto(200)), None),
                    }
                }
                End::Dead(why) => {
                    *self.report.ends.entry(why).or_default() += 1;
                    (Duration::from_millis(self.rng.upto(200)), None)
                }
            };
            drop(ws);
            if !self.pause(wait).await {
                if let Some(a) = away {
                    self.report.going_away.push(a);
                }
                break;
            }
            let mut away = away;
            if let Some(a) = away.as_mut() {
                a.reconnect_unix_ms = unix_ms_f();
            }
            match self.reconnect().await {
                Some((next, resumed)) => {
                    ws = next;
                    if let Some(a) = away.as_mut() {
                        a.resumed_unix_ms = Some(unix_ms_f());
                        a.resumed = resumed;
                    }
                    if let Some(a) = away {
                        self.report.going_away.push(a);
                    }
                }
                None => {
                    if let Some(a) = away {
                        self.report.going_away.push(a);
                    }
                    break;
                }
            }
        }
        self.stop_send_tick();
        self.report.unacked = self.outbox.len() as u64;
        self.report
    }

    /// Waits `d` unless the run stops first; false when it stopped.
    async fn pause(&mut self, d: Duration) -> bool {
        let until = sleep(d);
        tokio::pin!(until);
        loop {
            if *self.phase.borrow() == Phase::Stop {
                return false;
            }
            tokio::select! {
                () = &mut until => return true,
                r = self.phase.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Resumes (v1) or reconnects (echo, PeerJS); true when the server resumed the same peer.
    async fn reconnect(&mut self) -> Option<(Ws, bool)> {
        for attempt in 0..self.cfg.reconnect_attempts {
            if *self.phase.borrow() == Phase::Stop {
                return None;
            }
            let failed_before = self.report.resume_failed;
            match self.join(true).await {
                Ok(ws) => {
                    self.report.reconnects += 1;
                    self.shared.reconnects.fetch_add(1, Relaxed);
                    let resumed = self.report.resume_failed == failed_before;
                    let mut ws = ws;
                    if self.cfg.cseq && resumed {
                        // welcome.cseq already confirmed what the room processed; resend the rest in order.
                        if self.resend(&mut ws, 0).await.is_err() {
                            continue;
                        }
                    }
                    return Some((ws, resumed));
                }
                Err(reason) => {
                    *self.report.reconnect_failures.entry(reason).or_default() += 1;
                    let backoff = 100u64 << attempt.min(5);
                    let wait = Duration::from_millis(self.rng.upto(backoff));
                    if !self.pause(wait).await {
                        return None;
                    }
                }
            }
        }
        self.report.gave_up = Some("reconnect_attempts".into());
        None
    }

    async fn close(&mut self, ws: &mut Ws) {
        if self.cfg.mode == Mode::V1 {
            let _ = ws.send(Message::text(r#"{"type":"leave"}"#)).await;
        }
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }

    fn ensure_send_tick(&mut self) {
        if self.send_tick.is_some() || self.cfg.rate <= 0.0 {
            return;
        }
        let period = Duration::from_secs_f64(1.0 / self.cfg.rate);
        let offset_us = self
            .rng
            .upto(u64::try_from(period.as_micros()).unwrap_or(1_000_000));
        let mut i = interval_at(Instant::now() + Duration::from_micros(offset_us), period);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.send_tick = Some(i);
        self.shared.sending.fetch_add(1, Relaxed);
    }

    /// Stops sending probes (the window closed, or the client ends).
    fn stop_send_tick(&mut self) {
        if self.send_tick.take().is_some() {
            // Release: the `expected` counts of this client's sends are visible to whoever
            // reads `sending` with Acquire.
            self.shared
                .sending
                .fetch_sub(1, std::sync::atomic::Ordering::Release);
        }
    }

    /// One connection's life: returns how it ended.
    async fn session(&mut self, ws: &mut Ws) -> End {
        let hb_period = self.heartbeat;
        let mut hb = if self.cfg.mode == Mode::Echo && self.cfg.heartbeat_override.is_none() {
            None
        } else {
            let mut i = interval_at(Instant::now() + hb_period, hb_period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Some(i)
        };
        self.unanswered_pings = 0;
        self.unacked_since = None;
        let drop_at = self.cfg.drop_every.map(|d| {
            let jitter = self.rng.upto(u64::try_from(d.as_millis()).unwrap_or(0) / 2);
            Instant::now() + d + Duration::from_millis(jitter)
        });
        loop {
            let phase = *self.phase.borrow();
            match phase {
                Phase::Stop => return End::Stop,
                Phase::Send => self.ensure_send_tick(),
                Phase::Connect | Phase::Drain => self.stop_send_tick(),
            }
            let resend_at = self.resend_at.map(|(at, _)| at);
            let ack_at = self.unacked_since.map(|t| t + self.ack_period);
            tokio::select! {
                m = ws.next() => {
                    let text = match m {
                        None => return End::Dead("eof".into()),
                        Some(Err(e)) => return End::Dead(ws_reason(&e)),
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(f))) => {
                            let (code, reason) = f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            return End::Closed(code, reason);
                        }
                        Some(Ok(_)) => continue,
                    };
                    if let Err(end) = self.incoming(ws, &text).await {
                        return end;
                    }
                }
                () = tick(&mut self.send_tick) => {
                    if let Err(e) = self.send_probe(ws).await {
                        return End::Dead(ws_reason(&e));
                    }
                }
                () = tick(&mut hb) => {
                    if self.unanswered_pings >= 3 && self.cfg.mode != Mode::Echo {
                        return End::Dead("heartbeat".into());
                    }
                    self.unanswered_pings += 1;
                    let ping = if self.cfg.mode == Mode::Peerjs { PEERJS_HEARTBEAT } else { PING };
                    if self.cfg.mode == Mode::Peerjs {
                        // PeerJS server never answers heartbeats.
                        self.unanswered_pings = 0;
                    }
                    if let Err(e) = ws.send(Message::text(ping)).await {
                        return End::Dead(ws_reason(&e));
                    }
                }
                () = until(ack_at) => {
                    self.unacked_since = None;
                    if self.last_seq > self.acked_seq && let Err(e) = self.ack(ws).await {
                        return End::Dead(ws_reason(&e));
                    }
                }
                () = until(resend_at) => {
                    if let Some((_, from)) = self.resend_at.take() && let Err(e) = self.resend(ws, from).await {
                        return End::Dead(ws_reason(&e));
                    }
                }
                () = until(drop_at) => {
                    self.forced_drop(ws).await;
                    return End::Forced;
                }
                r = self.phase.changed() => {
                    if r.is_err() {
                        return End::Stop;
                    }
                }
            }
        }
    }

    /// A connection failure on purpose. Protocol v1 has no client-side acks, so the v1 drop
    /// first flushes what was written and half-closes (nothing the client sent is lost in the
    /// network; what the server sends after is discarded unread and must be replayed on resume).
    /// With `cseq` the drop is abrupt: the outbox covers what the network loses.
    async fn forced_drop(&mut self, ws: &mut Ws) {
        if self.cfg.cseq {
            return;
        }
        let _ = ws.flush().await;
        let _ = ws.get_mut().shutdown().await;
        let _ = timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }

    async fn ack(&mut self, ws: &mut Ws) -> Result<(), WsError> {
        self.acked_seq = self.last_seq;
        self.since_ack = 0;
        self.unacked_since = None;
        ws.send(Message::text(format!(
            r#"{{"type":"ack","seq":{}}}"#,
            self.last_seq
        )))
        .await
    }

    async fn resend(&mut self, ws: &mut Ws, from: u64) -> Result<(), WsError> {
        let frames: Vec<String> = self.outbox.from(from).map(str::to_owned).collect();
        for f in frames {
            self.report.resent += 1;
            ws.feed(Message::text(f)).await?;
        }
        ws.flush().await
    }

    /// A present peer: a destination if it is planned for this room (and within the cap).
    fn learn(&mut self, c: ClientIdx, peer_id: &str) {
        if c == self.idx || !self.members.contains(&c) {
            return;
        }
        if self.known.contains_key(&c) || self.known.len() < known_cap(self.cfg.pattern) {
            self.known.insert(c, peer_id.to_owned());
        }
    }

    /// Without presence: the partners this process runs that have joined, nearest indices first.
    fn learn_from_directory(&mut self) {
        let found: Vec<(ClientIdx, String)> = {
            let Ok(dir) = self.shared.directory.lock() else {
                return;
            };
            let (idx, members) = (self.idx, self.members.clone());
            let after = (idx.saturating_add(1)..members.end).chain(members.start..idx);
            after
                .filter_map(|c| dir.get(&c).map(|id| (c, id.clone())))
                .take(known_cap(self.cfg.pattern))
                .collect()
        };
        for (c, id) in found {
            self.learn(c, &id);
        }
    }

    fn record(&mut self, p: Probe) {
        if !self.members.contains(&p.c) {
            self.report.foreign += 1;
            return;
        }
        if self.report.received.record(p.c, p.n) {
            let lat = unix_us().saturating_sub(p.t);
            self.report
                .latencies_us
                .push(u32::try_from(lat).unwrap_or(u32::MAX));
            self.report.sent_unix_ms.push(p.t / 1000);
            self.shared.delivered.fetch_add(1, Relaxed);
        }
    }

    async fn incoming(&mut self, ws: &mut Ws, text: &str) -> Result<(), End> {
        if self.cfg.mode == Mode::Echo {
            if let Some(p) = wire::parse_probe(text) {
                self.record(p);
            }
            return Ok(());
        }
        let Ok(f) = serde_json::from_str::<Incoming>(text) else {
            self.count_error("loadgen_unparsable_frame");
            return Ok(());
        };
        if self.cfg.mode == Mode::Peerjs {
            match f.kind.as_ref() {
                "OFFER" | "ANSWER" | "CANDIDATE" => {
                    if let Some(p) = f.payload.and_then(|r| wire::parse_probe(r.get())) {
                        self.record(p);
                    }
                }
                other => {
                    let code = format!("peerjs_{}", other.to_lowercase());
                    self.count_error(&code);
                }
            }
            return Ok(());
        }
        if let Some(seq) = f.seq {
            if seq <= self.last_seq {
                self.report.seq_repeats += 1;
                return Ok(());
            }
            if seq != self.last_seq + 1 {
                self.report.seq_gaps += 1;
            }
            self.last_seq = seq;
            self.since_ack += 1;
            if self.cfg.mode == Mode::V1 {
                self.unacked_since.get_or_insert_with(Instant::now);
            }
        }
        match f.kind.as_ref() {
            "signal" | "relay" => {
                if let Some(p) = f.payload.and_then(|r| wire::parse_probe(r.get())) {
                    self.record(p);
                }
            }
            "pong" => self.unanswered_pings = 0,
            "peer-joined" => {
                if let (Some(c), Some(id)) = (f.meta.and_then(|m| m.c), f.peer_id) {
                    self.learn(c, &id);
                }
            }
            "peer-left" => {
                if let Some(id) = f.peer_id {
                    self.known.retain(|_, v| *v != id);
                }
            }
            "ack" => self.confirm(f.cseq.unwrap_or(0)),
            "error" => {
                let code = f.code.clone().unwrap_or_else(|| "unknown".into());
                self.count_error(&code);
                if let Some(cseq) = f.cseq {
                    match code.as_str() {
                        "out_of_order" => {
                            let from = f.expected.unwrap_or(cseq);
                            self.resend_at = Some((Instant::now(), from));
                        }
                        "rate_limited" => {
                            let wait = Duration::from_millis(f.retry_after_ms.unwrap_or(1000));
                            self.resend_at = Some((Instant::now() + wait, cseq));
                        }
                        // A sequenced refusal: the frame was processed (and not delivered).
                        _ => self.confirm(cseq),
                    }
                }
            }
            _ => {}
        }
        // The room's ack riding on a frame (v1.2) counts after the frame.
        if let Some(cseq) = f.acked {
            self.confirm(cseq);
        }
        if self.since_ack >= self.cfg.ack_every
            && let Err(e) = self.ack(ws).await
        {
            return Err(End::Dead(ws_reason(&e)));
        }
        Ok(())
    }

    /// Picks the destinations of the next probe and sends it.
    async fn send_probe(&mut self, ws: &mut Ws) -> Result<(), WsError> {
        let t = unix_us();
        let pattern = if self.cfg.mode == Mode::Echo {
            Pattern::Broadcast
        } else {
            self.cfg.pattern
        };
        let cfg = self.cfg.clone();
        let pad = &cfg.pad;
        let frame = match pattern {
            Pattern::Signal => {
                let Some((dest, id)) = self.next_dest() else {
                    self.report.no_peer += 1;
                    return Ok(());
                };
                let count = self.report.sent.to.entry(dest).or_default();
                let probe = wire::probe_json(
                    Probe {
                        c: self.idx,
                        n: *count,
                        t,
                    },
                    pad,
                );
                *count += 1;
                self.shared.expected.fetch_add(1, Relaxed);
                match self.cfg.mode {
                    Mode::Peerjs => {
                        let kind = ["OFFER", "ANSWER", "CANDIDATE"]
                            .get(usize::try_from(t % 3).unwrap_or(0))
                            .copied()
                            .unwrap_or("OFFER");
                        format!(r#"{{"type":"{kind}","dst":"{id}","payload":{probe}}}"#)
                    }
                    _ => self.v1_frame(format!(
                        r#"{{"type":"signal","to":"{id}","payload":{probe}"#
                    )),
                }
            }
            Pattern::Broadcast => {
                if self.known.is_empty() {
                    self.report.no_peer += 1;
                    return Ok(());
                }
                let probe = wire::probe_json(
                    Probe {
                        c: self.idx,
                        n: self.bcast_n,
                        t,
                    },
                    pad,
                );
                self.bcast_n += 1;
                for c in self.known.keys() {
                    *self.report.sent.to.entry(*c).or_default() += 1;
                }
                self.shared
                    .expected
                    .fetch_add(self.known.len() as u64, Relaxed);
                match self.cfg.mode {
                    Mode::Echo => probe,
                    Mode::Peerjs => {
                        // PeerJS has no broadcast: one message per member, same probe number.
                        let ids: Vec<String> = self.known.values().cloned().collect();
                        self.shared.sent.fetch_add(1, Relaxed);
                        for id in ids {
                            ws.feed(Message::text(format!(
                                r#"{{"type":"OFFER","dst":"{id}","payload":{probe}}}"#
                            )))
                            .await?;
                        }
                        return ws.flush().await;
                    }
                    Mode::V1 => self.v1_frame(format!(r#"{{"type":"broadcast","payload":{probe}"#)),
                }
            }
        };
        self.shared.sent.fetch_add(1, Relaxed);
        ws.send(Message::text(frame)).await
    }

    /// Closes a v1 frame opened by `head`, adding `cseq` (and keeping it in the outbox) in v1.1
    /// mode, and the client's ack when the room speaks v1.2 (a resend after a resume carries the
    /// ack it was first written with: acks are cumulative, an old one changes nothing).
    fn v1_frame(&mut self, mut head: String) -> String {
        if self.acks_ride && self.last_seq > 0 {
            head.push_str(&format!(r#","ack":{}"#, self.last_seq));
            self.acked_seq = self.last_seq;
            self.since_ack = 0;
            self.unacked_since = None;
        }
        if self.cfg.cseq {
            // Counted until the room acknowledges it (`confirm`): the drain waits for zero.
            self.shared.unacked.fetch_add(1, Relaxed);
            self.outbox
                .push(|c| format!(r#"{head},"cseq":{c}}}"#))
                .to_owned()
        } else {
            format!("{head}}}")
        }
    }

    fn next_dest(&mut self) -> Option<(ClientIdx, String)> {
        if self.cfg.presence_off && self.known.len() < known_cap(self.cfg.pattern) {
            self.learn_from_directory();
        }
        if self.known.is_empty() {
            return None;
        }
        let i = self.rr % self.known.len();
        self.rr = self.rr.wrapping_add(1);
        self.known.iter().nth(i).map(|(c, id)| (*c, id.clone()))
    }
}
