//! The forwarding core: every SFU session of this node, one str0m `Rtc` each, sans IO.
//!
//! Fed with `handle_offer`/`handle_datagram`/`handle_timeout`/… and a time value; drained with
//! [`Sfu::poll_output`] (datagrams to send, closed sessions, then the next deadline). Sessions
//! are grouped by room; DataChannel messages and media frames received on one session are
//! written into the other sessions of the same room, which produces their datagrams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelData, ChannelId, Reliability};
use str0m::crypto::dtls::DtlsCert;
use str0m::media::{Direction, KeyframeRequestKind, MediaData, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::{
    Candidate, CandidateKind, Event, IceConnectionState, IceCreds, Input, Output as RtcOutput, Rtc,
};
use switchboard_proto::sfu_token::Claims;
use switchboard_proto::{PeerId, RoomName};

use super::envelope::{self, ENVELOPE_PROTOCOL, To};
use super::layers::{LayerChoice, RateMeter};
use super::route;

/// Label of the reserved control channel (server-initiated renegotiation).
pub const CONTROL_LABEL: &str = "switchboard-control";

/// Largest DataChannel message a client may send us: 256 KiB of payload plus an envelope header.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 + envelope::MAX_HEADER_BYTES;

/// SCTP send budget per session (str0m's default is 128 KiB): room for two of the largest
/// messages, and 40 Mbit/s of a channel in flight at 100 ms round trip; beyond it messages wait in
/// the session's own queue. Not more: str0m's SCTP (sctp-proto 0.10) spends CPU per message that
/// grows with the data buffered in the association, so a deep buffer makes every forwarded message
/// dearer (docs/BENCHMARKS.md, "Relay SFU": a 20,000-message burst cost the SFU thread 7.4 s of
/// CPU with 1 MiB, 1.8 s with 256 KiB).
pub const SCTP_BUFFER_BYTES: usize = 512 * 1024;

/// A session that has not connected by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// At most one keyframe request per source track in this interval.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// How often a subscriber's simulcast layer choice is re-decided.
const LAYER_INTERVAL: Duration = Duration::from_millis(100);

/// A subscriber's BWE probes for this multiple of the publisher's top layer, clearly above the
/// estimate that moving up to it needs (see `layers::UP_HEADROOM_PERCENT`).
const DESIRED_OVER_TOP_LAYER: u64 = 2;

/// The bandwidth estimate a session starts from (str0m's BWE probes up from here).
const INITIAL_ESTIMATE_KBPS: u64 = 1_000;

/// Source addresses remembered per session (ICE checks may come from several).
const MAX_ADDRS_PER_SESSION: usize = 8;

/// Identifies one session: the `{id}` of `/v1/sessions/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u128);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl SessionId {
    /// Parses the 32 hex digits of [`fmt::Display`].
    pub fn parse(s: &str) -> Option<SessionId> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(s, 16).ok().map(SessionId))
            .flatten()
    }
}

/// The core's settings.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// UDP host candidates advertised in every answer (the public IP and the UDP port).
    pub candidates: Vec<SocketAddr>,
    /// Passive ICE-TCP host candidates (RFC 6544), advertised after the UDP ones.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Sessions held at once; more are refused with [`SessionError::AtCapacity`].
    pub max_sessions: usize,
    /// Bytes queued per session while its SCTP send buffer is full; past this the session is
    /// dropped as a slow consumer.
    pub max_queue_bytes: usize,
}

/// Why a session request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// The body is not an SDP offer str0m accepts; the reason is for the client.
    BadOffer(String),
    /// The offer has neither an application (DataChannel) nor an audio/video m-line.
    NothingToForward,
    /// `max_sessions` reached.
    AtCapacity,
    /// No such session.
    NotFound,
    /// A trickle fragment line could not be used.
    BadFragment(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::BadOffer(r) => write!(f, "bad SDP offer: {r}"),
            SessionError::NothingToForward => {
                f.write_str("the offer has no DataChannel and no audio/video m-line")
            }
            SessionError::AtCapacity => f.write_str("the relay is at its session capacity"),
            SessionError::NotFound => f.write_str("no such session"),
            SessionError::BadFragment(r) => write!(f, "bad ICE fragment: {r}"),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `DELETE /v1/sessions/{id}`.
    Deleted,
    /// The same peer of the same room opened a new session.
    Replaced,
    /// ICE consent lapsed (no checks for ~15 s) or never started.
    IceDisconnected,
    /// Not connected within [`CONNECT_TIMEOUT`].
    ConnectTimeout,
    /// The peer closed DTLS/SCTP.
    PeerClosed,
    /// Its send queue passed `max_queue_bytes`.
    SlowConsumer,
    /// str0m reported an error for its input.
    Error,
}

impl CloseReason {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Deleted => "deleted",
            CloseReason::Replaced => "replaced",
            CloseReason::IceDisconnected => "ice_disconnected",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Error => "error",
        }
    }
}

/// What the shell must do next.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// A session ended (already removed).
    Closed(SessionId, CloseReason),
    /// Nothing more until this time (or new input).
    Timeout(Instant),
    /// No session: nothing happens until new input.
    Idle,
}

/// Counters for `/metrics`; monotonic except `sessions`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Live sessions.
    pub sessions: u64,
    /// Sessions ever created.
    pub sessions_created: u64,
    /// DataChannel messages written to receivers.
    pub dc_messages_forwarded: u64,
    /// Payload bytes of those messages.
    pub dc_bytes_forwarded: u64,
    /// Messages dropped: unreliable channel full, no matching channel, bad envelope.
    pub dc_messages_dropped: u64,
    /// Media frames written to receivers.
    pub media_frames_forwarded: u64,
    /// Datagrams no session claimed.
    pub unroutable_datagrams: u64,
    /// Sessions dropped as slow consumers.
    pub slow_consumers: u64,
    /// ICE restarts done over `PATCH`.
    pub ice_restarts: u64,
}

/// The control channel's messages (JSON), both directions.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Offer { sdp: String },
    Answer { sdp: String },
}

#[derive(Debug)]
struct ChannelInfo {
    label: String,
    envelope: bool,
    reliable: bool,
}

#[derive(Debug)]
struct TrackIn {
    mid: Mid,
    last_keyframe_request: Option<Instant>,
    /// Simulcast layers seen on this track, with their measured bitrates.
    layers: Vec<(Rid, RateMeter)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackOutState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    NegotiatingStop(Mid),
}

#[derive(Debug)]
struct TrackOut {
    source: SessionId,
    source_mid: Mid,
    kind: MediaKind,
    state: TrackOutState,
    /// The simulcast layer this subscriber gets (see `layers`).
    layers: LayerChoice,
    /// When `layers` is next re-decided.
    next_layer_update: Option<Instant>,
}

#[derive(Debug)]
struct Queued {
    channel: ChannelId,
    binary: bool,
    data: Vec<u8>,
}

struct Session {
    room: RoomName,
    peer: PeerId,
    rtc: Rtc,
    ufrag: String,
    remote_ufrag: Option<String>,
    addrs: Vec<SocketAddr>,
    /// After an ICE restart, until the first authenticated check with the new credentials: the
    /// addresses the session used before (see `forget_old_paths`).
    restarted_from: Vec<SocketAddr>,
    channels: HashMap<ChannelId, ChannelInfo>,
    control: Option<ChannelId>,
    tracks_in: Vec<TrackIn>,
    tracks_out: Vec<TrackOut>,
    pending: Option<SdpPendingOffer>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    connected: bool,
    /// The latest egress bandwidth estimate (TWCC or REMB), bits/s.
    estimate: Option<u64>,
    /// The `desired` bitrate last given to str0m's BWE, bits/s.
    desired: u64,
    created: Instant,
    /// The deadline of this session's live entry in `Sfu::timers`.
    deadline: Option<Instant>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("room", &self.room)
            .field("peer", &self.peer)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn channel_by_label(&self, label: &str) -> Option<(ChannelId, &ChannelInfo)> {
        self.channels
            .iter()
            .find(|(_, c)| c.label == label)
            .map(|(id, c)| (*id, c))
    }
}

/// Every SFU session of this node.
pub struct Sfu {
    config: SfuConfig,
    cert: Option<DtlsCert>,
    sessions: HashMap<SessionId, Session>,
    rooms: HashMap<RoomName, Vec<SessionId>>,
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Sessions touched since they were last polled.
    dirty: Vec<SessionId>,
    events: VecDeque<(SessionId, Event)>,
    outputs: VecDeque<Output>,
    stats: SfuStats,
    /// Reused per media frame for the room's member list.
    scratch: Vec<SessionId>,
    /// Reused per simulcast frame for the track's layer rates.
    scratch_rates: Vec<(Rid, u64)>,
}

impl fmt::Debug for Sfu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sfu")
            .field("sessions", &self.sessions.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// ICE credentials from 16 random bytes: an 8-character ufrag and a 24-character password.
fn ice_creds(random: &[u8]) -> IceCreds {
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (ufrag, pass) = random.split_at(random.len().min(4));
    IceCreds {
        ufrag: hex(ufrag),
        pass: hex(pass),
    }
}

/// The text of an str0m error, without the SDP it may quote.
fn reason(e: impl fmt::Display) -> String {
    let mut s = e.to_string();
    s.truncate(200);
    s
}

impl Sfu {
    /// A core with no sessions. One DTLS certificate is made here and shared by all sessions.
    pub fn new(config: SfuConfig) -> Sfu {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        Sfu {
            config,
            cert,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            outputs: VecDeque::new(),
            stats: SfuStats::default(),
            scratch: Vec::new(),
            scratch_rates: Vec::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> SfuStats {
        SfuStats {
            sessions: self.sessions.len() as u64,
            ..self.stats
        }
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Opens a session for the token's peer with a client's SDP offer; returns its id and the
    /// SDP answer. `random` seeds the session id and ICE credentials (the core draws none).
    /// A session of the same peer in the same room is replaced.
    pub fn handle_offer(
        &mut self,
        claims: &Claims,
        offer: &str,
        random: [u8; 32],
        now: Instant,
    ) -> Result<(SessionId, String), SessionError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| SessionError::BadOffer(reason(e)))?;
        let sdp = offer.to_sdp_string();
        let forwards = sdp.lines().any(|l| {
            l.starts_with("m=application") || l.starts_with("m=audio") || l.starts_with("m=video")
        });
        if !forwards {
            return Err(SessionError::NothingToForward);
        }
        let replaced = self
            .rooms
            .get(&claims.room)
            .into_iter()
            .flatten()
            .copied()
            .find(|s| {
                self.sessions
                    .get(s)
                    .is_some_and(|s| s.peer == claims.peer_id)
            });
        if replaced.is_none() && self.sessions.len() >= self.config.max_sessions {
            return Err(SessionError::AtCapacity);
        }
        let (id_bytes, rest) = random.split_at(16);
        let id = SessionId(u128::from_be_bytes(id_bytes.try_into().unwrap_or_default()));
        if self.sessions.contains_key(&id) {
            return Err(SessionError::BadOffer("session id collision; retry".into()));
        }
        let creds = ice_creds(rest);
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_local_ice_credentials(creds.clone())
            .set_sctp_max_buffered_amount(SCTP_BUFFER_BYTES)
            .set_sctp_max_message_size(MAX_MESSAGE_BYTES as u32)
            // TWCC-based estimates of each subscriber's downlink choose its simulcast layers.
            .enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)));
        if let Some(cert) = &self.cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        let mut rtc = builder.build(now);
        for addr in &self.config.candidates {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        for addr in &self.config.tcp_candidates {
            let c = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build();
            if let Ok(c) = c {
                rtc.add_local_candidate(c);
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SessionError::BadOffer(reason(e)))?;
        if let Some(old) = replaced {
            self.close(old, CloseReason::Replaced, now);
        }
        let mut session = Session {
            room: claims.room.clone(),
            peer: claims.peer_id.clone(),
            rtc,
            ufrag: creds.ufrag.clone(),
            remote_ufrag: sdp
                .lines()
                .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
                .map(str::to_owned),
            addrs: Vec::new(),
            restarted_from: Vec::new(),
            channels: HashMap::new(),
            control: None,
            tracks_in: Vec::new(),
            tracks_out: Vec::new(),
            pending: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            connected: false,
            estimate: None,
            desired: 0,
            created: now,
            deadline: None,
        };
        // Tracks the room already publishes reach the newcomer by renegotiation once its
        // control channel is open.
        for other in self.rooms.get(&claims.room).into_iter().flatten() {
            if let Some(o) = self.sessions.get(other) {
                for t in &o.tracks_in {
                    if let Some(kind) = o.rtc.media(t.mid).map(|m| m.kind()) {
                        session.tracks_out.push(TrackOut {
                            source: *other,
                            source_mid: t.mid,
                            kind,
                            state: TrackOutState::ToOpen,
                            layers: LayerChoice::default(),
                            next_layer_update: None,
                        });
                    }
                }
            }
        }
        self.by_ufrag.insert(creds.ufrag, id);
        self.rooms.entry(claims.room.clone()).or_default().push(id);
        self.sessions.insert(id, session);
        self.stats.sessions_created += 1;
        self.dirty.push(id);
        self.run(now);
        Ok((id, answer.to_sdp_string()))
    }

    /// `PATCH /v1/sessions/{id}` with an `application/trickle-ice-sdpfrag` body (RFC 8840).
    ///
    /// `a=candidate:` lines are added as trickled remote candidates (an ICE-lite relay learns
    /// the client's addresses from its checks anyway, so they only help the first check find
    /// the session sooner). A fragment whose `a=ice-ufrag`/`a=ice-pwd` differ from the client's
    /// current ones is an ICE restart (RFC 9725 §4.3.2): the session takes the client's new
    /// credentials, gets new local ones (from `random`; the core draws none) and the answer
    /// is `Some(fragment)` with the relay's new `a=ice-ufrag`/`a=ice-pwd`, which the client puts
    /// into its remote description. DTLS, SCTP, channels and tracks carry on over the new
    /// candidate pair.
    pub fn handle_patch(
        &mut self,
        id: SessionId,
        fragment: &str,
        random: [u8; 16],
        now: Instant,
    ) -> Result<Option<String>, SessionError> {
        let session = self.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        let field = |name: &str| {
            fragment
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(str::trim)
        };
        let (ufrag, pwd) = (field("a=ice-ufrag:"), field("a=ice-pwd:"));
        let restart = ufrag.is_some_and(|u| session.remote_ufrag.as_deref() != Some(u));
        let mut candidates = Vec::new();
        for line in fragment.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("a=")
                && c.starts_with("candidate:")
            {
                candidates.push(
                    Candidate::from_sdp_string(c)
                        .map_err(|e| SessionError::BadFragment(reason(e)))?,
                );
            }
        }
        let mut answer = None;
        if restart {
            let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
                return Err(SessionError::BadFragment(
                    "an ICE restart needs both a=ice-ufrag and a=ice-pwd".into(),
                ));
            };
            // RFC 8839 §5.4: ufrag 4-256 and pwd 22-256 ICE characters.
            let ice_chars = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            };
            if !(4..=256).contains(&ufrag.len())
                || !(22..=256).contains(&pwd.len())
                || !ice_chars(ufrag)
                || !ice_chars(pwd)
            {
                return Err(SessionError::BadFragment(
                    "a=ice-ufrag/a=ice-pwd out of RFC 8839 bounds".into(),
                ));
            }
            let local = ice_creds(&random);
            let mut direct = session.rtc.direct_api();
            direct.set_remote_ice_credentials(IceCreds {
                ufrag: ufrag.to_owned(),
                pass: pwd.to_owned(),
            });
            direct.set_local_ice_credentials(local.clone());
            if self.by_ufrag.get(&session.ufrag) == Some(&id) {
                self.by_ufrag.remove(&session.ufrag);
            }
            self.by_ufrag.insert(local.ufrag.clone(), id);
            session.ufrag = local.ufrag.clone();
            session.remote_ufrag = Some(ufrag.to_owned());
            session.restarted_from = session.addrs.clone();
            // A relay offer still out carries the old credentials; the client's answer to it
            // would not match them, so its track changes are offered again.
            if session.pending.take().is_some() {
                for t in &mut session.tracks_out {
                    t.state = match t.state {
                        TrackOutState::Negotiating(_) => TrackOutState::ToOpen,
                        TrackOutState::NegotiatingStop(m) => TrackOutState::ToStop(m),
                        st => st,
                    };
                }
            }
            self.stats.ice_restarts += 1;
            answer = Some(format!(
                "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
                local.ufrag, local.pass
            ));
        }
        for c in candidates {
            session.rtc.add_remote_candidate(c);
        }
        self.dirty.push(id);
        self.run(now);
        Ok(answer)
    }

    /// Ends a session at the client's request.
    pub fn handle_delete(&mut self, id: SessionId, now: Instant) -> Result<(), SessionError> {
        if !self.sessions.contains_key(&id) {
            return Err(SessionError::NotFound);
        }
        self.close(id, CloseReason::Deleted, now);
        self.run(now);
        Ok(())
    }

    /// A datagram arrived on `destination` (our socket) from `source`; for ICE-TCP, one RFC 4571
    /// frame of the connection from `source`.
    pub fn handle_datagram(
        &mut self,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
        now: Instant,
    ) {
        let ufrag = route::local_ufrag(contents);
        let by_ufrag = || ufrag.and_then(|u| self.by_ufrag.get(u).copied());
        let Some(id) = self.by_addr.get(&source).copied().or_else(by_ufrag) else {
            self.stats.unroutable_datagrams += 1;
            return;
        };
        let Ok(contents) = contents.try_into() else {
            self.stats.unroutable_datagrams += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if !session.rtc.accepts(&input) {
            self.stats.unroutable_datagrams += 1;
            return;
        }
        if !session.restarted_from.is_empty() && ufrag == Some(session.ufrag.as_str()) {
            forget_old_paths(session, source, &mut self.by_addr, id);
        }
        let failed = session.rtc.handle_input(input).is_err();
        if !failed
            && !session.addrs.contains(&source)
            && session.addrs.len() < MAX_ADDRS_PER_SESSION
        {
            session.addrs.push(source);
            if let Some(previous) = self.by_addr.insert(source, id) {
                // The address moved to another session (a new session from the same port):
                // the old one no longer owns it.
                if previous != id
                    && let Some(p) = self.sessions.get_mut(&previous)
                {
                    p.addrs.retain(|a| *a != source);
                }
            }
        }
        if failed {
            self.close(id, CloseReason::Error, now);
        } else {
            self.dirty.push(id);
        }
        self.run(now);
    }

    /// Time has passed; handles every session whose deadline is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            if s.deadline != Some(t) {
                continue; // superseded
            }
            s.deadline = None;
            if !s.connected && now.saturating_duration_since(s.created) >= CONNECT_TIMEOUT {
                self.close(id, CloseReason::ConnectTimeout, now);
                continue;
            }
            if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.close(id, CloseReason::Error, now);
                continue;
            }
            self.dirty.push(id);
        }
        self.run(now);
    }

    /// The next thing to do: datagrams and closed sessions first, then the next deadline.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if self
                .sessions
                .get(&id)
                .is_some_and(|s| s.deadline == Some(t))
            {
                return Output::Timeout(t);
            }
            self.timers.pop();
        }
        Output::Idle
    }

    /// Polls every dirty session until nothing is left to propagate.
    fn run(&mut self, now: Instant) {
        loop {
            while let Some(id) = self.dirty.pop() {
                self.drain(id, now);
            }
            let Some((id, event)) = self.events.pop_front() else {
                break;
            };
            self.on_event(id, event, now);
        }
    }

    /// Drains one session's outputs until its timeout; events are queued for `run`.
    fn drain(&mut self, id: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        flush_queue(s, &mut self.stats);
        if s.control.is_some() && s.pending.is_none() && needs_negotiation(s) {
            let peers = self.sessions_peers(id);
            if let Some(s) = self.sessions.get_mut(&id) {
                negotiate(s, &peers);
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut failed = false;
        loop {
            match s.rtc.poll_output() {
                Ok(RtcOutput::Transmit(t)) => self.outputs.push_back(Output::Transmit(t)),
                Ok(RtcOutput::Event(e)) => self.events.push_back((id, e)),
                Ok(RtcOutput::Timeout(t)) => {
                    let mut t = t.max(now);
                    if !s.connected {
                        t = t.min(s.created + CONNECT_TIMEOUT);
                    }
                    if s.deadline != Some(t) {
                        s.deadline = Some(t);
                        self.timers.push(Reverse((t, id)));
                    }
                    break;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed || !s.rtc.is_alive() {
            let why = if failed {
                CloseReason::Error
            } else {
                CloseReason::PeerClosed
            };
            self.close(id, why, now);
        }
    }

    /// Peer ids of the sessions of `id`'s room, for stream ids in renegotiation offers.
    fn sessions_peers(&self, id: SessionId) -> HashMap<SessionId, PeerId> {
        let Some(room) = self.sessions.get(&id).map(|s| &s.room) else {
            return HashMap::new();
        };
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|o| self.sessions.get(o).map(|s| (*o, s.peer.clone())))
            .collect()
    }

    fn others(&self, id: SessionId) -> Vec<SessionId> {
        let Some(room) = self.sessions.get(&id).map(|s| &s.room) else {
            return Vec::new();
        };
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .copied()
            .filter(|o| *o != id)
            .collect()
    }

    fn on_event(&mut self, id: SessionId, event: Event, now: Instant) {
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.close(id, CloseReason::IceDisconnected, now);
            }
            Event::Connected => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.connected = true;
                    self.dirty.push(id);
                }
            }
            Event::Closed => self.close(id, CloseReason::PeerClosed, now),
            Event::ChannelOpen(cid, label) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                let (envelope, reliable) = s
                    .rtc
                    .channel(cid)
                    .and_then(|c| {
                        c.config().map(|c| {
                            (
                                c.protocol == ENVELOPE_PROTOCOL,
                                c.reliability == Reliability::Reliable,
                            )
                        })
                    })
                    .unwrap_or((false, true));
                if label == CONTROL_LABEL {
                    s.control = Some(cid);
                }
                s.channels.insert(
                    cid,
                    ChannelInfo {
                        label,
                        envelope,
                        reliable,
                    },
                );
                self.dirty.push(id);
            }
            Event::ChannelClose(cid) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.channels.remove(&cid);
                    if s.control == Some(cid) {
                        s.control = None;
                    }
                    s.queue.retain(|q| q.channel != cid);
                    s.queued_bytes = s.queue.iter().map(|q| q.data.len()).sum();
                }
            }
            Event::ChannelData(d) => self.on_channel_data(id, d, now),
            Event::MediaAdded(m) => {
                // Only media the client sends us becomes a source; our own send-only lines
                // (added by renegotiation) are announced here too.
                if !matches!(m.direction, Direction::RecvOnly | Direction::SendRecv) {
                    return;
                }
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                if s.tracks_in.iter().any(|t| t.mid == m.mid) {
                    return;
                }
                s.tracks_in.push(TrackIn {
                    mid: m.mid,
                    last_keyframe_request: None,
                    layers: Vec::new(),
                });
                for o in self.others(id) {
                    if let Some(os) = self.sessions.get_mut(&o) {
                        os.tracks_out.push(TrackOut {
                            source: id,
                            source_mid: m.mid,
                            kind: m.kind,
                            state: TrackOutState::ToOpen,
                            layers: LayerChoice::default(),
                            next_layer_update: None,
                        });
                        self.dirty.push(o);
                    }
                }
            }
            Event::MediaData(d) => self.on_media(id, d, now),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })
            | Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.estimate = Some(estimate.as_u64());
                }
            }
            Event::KeyframeRequest(r) => {
                let source = self.sessions.get(&id).and_then(|s| {
                    s.tracks_out
                        .iter()
                        .find(|t| t.state == TrackOutState::Open(r.mid))
                        .map(|t| (t.source, t.source_mid, t.layers.forwarding()))
                });
                if let Some((src, mid, rid)) = source {
                    self.request_keyframe(src, mid, rid, r.kind, now);
                }
            }
            _ => {}
        }
    }

    fn request_keyframe(
        &mut self,
        id: SessionId,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(t) = s.tracks_in.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if t.last_keyframe_request
            .is_some_and(|l| now.saturating_duration_since(l) < KEYFRAME_INTERVAL)
        {
            return;
        }
        if let Some(mut w) = s.rtc.writer(mid)
            && w.is_request_keyframe_possible(kind)
            && w.request_keyframe(rid, kind).is_ok()
        {
            t.last_keyframe_request = Some(now);
            self.dirty.push(id);
        }
    }

    fn on_channel_data(&mut self, id: SessionId, d: ChannelData, now: Instant) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        if s.control == Some(d.id) {
            self.on_control(id, &d.data, now);
            return;
        }
        let Some(info) = s.channels.get(&d.id) else {
            return;
        };
        let label = info.label.clone();
        let (targets, data): (Vec<SessionId>, Vec<u8>) = if info.envelope {
            let Some((to, payload)) = envelope::parse(&d.data) else {
                self.stats.dc_messages_dropped += 1;
                return;
            };
            let data = envelope::encode(&s.peer, payload);
            let targets = match to {
                To::All => self.others(id),
                To::Peer(p) => self
                    .others(id)
                    .into_iter()
                    .filter(|o| self.sessions.get(o).is_some_and(|s| s.peer == p))
                    .collect(),
            };
            (targets, data)
        } else {
            (self.others(id), d.data)
        };
        if targets.is_empty() {
            self.stats.dc_messages_dropped += 1;
        }
        for t in targets {
            let Some(ts) = self.sessions.get_mut(&t) else {
                continue;
            };
            let Some((cid, info)) = ts.channel_by_label(&label) else {
                self.stats.dc_messages_dropped += 1;
                continue;
            };
            let reliable = info.reliable;
            let len = data.len() as u64;
            let max = self.config.max_queue_bytes;
            match deliver(ts, cid, d.binary, data.clone(), reliable, max) {
                Delivery::Written | Delivery::Queued => {
                    self.stats.dc_messages_forwarded += 1;
                    self.stats.dc_bytes_forwarded += len;
                    self.dirty.push(t);
                }
                Delivery::Dropped => self.stats.dc_messages_dropped += 1,
                Delivery::Overflow => {
                    self.stats.slow_consumers += 1;
                    self.close(t, CloseReason::SlowConsumer, now);
                }
                Delivery::Failed => self.close(t, CloseReason::Error, now),
            }
        }
    }

    fn on_control(&mut self, id: SessionId, data: &[u8], now: Instant) {
        let Ok(msg) = serde_json::from_slice::<Control>(data) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match msg {
            Control::Answer { sdp } => {
                let Some(pending) = s.pending.take() else {
                    return;
                };
                let accepted = SdpAnswer::from_sdp_string(&sdp)
                    .ok()
                    .is_some_and(|a| s.rtc.sdp_api().accept_answer(pending, a).is_ok());
                let mut opened = Vec::new();
                for t in &mut s.tracks_out {
                    t.state = match (t.state, accepted) {
                        (TrackOutState::Negotiating(m), true) => {
                            opened.push((t.source, t.source_mid));
                            TrackOutState::Open(m)
                        }
                        (TrackOutState::Negotiating(_), false) => TrackOutState::ToOpen,
                        (TrackOutState::NegotiatingStop(m), false) => TrackOutState::ToStop(m),
                        (st, _) => st,
                    };
                }
                s.tracks_out
                    .retain(|t| !matches!(t.state, TrackOutState::NegotiatingStop(_)));
                self.dirty.push(id);
                // A new receiver needs a keyframe to start decoding.
                for (src, mid) in opened {
                    self.request_keyframe(src, mid, None, KeyframeRequestKind::Pli, now);
                }
            }
            Control::Offer { sdp } => {
                // Glare: the relay is the polite side. Accepting the client's offer invalidates
                // ours; the tracks it carried are offered again once this exchange is done.
                let Ok(offer) = SdpOffer::from_sdp_string(&sdp) else {
                    return;
                };
                let Ok(answer) = s.rtc.sdp_api().accept_offer(offer) else {
                    return;
                };
                s.pending = None;
                for t in &mut s.tracks_out {
                    t.state = match t.state {
                        TrackOutState::Negotiating(_) => TrackOutState::ToOpen,
                        TrackOutState::NegotiatingStop(m) => TrackOutState::ToStop(m),
                        st => st,
                    };
                }
                let reply = Control::Answer {
                    sdp: answer.to_sdp_string(),
                };
                send_control(s, &reply);
                self.dirty.push(id);
            }
        }
    }

    fn on_media(&mut self, id: SessionId, d: MediaData, now: Instant) {
        if !d.contiguous {
            self.request_keyframe(id, d.mid, d.rid, KeyframeRequestKind::Pli, now);
        }
        // Simulcast: the layer's bitrate is measured, and a snapshot of the track's layers is
        // what each subscriber's choice is made from (a reused buffer, no allocation once warm).
        let mut rates = std::mem::take(&mut self.scratch_rates);
        rates.clear();
        if let Some(rid) = d.rid
            && let Some(t) = self
                .sessions
                .get_mut(&id)
                .and_then(|s| s.tracks_in.iter_mut().find(|t| t.mid == d.mid))
        {
            match t.layers.iter_mut().find(|(r, _)| *r == rid) {
                Some((_, meter)) => meter.record(d.data.len(), now),
                None => {
                    let mut meter = RateMeter::default();
                    meter.record(d.data.len(), now);
                    t.layers.push((rid, meter));
                }
            }
            rates.extend(t.layers.iter().map(|(r, m)| (*r, m.bps())));
        }
        let keyframe = d.is_keyframe();
        // What a subscriber's BWE should probe for: twice the top layer. Going up a layer needs
        // an estimate of 100/UP_HEADROOM_PERCENT (1.25×) the layer's rate; a probe target at
        // that same line would leave the estimate hovering around it, so a subscriber on a
        // noisy path would rarely hold it for UP_HOLD.
        let desired = rates
            .iter()
            .map(|(_, bps)| *bps)
            .max()
            .unwrap_or(0)
            .saturating_mul(DESIRED_OVER_TOP_LAYER);
        // Per frame: the member list goes into a reused buffer, no allocation once warm.
        let mut members = std::mem::take(&mut self.scratch);
        members.clear();
        if let Some(room) = self.sessions.get(&id).map(|s| &s.room) {
            members.extend(
                self.rooms
                    .get(room)
                    .into_iter()
                    .flatten()
                    .filter(|o| **o != id),
            );
        }
        let mut keyframes: Vec<Rid> = Vec::new();
        let Sfu {
            sessions,
            stats,
            dirty,
            ..
        } = self;
        for &o in &members {
            let Some(os) = sessions.get_mut(&o) else {
                continue;
            };
            let estimate = os.estimate;
            let Some(t) = os
                .tracks_out
                .iter_mut()
                .find(|t| t.source == id && t.source_mid == d.mid)
            else {
                continue;
            };
            let TrackOutState::Open(mid) = t.state else {
                continue;
            };
            if let Some(rid) = d.rid {
                if t.next_layer_update.is_none_or(|at| now >= at) {
                    t.next_layer_update = Some(now + LAYER_INTERVAL);
                    if let Some(switch) = t.layers.update(&rates, estimate, now)
                        && !keyframes.contains(&switch)
                    {
                        keyframes.push(switch);
                    }
                }
                if t.layers.switching()
                    && let Some(target) = t.layers.target()
                    && !keyframes.contains(&target)
                {
                    // Until the new layer's keyframe comes (rate-limited per track).
                    keyframes.push(target);
                }
                let forward = t.layers.forward(rid, keyframe);
                // Told again only on a change of more than a quarter.
                if desired > 0 && desired.abs_diff(os.desired).saturating_mul(4) > os.desired {
                    os.desired = desired;
                    os.rtc
                        .bwe()
                        .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
                }
                if !forward {
                    continue;
                }
            }
            let Some(w) = os.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = w.match_params(d.params) else {
                continue;
            };
            if w.write(pt, d.network_time, d.time, d.data.clone()).is_ok() {
                stats.media_frames_forwarded += 1;
                dirty.push(o);
            }
        }
        self.scratch = members;
        self.scratch_rates = rates;
        for rid in keyframes {
            self.request_keyframe(id, d.mid, Some(rid), KeyframeRequestKind::Pli, now);
        }
    }

    /// Removes a session; the room's other sessions stop forwarding its tracks.
    fn close(&mut self, id: SessionId, why: CloseReason, _now: Instant) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        // DTLS close_notify and SCTP shutdown tell a live peer at once.
        let _ = s.rtc.close();
        while let Ok(o) = s.rtc.poll_output() {
            match o {
                RtcOutput::Transmit(t) => self.outputs.push_back(Output::Transmit(t)),
                RtcOutput::Timeout(_) => break,
                RtcOutput::Event(_) => {}
            }
        }
        for a in &s.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(&s.ufrag) == Some(&id) {
            self.by_ufrag.remove(&s.ufrag);
        }
        if let Some(members) = self.rooms.get_mut(&s.room) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(&s.room);
            }
        }
        for o in self.rooms.get(&s.room).cloned().unwrap_or_default() {
            if let Some(os) = self.sessions.get_mut(&o) {
                os.tracks_out.retain_mut(|t| {
                    if t.source != id {
                        return true;
                    }
                    match t.state {
                        TrackOutState::ToOpen => false,
                        TrackOutState::Negotiating(m) => {
                            // Stopped once the answer for the pending offer is in.
                            t.state = TrackOutState::ToStop(m);
                            true
                        }
                        TrackOutState::Open(m) => {
                            t.state = TrackOutState::ToStop(m);
                            true
                        }
                        TrackOutState::ToStop(_) | TrackOutState::NegotiatingStop(_) => true,
                    }
                });
                self.dirty.push(o);
            }
        }
        self.outputs.push_back(Output::Closed(id, why));
    }
}

/// The first authenticated check after an ICE restart. If it comes from a new address, the
/// client moved (a network change): the remote candidates at the old addresses are dropped, so
/// the ICE-lite agent sends on the new path at once instead of on the nominated old one until
/// its consent lapses (~15 s). From an old address, the path is the same and nothing changes.
fn forget_old_paths(
    s: &mut Session,
    source: SocketAddr,
    by_addr: &mut HashMap<SocketAddr, SessionId>,
    id: SessionId,
) {
    let old = std::mem::take(&mut s.restarted_from);
    if old.contains(&source) {
        return;
    }
    let mut direct = s.rtc.direct_api();
    for addr in &old {
        for proto in [Protocol::Udp, Protocol::Tcp] {
            if let Ok(c) = Candidate::host(*addr, proto) {
                direct.invalidate_candidate(&c);
            }
            let prflx = Candidate::from_parts(
                String::new(),
                1,
                proto,
                0,
                *addr,
                CandidateKind::PeerReflexive,
                None,
                None,
                None,
            );
            direct.invalidate_candidate(&prflx);
        }
        if by_addr.get(addr) == Some(&id) {
            by_addr.remove(addr);
        }
    }
    s.addrs.retain(|a| !old.contains(a));
}

enum Delivery {
    Written,
    Queued,
    Dropped,
    Overflow,
    Failed,
}

/// Writes a message into a session's channel, or queues it behind earlier ones (reliable
/// channels) or drops it (unreliable channels) while the SCTP send buffer is full.
fn deliver(
    s: &mut Session,
    channel: ChannelId,
    binary: bool,
    data: Vec<u8>,
    reliable: bool,
    max_queue_bytes: usize,
) -> Delivery {
    if s.queue.is_empty() {
        let Some(mut ch) = s.rtc.channel(channel) else {
            return Delivery::Dropped;
        };
        match ch.write(binary, &data) {
            Ok(true) => return Delivery::Written,
            Ok(false) => {}
            Err(_) => return Delivery::Failed,
        }
    }
    if !reliable {
        return Delivery::Dropped;
    }
    s.queued_bytes += data.len();
    s.queue.push_back(Queued {
        channel,
        binary,
        data,
    });
    if s.queued_bytes > max_queue_bytes {
        Delivery::Overflow
    } else {
        Delivery::Queued
    }
}

/// Writes queued messages while the SCTP send buffer takes them.
fn flush_queue(s: &mut Session, stats: &mut SfuStats) {
    while let Some(q) = s.queue.front() {
        let Some(mut ch) = s.rtc.channel(q.channel) else {
            // The channel went away; its messages cannot be delivered.
            s.queued_bytes = s.queued_bytes.saturating_sub(q.data.len());
            s.queue.pop_front();
            stats.dc_messages_dropped += 1;
            continue;
        };
        match ch.write(q.binary, &q.data) {
            Ok(true) => {
                s.queued_bytes = s.queued_bytes.saturating_sub(q.data.len());
                s.queue.pop_front();
            }
            Ok(false) | Err(_) => break,
        }
    }
}

/// Control messages are few and small; they queue without the slow-consumer bound.
fn send_control(s: &mut Session, msg: &Control) {
    let Some(cid) = s.control else {
        return;
    };
    let Ok(json) = serde_json::to_vec(msg) else {
        return;
    };
    let _ = deliver(s, cid, false, json, true, usize::MAX);
}

fn needs_negotiation(s: &Session) -> bool {
    s.tracks_out
        .iter()
        .any(|t| matches!(t.state, TrackOutState::ToOpen | TrackOutState::ToStop(_)))
}

/// Offers the session's pending track changes over its control channel.
fn negotiate(s: &mut Session, peers: &HashMap<SessionId, PeerId>) {
    let mut change = s.rtc.sdp_api();
    for t in &mut s.tracks_out {
        match t.state {
            TrackOutState::ToOpen => {
                // The stream id is the publisher's peer id: the page sees it as
                // `RTCTrackEvent.streams[0].id`.
                let stream = peers.get(&t.source).map(|p| p.to_string());
                let mid = change.add_media(t.kind, Direction::SendOnly, stream, None, None);
                t.state = TrackOutState::Negotiating(mid);
            }
            TrackOutState::ToStop(mid) => {
                change.stop_media(mid);
                t.state = TrackOutState::NegotiatingStop(mid);
            }
            _ => {}
        }
    }
    let Some((offer, pending)) = change.apply() else {
        return;
    };
    s.pending = Some(pending);
    send_control(
        s,
        &Control::Offer {
            sdp: offer.to_sdp_string(),
        },
    );
}
