//! The room state machine: who is in the room, what each peer is owed, and when.
//!
//! A [`Room`] is fed joins, client frames, socket closes and sweeps, each with the
//! current time, and answers with [`Output`]s: frames to send, sockets to close,
//! storage operations that make the room survive hibernation, and log lines.
//! The Worker's Durable Object is a thin shell that performs them.
//!
//! Every frame addressed to a peer gets the next `seq` of that peer and is kept
//! in the peer's queue until acknowledged, so a peer whose socket dropped can
//! resume and receive exactly the frames after the last one it processed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::PROTOCOL_VERSION;
use crate::ice::{self, IceConfig};
use crate::limits::{Limits, TokenBucket};
use crate::types::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName};
use crate::wire::{self, ClientFrame, ErrorCode, FrameError, LeaveReason, PeerInfo, ServerFrame};

/// WebSocket close codes the room uses (4000-4999 is the application range).
pub mod close_code {
    /// The peer sent `leave`.
    pub const NORMAL: u16 = 1000;
    /// No heartbeat for three periods.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// A newer connection resumed this peer.
    pub const REPLACED: u16 = 4001;
    /// The room is at capacity.
    pub const ROOM_FULL: u16 = 4002;
    /// The socket belongs to no peer of the room (e.g. after the peer expired).
    pub const UNKNOWN_CONNECTION: u16 = 4004;
}

/// What a room is configured with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The room's name.
    pub name: RoomName,
    /// Limits and timers.
    pub limits: Limits,
    /// ICE servers handed out in `welcome`.
    pub ice: IceConfig,
}

/// A new socket asking to join.
#[derive(Debug)]
pub struct Join {
    /// The socket.
    pub conn: ConnId,
    /// The peer's meta (from the query or the token).
    pub meta: Meta,
    /// Present when the client asks to resume an earlier session.
    pub resume: Option<ResumeRequest>,
    /// The identity to use if this becomes a fresh peer (random, from the caller).
    pub fresh_peer: PeerId,
    /// The resume token to issue if this becomes a fresh peer (random, from the caller).
    pub fresh_token: ResumeToken,
}

/// `?resume=<token>&last_seq=<n>`.
#[derive(Debug)]
pub struct ResumeRequest {
    /// The presented token.
    pub token: ResumeToken,
    /// The last `seq` the client processed; absent means none.
    pub last_seq: Option<u64>,
}

/// Something the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a text frame on a socket.
    Send {
        /// The socket.
        conn: ConnId,
        /// The frame.
        text: String,
    },
    /// Close a socket.
    Close {
        /// The socket.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// Persist a change.
    Store(StoreOp),
    /// Emit one structured log line.
    Log(LogEvent),
}

/// A change to the room's durable storage.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace a peer's record.
    PutPeer(PeerRecord),
    /// Remove a peer and its queue.
    DeletePeer(PeerId),
    /// Append a frame to a peer's queue.
    PushQueue {
        /// The recipient.
        peer: PeerId,
        /// Its `seq`.
        seq: u64,
        /// The frame.
        text: String,
    },
    /// Drop queued frames with `seq <= through`.
    TrimQueue {
        /// The recipient.
        peer: PeerId,
        /// Highest dropped `seq`.
        through: u64,
    },
}

/// One structured log event (the shell adds the room and the time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// `join`, `resume`, `resume_failed`, `away`, `leave`, `reap`, `expire`, `error`.
    pub event: &'static str,
    /// The peer concerned, if any.
    pub peer: Option<PeerId>,
    /// An error code or a reason.
    pub detail: Option<&'static str>,
}

/// What survives hibernation about a peer (its queue is stored row by row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer.
    pub peer_id: PeerId,
    /// Meta JSON text.
    pub meta: String,
    /// SHA-256 of the resume token.
    pub token_digest: String,
    /// Every frame with `seq > floor` is still queued.
    pub floor: u64,
    /// The live socket, if connected.
    pub conn: Option<u64>,
    /// When the live socket connected.
    pub conn_since: Millis,
    /// When the peer went away, if away.
    pub away_since: Option<Millis>,
    /// What others are told if the resume window expires.
    pub away_reason: LeaveReason,
    /// Whether others were already told the peer left (a reaped zombie).
    pub announced_left: bool,
    /// When the peer first joined.
    pub joined_at: Millis,
}

/// Counters reported by the stats endpoint; persisted so they survive hibernation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Client frames received (auto-answered pings excluded).
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// `error` frames sent, by code.
    pub errors: BTreeMap<String, u64>,
}

/// A snapshot for `GET /v1/rooms/{room}/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomStats {
    /// The room.
    pub room: String,
    /// Peers with a live socket.
    pub peers_connected: usize,
    /// Peers away but still resumable.
    pub peers_away: usize,
    /// Client frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    text: String,
}

#[derive(Debug)]
struct Peer {
    rec: PeerRecord,
    meta: Meta,
    next_seq: u64,
    queue: VecDeque<Queued>,
    queue_bytes: usize,
    bucket: TokenBucket,
    last_heard: Millis,
}

impl Peer {
    fn conn(&self) -> Option<ConnId> {
        self.rec.conn.map(ConnId)
    }

    fn visible(&self) -> bool {
        !self.rec.announced_left
    }
}

/// Whether a frame may be refused when the recipient's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Presence: never refused; the oldest frames make room instead.
    Presence,
    /// Application data (`signal`, `relay`): refused with `queue_full`.
    App,
}

/// The room: peers, their queues and counters.
#[derive(Debug)]
pub struct Room {
    cfg: RoomConfig,
    peers: BTreeMap<PeerId, Peer>,
    by_conn: HashMap<ConnId, PeerId>,
    counters: Counters,
    counters_dirty: bool,
    next_sweep: Option<Millis>,
    out: Vec<Output>,
}

impl Room {
    /// An empty room.
    pub fn new(cfg: RoomConfig) -> Room {
        Room {
            cfg,
            peers: BTreeMap::new(),
            by_conn: HashMap::new(),
            counters: Counters::default(),
            counters_dirty: false,
            next_sweep: None,
            out: Vec::new(),
        }
    }

    /// Rebuilds a room from storage after hibernation or a restart.
    pub fn restore(
        cfg: RoomConfig,
        records: Vec<PeerRecord>,
        queued: Vec<(PeerId, u64, String)>,
        counters: Counters,
        now: Millis,
    ) -> Room {
        let mut room = Room::new(cfg);
        room.counters = counters;
        for rec in records {
            let meta = Meta::parse(&rec.meta).unwrap_or_else(|_| Meta::empty());
            if let Some(c) = rec.conn {
                room.by_conn.insert(ConnId(c), rec.peer_id.clone());
            }
            let peer = Peer {
                next_seq: rec.floor.saturating_add(1),
                meta,
                queue: VecDeque::new(),
                queue_bytes: 0,
                bucket: room.new_bucket(now),
                last_heard: rec.conn_since,
                rec,
            };
            room.peers.insert(peer.rec.peer_id.clone(), peer);
        }
        let mut queued = queued;
        queued.sort_by_key(|(_, seq, _)| *seq);
        for (peer_id, seq, text) in queued {
            if let Some(p) = room.peers.get_mut(&peer_id)
                && seq > p.rec.floor
            {
                p.next_seq = p.next_seq.max(seq.saturating_add(1));
                p.queue_bytes = p.queue_bytes.saturating_add(text.len());
                p.queue.push_back(Queued { seq, text });
            }
        }
        room.schedule_sweep(now);
        room
    }

    /// The configuration.
    pub fn config(&self) -> &RoomConfig {
        &self.cfg
    }

    /// Takes the outputs produced so far, in order.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Returns the counters if they changed since the last call.
    pub fn take_dirty_counters(&mut self) -> Option<&Counters> {
        if std::mem::take(&mut self.counters_dirty) {
            Some(&self.counters)
        } else {
            None
        }
    }

    /// When [`Room::handle_sweep`] should next run, if ever.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let expiry = self
            .peers
            .values()
            .filter_map(|p| p.rec.away_since)
            .map(|t| t.plus(self.cfg.limits.resume_window_ms))
            .min();
        match (self.next_sweep, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the room has no peers at all (connected or away).
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A stats snapshot.
    pub fn stats(&self) -> RoomStats {
        let connected = self.peers.values().filter(|p| p.rec.conn.is_some()).count();
        RoomStats {
            room: self.cfg.name.as_str().to_owned(),
            peers_connected: connected,
            peers_away: self.peers.len() - connected,
            frames_in: self.counters.frames_in,
            frames_out: self.counters.frames_out,
            errors: self.counters.errors.clone(),
        }
    }

    /// The peer a socket belongs to.
    pub fn peer_of(&self, conn: ConnId) -> Option<&PeerId> {
        self.by_conn.get(&conn)
    }

    /// A socket asks to join (or resume).
    pub fn handle_join(&mut self, join: Join, now: Millis) {
        let Join {
            conn,
            meta,
            resume,
            fresh_peer,
            fresh_token,
        } = join;
        if let Some(req) = resume {
            match self.try_resume(conn, req, now) {
                Ok(()) => return,
                Err(why) => {
                    self.send_error(conn, None, ErrorCode::ResumeFailed, why);
                }
            }
        }
        if self.peers.len() >= self.cfg.limits.max_peers {
            self.send_error(conn, None, ErrorCode::RoomFull, "the room is at capacity");
            self.out.push(Output::Close {
                conn,
                code: close_code::ROOM_FULL,
                reason: "room full",
            });
            return;
        }
        if self.peers.contains_key(&fresh_peer) {
            // 64 random bits collided: vanishingly rare, and the client can retry.
            self.send_error(conn, None, ErrorCode::Internal, "peer id collision; retry");
            return;
        }
        let rec = PeerRecord {
            peer_id: fresh_peer.clone(),
            meta: meta.as_json().to_owned(),
            token_digest: fresh_token.digest(),
            floor: 0,
            conn: Some(conn.0),
            conn_since: now,
            away_since: None,
            away_reason: LeaveReason::Timeout,
            announced_left: false,
            joined_at: now,
        };
        let peer = Peer {
            rec,
            meta,
            next_seq: 1,
            queue: VecDeque::new(),
            queue_bytes: 0,
            bucket: self.new_bucket(now),
            last_heard: now,
        };
        self.out
            .push(Output::Store(StoreOp::PutPeer(peer.rec.clone())));
        self.peers.insert(fresh_peer.clone(), peer);
        self.by_conn.insert(conn, fresh_peer.clone());
        self.send_welcome(conn, &fresh_peer, &fresh_token, false, now);
        self.announce_joined(&fresh_peer);
        self.log("join", Some(fresh_peer), None);
        self.schedule_sweep(now);
    }

    fn try_resume(
        &mut self,
        conn: ConnId,
        req: ResumeRequest,
        now: Millis,
    ) -> Result<(), &'static str> {
        let digest = req.token.digest();
        let Some(peer_id) = self
            .peers
            .values()
            .find(|p| p.rec.token_digest == digest)
            .map(|p| p.rec.peer_id.clone())
        else {
            return Err("unknown or expired resume token");
        };
        let last = req.last_seq.unwrap_or(0);
        let old_conn = {
            let Some(p) = self.peers.get_mut(&peer_id) else {
                return Err("unknown or expired resume token");
            };
            if last < p.rec.floor {
                return Err("frames after last_seq are no longer kept");
            }
            if last >= p.next_seq {
                return Err("last_seq is ahead of what the server sent");
            }
            let old = p.conn();
            p.rec.conn = Some(conn.0);
            p.rec.conn_since = now;
            p.rec.away_since = None;
            p.last_heard = now;
            old
        };
        if let Some(old) = old_conn {
            self.by_conn.remove(&old);
            self.out.push(Output::Close {
                conn: old,
                code: close_code::REPLACED,
                reason: "replaced by a resumed connection",
            });
        }
        self.by_conn.insert(conn, peer_id.clone());
        self.trim(&peer_id, last);
        self.send_welcome(conn, &peer_id, &req.token, true, now);
        let was_announced = self
            .peers
            .get_mut(&peer_id)
            .map(|p| std::mem::replace(&mut p.rec.announced_left, false))
            .unwrap_or(false);
        if was_announced {
            self.announce_joined(&peer_id);
        }
        if let Some(p) = self.peers.get(&peer_id) {
            for q in p.queue.iter().filter(|q| q.seq > last) {
                self.out.push(Output::Send {
                    conn,
                    text: q.text.clone(),
                });
                self.counters.frames_out += 1;
            }
            self.out
                .push(Output::Store(StoreOp::PutPeer(p.rec.clone())));
        }
        self.counters_dirty = true;
        self.log("resume", Some(peer_id), None);
        self.schedule_sweep(now);
        Ok(())
    }

    /// A text frame arrived on a socket.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: Millis) {
        let Some(from) = self.by_conn.get(&conn).cloned() else {
            self.out.push(Output::Close {
                conn,
                code: close_code::UNKNOWN_CONNECTION,
                reason: "unknown connection",
            });
            return;
        };
        let limited = self
            .frame_from(&from, now)
            .is_some_and(|p| !p.bucket.try_take(now));
        if limited {
            return self.send_error(
                conn,
                Some(&from),
                ErrorCode::RateLimited,
                "slow down: too many frames",
            );
        }
        if text.len() > self.cfg.limits.max_frame_bytes {
            return self.send_error(
                conn,
                Some(&from),
                ErrorCode::PayloadTooLarge,
                "frame exceeds the size limit",
            );
        }
        match wire::parse_client_frame(text) {
            Ok(frame) => self.dispatch(conn, &from, frame),
            Err(FrameError { code, message }) => {
                let msg = message.into_owned();
                self.send_error(conn, Some(&from), code, &msg);
            }
        }
    }

    /// A binary frame arrived on a socket (not part of protocol v1).
    pub fn handle_binary(&mut self, conn: ConnId, now: Millis) {
        let Some(from) = self.by_conn.get(&conn).cloned() else {
            return;
        };
        self.frame_from(&from, now);
        self.send_error(
            conn,
            Some(&from),
            ErrorCode::UnsupportedFrame,
            "binary frames are not supported; send JSON text",
        );
    }

    /// Counts a frame from `peer` and notes it as a sign of life.
    fn frame_from(&mut self, peer: &PeerId, now: Millis) -> Option<&mut Peer> {
        self.counters.frames_in += 1;
        self.counters_dirty = true;
        let p = self.peers.get_mut(peer)?;
        p.last_heard = p.last_heard.max(now);
        Some(p)
    }

    fn dispatch(&mut self, conn: ConnId, from: &PeerId, frame: ClientFrame<'_>) {
        match frame {
            ClientFrame::Signal { to, payload } => {
                self.unicast(conn, from, &to, |seq, from| {
                    ServerFrame::Signal { seq, from, payload }.to_json()
                });
            }
            ClientFrame::Relay { to, data } => {
                self.unicast(conn, from, &to, |seq, from| {
                    ServerFrame::Relay { seq, from, data }.to_json()
                });
            }
            ClientFrame::Broadcast { payload } => self.broadcast(conn, from, payload),
            ClientFrame::Ack { seq } => {
                let last_sent = self
                    .peers
                    .get(from)
                    .map_or(0, |p| p.next_seq.saturating_sub(1));
                self.trim(from, seq.0.min(last_sent));
            }
            ClientFrame::Leave => self.leave(conn, from),
            ClientFrame::Ping => {
                self.out.push(Output::Send {
                    conn,
                    text: wire::PONG.to_owned(),
                });
                self.counters.frames_out += 1;
            }
        }
    }

    fn unicast(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &PeerId,
        build: impl FnOnce(u64, &PeerId) -> String,
    ) {
        if !self.peers.get(to).is_some_and(Peer::visible) {
            return self.send_error(
                conn,
                Some(from),
                ErrorCode::UnknownPeer,
                "no such peer in this room",
            );
        }
        if self.deliver(to, Kind::App, |seq| build(seq, from)).is_err() {
            self.send_error(
                conn,
                Some(from),
                ErrorCode::QueueFull,
                "the peer is away and its queue is full",
            );
        }
    }

    fn broadcast(&mut self, conn: ConnId, from: &PeerId, payload: &RawValue) {
        let targets: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.visible() && p.rec.peer_id != *from)
            .map(|p| p.rec.peer_id.clone())
            .collect();
        for to in targets {
            let sent = self.deliver(&to, Kind::App, |seq| {
                ServerFrame::Signal { seq, from, payload }.to_json()
            });
            if sent.is_err() {
                let msg = format!("peer {to} is away and its queue is full");
                self.send_error(conn, Some(from), ErrorCode::QueueFull, &msg);
            }
        }
    }

    fn leave(&mut self, conn: ConnId, peer_id: &PeerId) {
        self.by_conn.remove(&conn);
        let Some(peer) = self.peers.remove(peer_id) else {
            return;
        };
        self.out
            .push(Output::Store(StoreOp::DeletePeer(peer_id.clone())));
        self.out.push(Output::Close {
            conn,
            code: close_code::NORMAL,
            reason: "left",
        });
        if peer.visible() {
            self.announce_left(peer_id, LeaveReason::Leave);
        }
        self.log(
            "leave",
            Some(peer_id.clone()),
            Some(LeaveReason::Leave.as_str()),
        );
    }

    /// A socket closed (`clean` when the client closed it with 1000/1001).
    pub fn handle_close(&mut self, conn: ConnId, clean: bool, now: Millis) {
        let Some(peer_id) = self.by_conn.remove(&conn) else {
            return;
        };
        let reason = if clean {
            LeaveReason::Closed
        } else {
            LeaveReason::Timeout
        };
        if let Some(p) = self.peers.get_mut(&peer_id) {
            p.rec.conn = None;
            p.rec.away_since = Some(now);
            p.rec.away_reason = reason;
            self.out
                .push(Output::Store(StoreOp::PutPeer(p.rec.clone())));
        }
        self.log("away", Some(peer_id), Some(reason.as_str()));
    }

    /// The periodic sweep: reaps silent sockets and expires away peers.
    ///
    /// `live` lists every socket the runtime still holds, with the time of its
    /// last auto-answered ping, if any.
    pub fn handle_sweep(&mut self, live: &[(ConnId, Option<Millis>)], now: Millis) {
        let live_map: HashMap<ConnId, Option<Millis>> = live.iter().copied().collect();
        for (conn, _) in live {
            if !self.by_conn.contains_key(conn) {
                self.out.push(Output::Close {
                    conn: *conn,
                    code: close_code::UNKNOWN_CONNECTION,
                    reason: "unknown connection",
                });
            }
        }
        let dead_after = self.cfg.limits.dead_after_ms();
        let connected: Vec<(PeerId, ConnId)> = self
            .peers
            .values()
            .filter_map(|p| p.conn().map(|c| (p.rec.peer_id.clone(), c)))
            .collect();
        for (peer_id, conn) in connected {
            match live_map.get(&conn) {
                // The runtime no longer holds the socket: it closed while no handler ran.
                None => self.handle_close(conn, false, now),
                Some(last_ping) => {
                    let heard = self.peers.get(&peer_id).map_or(now, |p| p.last_heard);
                    let last = heard.max(last_ping.unwrap_or_default());
                    if now.since(last) > dead_after {
                        self.reap(&peer_id, conn, now);
                    }
                }
            }
        }
        let window = self.cfg.limits.resume_window_ms;
        let expired: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.rec.away_since.is_some_and(|t| t.plus(window) <= now))
            .map(|p| p.rec.peer_id.clone())
            .collect();
        for peer_id in expired {
            if let Some(p) = self.peers.remove(&peer_id) {
                self.out
                    .push(Output::Store(StoreOp::DeletePeer(peer_id.clone())));
                if p.visible() {
                    self.announce_left(&peer_id, p.rec.away_reason);
                }
                self.log("expire", Some(peer_id), Some(p.rec.away_reason.as_str()));
            }
        }
        self.next_sweep = None;
        self.schedule_sweep(now);
    }

    fn reap(&mut self, peer_id: &PeerId, conn: ConnId, now: Millis) {
        self.by_conn.remove(&conn);
        self.out.push(Output::Close {
            conn,
            code: close_code::HEARTBEAT_TIMEOUT,
            reason: "heartbeat timeout",
        });
        let Some(p) = self.peers.get_mut(peer_id) else {
            return;
        };
        p.rec.conn = None;
        p.rec.away_since = Some(now);
        p.rec.away_reason = LeaveReason::Timeout;
        p.rec.announced_left = true;
        self.out
            .push(Output::Store(StoreOp::PutPeer(p.rec.clone())));
        self.announce_left(peer_id, LeaveReason::Timeout);
        self.log(
            "reap",
            Some(peer_id.clone()),
            Some(LeaveReason::Timeout.as_str()),
        );
    }

    fn schedule_sweep(&mut self, now: Millis) {
        let any_connected = self.peers.values().any(|p| p.rec.conn.is_some());
        if !any_connected {
            self.next_sweep = None;
        } else if self.next_sweep.is_none() {
            self.next_sweep = Some(now.plus(self.cfg.limits.heartbeat_ms));
        }
    }

    fn new_bucket(&self, now: Millis) -> TokenBucket {
        TokenBucket::new(self.cfg.limits.rate_per_s, self.cfg.limits.rate_burst, now)
    }

    fn send_welcome(
        &mut self,
        conn: ConnId,
        peer_id: &PeerId,
        token: &ResumeToken,
        resumed: bool,
        now: Millis,
    ) {
        let ice_servers = ice::ice_servers(&self.cfg.ice, peer_id.as_str(), now);
        let peers: Vec<PeerInfo<'_>> = self
            .peers
            .values()
            .filter(|p| p.visible() && p.rec.peer_id != *peer_id)
            .map(|p| PeerInfo {
                peer_id: &p.rec.peer_id,
                meta: p.meta.raw(),
            })
            .collect();
        let text = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            peer_id,
            resume_token: token.expose(),
            room: self.cfg.name.as_str(),
            peers,
            ice_servers: &ice_servers,
            heartbeat_ms: self.cfg.limits.heartbeat_ms,
            resumed,
        }
        .to_json();
        self.out.push(Output::Send { conn, text });
        self.counters.frames_out += 1;
        self.counters_dirty = true;
    }

    fn announce_joined(&mut self, joined: &PeerId) {
        let Some(meta) = self.peers.get(joined).map(|p| p.meta.clone()) else {
            return;
        };
        for to in self.others_visible(joined) {
            // Presence is never refused, so the result carries no information.
            let _ = self.deliver(&to, Kind::Presence, |seq| {
                ServerFrame::PeerJoined {
                    seq,
                    peer_id: joined,
                    meta: meta.raw(),
                }
                .to_json()
            });
        }
    }

    fn announce_left(&mut self, left: &PeerId, reason: LeaveReason) {
        for to in self.others_visible(left) {
            let _ = self.deliver(&to, Kind::Presence, |seq| {
                ServerFrame::PeerLeft {
                    seq,
                    peer_id: left,
                    reason,
                }
                .to_json()
            });
        }
    }

    fn others_visible(&self, except: &PeerId) -> Vec<PeerId> {
        self.peers
            .values()
            .filter(|p| p.visible() && p.rec.peer_id != *except)
            .map(|p| p.rec.peer_id.clone())
            .collect()
    }

    /// Gives the next `seq` of `to` to a frame, queues it for resume and sends it if connected.
    fn deliver(
        &mut self,
        to: &PeerId,
        kind: Kind,
        build: impl FnOnce(u64) -> String,
    ) -> Result<(), QueueFull> {
        let limits = &self.cfg.limits;
        let Some(p) = self.peers.get_mut(to) else {
            return Ok(());
        };
        let full =
            p.queue.len() >= limits.queue_max_frames || p.queue_bytes >= limits.queue_max_bytes;
        if kind == Kind::App && p.rec.conn.is_none() && full {
            return Err(QueueFull);
        }
        let seq = p.next_seq;
        p.next_seq += 1;
        let text = build(seq);
        self.out.push(Output::Store(StoreOp::PushQueue {
            peer: to.clone(),
            seq,
            text: text.clone(),
        }));
        p.queue_bytes = p.queue_bytes.saturating_add(text.len());
        if let Some(conn) = p.conn() {
            self.out.push(Output::Send {
                conn,
                text: text.clone(),
            });
            self.counters.frames_out += 1;
            self.counters_dirty = true;
        }
        p.queue.push_back(Queued { seq, text });
        // Over the bound, the oldest frames go; a later resume from before them
        // fails loudly with `resume_failed` rather than losing frames silently.
        let mut dropped_through = None;
        while p.queue.len() > limits.queue_max_frames || p.queue_bytes > limits.queue_max_bytes {
            let Some(q) = p.queue.pop_front() else { break };
            p.queue_bytes = p.queue_bytes.saturating_sub(q.text.len());
            dropped_through = Some(q.seq);
        }
        if let Some(through) = dropped_through {
            self.trim(to, through);
        }
        Ok(())
    }

    /// Forgets frames of `peer` with `seq <= through`.
    fn trim(&mut self, peer: &PeerId, through: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if through <= p.rec.floor {
            return;
        }
        while p.queue.front().is_some_and(|q| q.seq <= through) {
            if let Some(q) = p.queue.pop_front() {
                p.queue_bytes = p.queue_bytes.saturating_sub(q.text.len());
            }
        }
        p.rec.floor = through;
        self.out.push(Output::Store(StoreOp::TrimQueue {
            peer: peer.clone(),
            through,
        }));
        self.out
            .push(Output::Store(StoreOp::PutPeer(p.rec.clone())));
    }

    fn send_error(&mut self, conn: ConnId, peer: Option<&PeerId>, code: ErrorCode, message: &str) {
        self.out.push(Output::Send {
            conn,
            text: wire::error_frame(code, message),
        });
        self.counters.frames_out += 1;
        *self
            .counters
            .errors
            .entry(code.as_str().to_owned())
            .or_default() += 1;
        self.counters_dirty = true;
        self.log("error", peer.cloned(), Some(code.as_str()));
    }

    fn log(&mut self, event: &'static str, peer: Option<PeerId>, detail: Option<&'static str>) {
        self.out.push(Output::Log(LogEvent {
            event,
            peer,
            detail,
        }));
    }
}

#[derive(Debug)]
struct QueueFull;
