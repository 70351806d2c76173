//! The room state machine: who is in the room, what each peer is owed, and when.
//!
//! A [`Room`] is fed joins, client frames, socket closes, sweeps, checkpoints
//! and drains, each with the current time, and answers with [`Output`]s: frames
//! to send, sockets to close, storage operations that make the room survive
//! hibernation and restarts, counters to persist, and log lines. The Worker's
//! Durable Object is a thin shell that performs them.
//!
//! Every frame addressed to a peer gets the next `seq` of that peer and is kept
//! in the peer's queue until acknowledged, so a peer whose socket dropped can
//! resume and receive exactly the frames after the last one it processed.
//!
//! What is written when (docs/PROTOCOL.md, "Durability", argues it):
//! - membership changes, presence frames, frames to away peers, frames from v1
//!   senders (no `cseq`) and refusals of `cseq` frames are written in the event
//!   that makes them, so nothing is delivered or acknowledged before they are
//!   durable;
//! - frames from v1.1 senders (with `cseq`) to connected peers are delivered from
//!   memory; a checkpoint ([`Room::handle_checkpoint`]) writes those still
//!   unacknowledged after `flush_after_ms`, and the sender's `ack` waits until each
//!   of its frames is written or acknowledged by its recipient. A frame lost in a
//!   crash is therefore never acknowledged, and its sender resends it.

mod queue;
mod relays;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use queue::{Body, Entry, Inflight};
pub use queue::{StoredFrame, StoredQueue};

use crate::ice::IceConfig;
use crate::limits::{Limits, TokenBucket};
use crate::sfu_token::SfuConfig;
use crate::types::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName, Seq, TraceId, UserId};
use crate::wire::{
    self, ClientFrame, ErrorCode, ErrorInfo, FrameError, LeaveReason, PeerInfo, SeqBody,
    ServerFrame, WireLimits,
};
use crate::{PROTOCOL_REV, PROTOCOL_VERSION};

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
    /// Going away (a drain): the peer is kept; resume after a random delay in
    /// `[0, retry_after_ms]` (the close reason is `retry_after_ms=<n>`).
    pub const GOING_AWAY: u16 = 4003;
    /// The socket belongs to no peer of the room (e.g. after the peer expired).
    pub const UNKNOWN_CONNECTION: u16 = 4004;
}

/// Longest `retry_after_ms` a drain announces.
pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// At most one `out_of_order` error per peer per this many milliseconds.
const OUT_OF_ORDER_WINDOW_MS: u64 = 1000;

/// Counters and the peer records' progress (`floor`, `cseq_hi`) are written at
/// most this often unless other writes happen anyway. Each such batch is a
/// timer wake-up and a write, but an object with unwritten records cannot
/// hibernate, so a longer wait keeps idle rooms in memory (and billed) longer.
pub const COUNTERS_EVERY_MS: u64 = 5000;

/// The shortest wait before a checkpoint that only writes records and
/// counters, so that one wake-up's events share one write.
const LAZY_DELAY_MS: u64 = 250;

/// A room that received a client frame this recently when its lazy batch is
/// due is busy: the batch waits until `LAZY_BUSY_MAX_MS` after the last one
/// (unless it has acknowledged rows to delete).
/// A busy room cannot hibernate anyway, and each batch is a write and a timer
/// wake-up; the price is that a room that goes quiet right after may stay in
/// memory that long before it can hibernate.
const BUSY_WITHIN_MS: u64 = 1000;

/// The longest a busy room's records and counters wait to be written.
pub const LAZY_BUSY_MAX_MS: u64 = 30_000;

/// Presence frames (`peer-joined`, `peer-left`) to a connected peer are not
/// written before delivery: the membership itself (the peer records) is
/// written at once, every `welcome` (a resume's too) lists the members, and a
/// presence frame is written like any other memory-first frame when its
/// recipient goes away or has not acknowledged it by `flush_after_ms`. So a
/// join in a room of N costs one record write, not N queue rows. Frames to an
/// away peer are always written (`enqueue`).
const PRESENCE_DURABLE: bool = false;

/// What a room is configured with.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// The room's name.
    pub name: RoomName,
    /// Limits and timers.
    pub limits: Limits,
    /// ICE servers handed out in `welcome`.
    pub ice: IceConfig,
    /// The relays' session endpoints (`welcome.sfu`); `None`: no `sfu` rung is offered.
    pub sfu: Option<SfuConfig>,
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
    /// The trace id to give a fresh peer (random, from the caller).
    pub fresh_trace: TraceId,
    /// The stable user behind the socket, from the router; absent: the peer id.
    pub user: Option<UserId>,
    /// The client joined with `caps=acks` (v1.2): it reads `acked` on delivered frames, so the
    /// room's `ack` to it may ride on a sequenced frame it is sent anyway.
    pub reads_acked: bool,
    /// The client joined with `presence=off`: it is sent no `peer-joined`/`peer-left` and an
    /// empty `welcome.peers` (others still see it join and leave). Ignored on a resume: the
    /// peer keeps what it joined with.
    pub presence_off: bool,
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
        reason: String,
    },
    /// Persist a change.
    Store(StoreOp),
    /// Persist the counters (written from checkpoints and sweeps, never per frame).
    Counters(Counters),
    /// Emit one structured log line.
    Log(LogEvent),
}

/// A change to the room's durable storage.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace a peer's record.
    PutPeer(PeerRecord),
    /// Remove a peer and its queue rows.
    DeletePeer(PeerId),
    /// Insert a frame body (once, however many queues refer to it).
    PutBody {
        /// Row id.
        id: u64,
        /// The body.
        body: SeqBody,
    },
    /// Append a reference to a body to a peer's queue.
    PushQueue {
        /// The recipient.
        peer: PeerId,
        /// Its `seq`.
        seq: u64,
        /// The body's row id.
        body: u64,
        /// Bytes accounted for it ([`SeqBody::len`]).
        bytes: usize,
    },
    /// Drop queued rows with `seq <= through`.
    TrimQueue {
        /// The recipient.
        peer: PeerId,
        /// Highest dropped `seq`.
        through: u64,
    },
    /// Change a queued row's `seq` (closing gaps after a restart lost frames).
    Renumber {
        /// The recipient.
        peer: PeerId,
        /// The stored `seq`.
        from: u64,
        /// The new `seq` (always lower).
        to: u64,
    },
    /// Delete body rows below `below` that no queue row refers to.
    GcBodies {
        /// Bodies with this id or higher may still be referenced later.
        below: u64,
    },
}

/// One structured log event (the shell adds the room and the time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// `join`, `resume`, `resume_failed`, `away`, `leave`, `reap`, `expire`, `drain`, `error`.
    pub event: &'static str,
    /// The peer concerned, if any.
    pub peer: Option<PeerId>,
    /// The peer's trace id, if the peer is known.
    pub trace: Option<TraceId>,
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
    /// Highest client `cseq` processed whose effects are durable (v1.1; `welcome.cseq`).
    #[serde(default)]
    pub cseq_hi: u64,
    /// The peer's trace id.
    #[serde(default)]
    pub trace_id: TraceId,
    /// The stable user behind the peer, if the router named one.
    #[serde(default)]
    pub user: Option<UserId>,
    /// The live socket's client reads `acked` on delivered frames (`caps=acks`, v1.2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reads_acked: bool,
    /// The peer joined with `presence=off` (receives no presence).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presence_off: bool,
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
    /// Bytes held by the room's resume queues, counted per recipient.
    pub queued_bytes: usize,
}

#[derive(Debug)]
struct Peer {
    rec: PeerRecord,
    meta: Meta,
    next_seq: u64,
    /// The frames in memory (all of them when `loaded`).
    queue: VecDeque<Entry>,
    /// Whether `queue` holds every queued frame; an away peer restored from
    /// storage is not loaded until it resumes.
    loaded: bool,
    /// Frames queued (in memory or, when not loaded, in storage).
    len: usize,
    /// Bytes queued, counted as [`SeqBody::len`] per frame.
    bytes: usize,
    bucket: TokenBucket,
    /// While set and in the future, frames are dropped without an answer.
    limited_until: Option<Millis>,
    /// No further `out_of_order` error before this time.
    ooo_until: Option<Millis>,
    last_heard: Millis,
    /// Highest client `cseq` processed (`rec.cseq_hi` is the durable part).
    cseq_hi: u64,
    /// The client resent a duplicate and wants to hear the settled `cseq` again.
    ack_wanted: bool,
    /// Frames from this peer still only in memory, by `cseq`, counted once per
    /// recipient queue holding one (a broadcast's frame once per recipient).
    inflight: Inflight,
    /// The record changed and must be written by a later checkpoint (with
    /// other writes, or lazily: see `handle_checkpoint`).
    dirty: bool,
    /// Restored from storage, where `rec.cseq_hi` may lag what the room had
    /// acknowledged (it is written lazily): the peer's first `cseq` frame may
    /// skip ahead of it, once.
    cseq_restored: bool,
    /// Durable rows up to this `seq` are acknowledged and may be deleted.
    trim_through: Option<u64>,
    /// Restored from storage: the client may have seen frames storage lost.
    stale: bool,
}

impl Peer {
    fn conn(&self) -> Option<ConnId> {
        self.rec.conn.map(ConnId)
    }

    fn visible(&self) -> bool {
        !self.rec.announced_left
    }

    /// The highest `cseq` whose frames are all settled: processed, and each
    /// written or acknowledged by its recipient.
    fn settled(&self) -> u64 {
        self.inflight.first().map_or(self.cseq_hi, |first| {
            self.cseq_hi.min(first.saturating_sub(1))
        })
    }

    fn user(&self) -> &str {
        self.rec
            .user
            .as_ref()
            .map_or(self.rec.peer_id.as_str(), UserId::as_str)
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

/// What the `cseq` of a client frame says to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Process it (`cseq` is absent, or the next one).
    Process,
    /// Seen before: do not deliver again, acknowledge.
    Duplicate,
    /// Ahead of the next one: refuse.
    Gap,
}

/// The room: peers, their queues and counters.
#[derive(Debug)]
pub struct Room {
    cfg: RoomConfig,
    peers: BTreeMap<PeerId, Peer>,
    by_conn: HashMap<ConnId, PeerId>,
    counters: Counters,
    counters_dirty: bool,
    /// When counters were last written (unset until the first checkpoint or sweep).
    counters_written: Option<Millis>,
    /// When the last client frame arrived.
    last_frame: Option<Millis>,
    next_sweep: Option<Millis>,
    checkpoint_at: Option<Millis>,
    next_body_id: u64,
    /// Sum of every peer's `bytes`.
    room_bytes: usize,
    /// Queue entries not yet written.
    nondurable: usize,
    /// Rows were trimmed since the last body collection.
    gc_due: bool,
    /// While a client frame is handled: the room's `ack`s and sequenced frames to clients that
    /// read `acked`, so the `ack`s can ride on those frames ([`Room::fold_acks`]).
    fold: Option<Fold>,
    /// The buffers of the last [`Fold`] and of `trim`, kept so a frame's event allocates none.
    spare: Spare,
    out: Vec<Output>,
}

/// Buffers reused from one event to the next (emptied after each use).
#[derive(Debug, Default)]
struct Spare {
    fold: Fold,
    origins: Vec<Option<(PeerId, u64)>>,
    senders: Vec<PeerId>,
}

/// The sends of one event that [`Room::fold_acks`] may merge, as indices into `Room::out`.
#[derive(Debug, Default)]
struct Fold {
    /// `ack` frames: socket, acknowledged `cseq`, index.
    acks: Vec<(ConnId, u64, usize)>,
    /// Sequenced frames: socket, index.
    frames: Vec<(ConnId, usize)>,
    /// Scratch for [`Room::fold_acks`]: indices of the `ack`s that ride on a frame.
    folded: Vec<usize>,
    /// Scratch for [`Room::fold_acks`]: frame index and the `cseq` it carries.
    carried: Vec<(usize, u64)>,
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
            counters_written: None,
            last_frame: None,
            next_sweep: None,
            checkpoint_at: None,
            next_body_id: 1,
            room_bytes: 0,
            nondurable: 0,
            gc_due: false,
            fold: None,
            spare: Spare::default(),
            out: Vec::new(),
        }
    }

    /// Rebuilds a room from storage after hibernation or a restart: the peer
    /// records, a summary of each peer's stored queue (not its frames), the
    /// counters and the next free body id. Queues are loaded with
    /// [`Room::load_queue`] for the peers [`Room::peers_to_load`] names, and for
    /// a resuming peer named by [`Room::resume_target`].
    pub fn restore(
        cfg: RoomConfig,
        records: Vec<PeerRecord>,
        stored: Vec<StoredQueue>,
        counters: Counters,
        next_body_id: u64,
        now: Millis,
    ) -> Room {
        let mut room = Room::new(cfg);
        room.counters = counters;
        room.counters_written = Some(now);
        room.next_body_id = next_body_id.max(1);
        let stored: HashMap<PeerId, StoredQueue> =
            stored.into_iter().map(|s| (s.peer.clone(), s)).collect();
        for rec in records {
            let meta = Meta::parse(&rec.meta).unwrap_or_else(|_| Meta::empty());
            if let Some(c) = rec.conn {
                room.by_conn.insert(ConnId(c), rec.peer_id.clone());
            }
            let (len, bytes, max_seq) = stored
                .get(&rec.peer_id)
                .map_or((0, 0, 0), |s| (s.len, s.bytes, s.max_seq));
            room.room_bytes = room.room_bytes.saturating_add(bytes);
            let peer = Peer {
                next_seq: rec.floor.max(max_seq).saturating_add(1),
                meta,
                queue: VecDeque::new(),
                loaded: len == 0,
                len,
                bytes,
                bucket: room.new_bucket(now),
                limited_until: None,
                ooo_until: None,
                last_heard: rec.conn_since,
                cseq_hi: rec.cseq_hi,
                ack_wanted: false,
                inflight: Inflight::default(),
                dirty: false,
                trim_through: None,
                stale: true,
                cseq_restored: true,
                rec,
            };
            room.peers.insert(peer.rec.peer_id.clone(), peer);
        }
        room.schedule_sweep(now);
        room
    }

    /// Connected peers whose queues storage holds and memory does not (after
    /// [`Room::restore`]); the shell loads each with [`Room::load_queue`].
    pub fn peers_to_load(&self) -> Vec<PeerId> {
        self.peers
            .values()
            .filter(|p| !p.loaded && p.rec.conn.is_some())
            .map(|p| p.rec.peer_id.clone())
            .collect()
    }

    /// The peer a resume with `token` would continue, if its queue must be
    /// loaded first (call [`Room::load_queue`] before [`Room::handle_join`]).
    pub fn resume_target(&self, token: &ResumeToken) -> Option<PeerId> {
        let digest = token.digest();
        self.peers
            .values()
            .find(|p| p.rec.token_digest == digest && !p.loaded)
            .map(|p| p.rec.peer_id.clone())
    }

    /// Gives a peer its stored queue (every row storage holds for it, any order).
    pub fn load_queue(&mut self, peer: &PeerId, mut frames: Vec<StoredFrame>, now: Millis) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.loaded {
            return;
        }
        frames.sort_by_key(|f| f.seq);
        let mut bodies: HashMap<u64, Rc<Body>> = HashMap::new();
        let (mut len, mut bytes) = (0usize, 0usize);
        for f in frames {
            if f.seq <= p.rec.floor {
                continue;
            }
            let body = bodies
                .entry(f.body_id)
                .or_insert_with(|| {
                    let b = Body::new(f.body_id, f.body);
                    b.written.set(true);
                    b
                })
                .clone();
            len += 1;
            bytes = bytes.saturating_add(body.frame.len());
            p.next_seq = p.next_seq.max(f.seq.saturating_add(1));
            p.queue.push_back(Entry {
                seq: f.seq,
                body,
                durable: true,
                at: now,
                origin: None,
            });
        }
        self.room_bytes = self
            .room_bytes
            .saturating_sub(p.bytes)
            .saturating_add(bytes);
        p.len = len;
        p.bytes = bytes;
        p.loaded = true;
    }

    /// The configuration.
    pub fn config(&self) -> &RoomConfig {
        &self.cfg
    }

    /// Takes the outputs produced so far, in order.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// When [`Room::handle_sweep`] should next run, if ever (the shell's alarm).
    pub fn poll_timeout(&self) -> Option<Millis> {
        // The sweep reaps connected peers; with none left (the last one left or went away)
        // it has nothing to do, and an emptied room need not wake again.
        let sweep = self
            .next_sweep
            .filter(|_| self.peers.values().any(|p| p.rec.conn.is_some()));
        let expiry = self
            .peers
            .values()
            .filter_map(|p| p.rec.away_since)
            .map(|t| t.plus(self.cfg.limits.resume_window_ms))
            .min();
        match (sweep, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When [`Room::handle_checkpoint`] should next run, if ever. The shell uses
    /// an in-memory timer: setting it must not itself be a storage write.
    pub fn poll_checkpoint(&self) -> Option<Millis> {
        self.checkpoint_at
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
            queued_bytes: self.room_bytes,
        }
    }

    /// The peer a socket belongs to.
    pub fn peer_of(&self, conn: ConnId) -> Option<&PeerId> {
        self.by_conn.get(&conn)
    }

    /// The trace id of a peer.
    pub fn trace_of(&self, peer: &PeerId) -> Option<&TraceId> {
        self.peers.get(peer).map(|p| &p.rec.trace_id)
    }

    /// A socket asks to join (or resume).
    pub fn handle_join(&mut self, join: Join, now: Millis) {
        let Join {
            conn,
            meta,
            resume,
            fresh_peer,
            fresh_token,
            fresh_trace,
            user,
            reads_acked,
            presence_off,
        } = join;
        if let Some(req) = resume {
            match self.try_resume(conn, req, reads_acked, now) {
                Ok(()) => return,
                Err(why) => {
                    self.send_error(conn, None, ErrorInfo::new(ErrorCode::ResumeFailed, why));
                }
            }
        }
        if self.peers.len() >= self.cfg.limits.max_peers {
            let msg = "the room is at capacity";
            return self.refuse_full(conn, ErrorCode::RoomFull, msg, "room full");
        }
        if !presence_off
            && self.peers.values().filter(|p| !p.rec.presence_off).count()
                >= self.cfg.limits.presence_max_peers
        {
            let msg =
                "the room has as many peers with presence as it allows; join with presence=off";
            return self.refuse_full(conn, ErrorCode::PresenceFull, msg, "presence full");
        }
        if self.peers.contains_key(&fresh_peer) {
            // 64 random bits collided: vanishingly rare, and the client can retry.
            let msg = "peer id collision; retry";
            self.send_error(conn, None, ErrorInfo::new(ErrorCode::Internal, msg));
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
            cseq_hi: 0,
            trace_id: fresh_trace,
            user,
            reads_acked,
            presence_off,
        };
        let peer = Peer {
            rec,
            meta,
            next_seq: 1,
            queue: VecDeque::new(),
            loaded: true,
            len: 0,
            bytes: 0,
            bucket: self.new_bucket(now),
            limited_until: None,
            ooo_until: None,
            last_heard: now,
            cseq_hi: 0,
            ack_wanted: false,
            inflight: Inflight::default(),
            dirty: false,
            trim_through: None,
            stale: false,
            cseq_restored: false,
        };
        self.peers.insert(fresh_peer.clone(), peer);
        self.persist_peer(&fresh_peer);
        self.by_conn.insert(conn, fresh_peer.clone());
        self.send_welcome(conn, &fresh_peer, &fresh_token, false, now);
        self.announce_joined(&fresh_peer, now);
        self.log("join", Some(&fresh_peer), None);
        self.schedule_sweep(now);
    }

    /// Refuses a join the room has no place for: the error, then close 4002.
    fn refuse_full(&mut self, conn: ConnId, code: ErrorCode, msg: &str, reason: &str) {
        self.send_error(conn, None, ErrorInfo::new(code, msg));
        self.out.push(Output::Close {
            conn,
            code: close_code::ROOM_FULL,
            reason: reason.into(),
        });
    }

    fn try_resume(
        &mut self,
        conn: ConnId,
        req: ResumeRequest,
        reads_acked: bool,
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
            if !p.loaded {
                return Err("the peer's queue is not loaded; retry");
            }
            if last < p.rec.floor {
                return Err("frames after last_seq are no longer kept");
            }
            // After a restart, the client may have seen frames that were only in
            // memory; it is the authority on what it processed then.
            if last >= p.next_seq && !p.stale {
                return Err("last_seq is ahead of what the server sent");
            }
            let old = p.conn();
            p.rec.conn = Some(conn.0);
            p.rec.reads_acked = reads_acked;
            p.rec.conn_since = now;
            p.rec.away_since = None;
            p.last_heard = now;
            p.stale = false;
            old
        };
        if let Some(old) = old_conn {
            self.by_conn.remove(&old);
            self.out.push(Output::Close {
                conn: old,
                code: close_code::REPLACED,
                reason: "replaced by a resumed connection".into(),
            });
        }
        self.by_conn.insert(conn, peer_id.clone());
        self.trim(&peer_id, last, now);
        self.renumber_after(&peer_id, last);
        self.send_welcome(conn, &peer_id, &req.token, true, now);
        let was_announced = self
            .peers
            .get_mut(&peer_id)
            .map(|p| std::mem::replace(&mut p.rec.announced_left, false))
            .unwrap_or(false);
        if was_announced {
            self.announce_joined(&peer_id, now);
        }
        if let Some(p) = self.peers.get(&peer_id) {
            for e in p.queue.iter().filter(|e| e.seq > last) {
                self.out.push(Output::Send {
                    conn,
                    text: e.body.frame.text(e.seq),
                });
                self.counters.frames_out += 1;
            }
        }
        self.persist_peer(&peer_id);
        self.counters_dirty = true;
        self.log("resume", Some(&peer_id), None);
        self.schedule_sweep(now);
        self.want_lazy_checkpoint(now);
        Ok(())
    }

    /// Makes the frames after `last` carry `last + 1, last + 2, …`: after a
    /// restart lost frames that were only in memory, the stored ones may have
    /// gaps, and a client must see every `seq` exactly once, in order.
    fn renumber_after(&mut self, peer_id: &PeerId, last: u64) {
        let Some(p) = self.peers.get_mut(peer_id) else {
            return;
        };
        let mut expected = last.saturating_add(1);
        for e in p.queue.iter_mut().filter(|e| e.seq > last) {
            if e.seq != expected {
                if e.durable {
                    self.out.push(Output::Store(StoreOp::Renumber {
                        peer: peer_id.clone(),
                        from: e.seq,
                        to: expected,
                    }));
                }
                e.seq = expected;
            }
            expected = expected.saturating_add(1);
        }
        p.next_seq = expected;
    }

    /// A text frame arrived on a socket.
    pub fn handle_text(&mut self, conn: ConnId, text: &str, now: Millis) {
        self.fold = Some(std::mem::take(&mut self.spare.fold));
        self.handle_frame(conn, text, now);
        self.fold_acks();
    }

    fn handle_frame(&mut self, conn: ConnId, text: &str, now: Millis) {
        self.last_frame = Some(now);
        let Some(from) = self.by_conn.get(&conn).cloned() else {
            self.out.push(Output::Close {
                conn,
                code: close_code::UNKNOWN_CONNECTION,
                reason: "unknown connection".into(),
            });
            return;
        };
        if !self.admit(conn, &from, Some(text), now) {
            return;
        }
        if text.len() > self.cfg.limits.max_frame_bytes {
            let msg = "frame exceeds the size limit";
            return self.send_error(
                conn,
                Some(&from),
                ErrorInfo::new(ErrorCode::PayloadTooLarge, msg),
            );
        }
        match wire::parse_client_frame(text) {
            Ok(frame) => self.dispatch(conn, &from, frame, now),
            Err(FrameError {
                code,
                message,
                cseq,
            }) => match cseq {
                None => self.send_error(conn, Some(&from), ErrorInfo::new(code, &message)),
                Some(n) => match self.gate(conn, &from, Some(n), now) {
                    Gate::Process => {
                        self.refuse(&from, n, code, &message, now);
                        self.settle(&from, now);
                    }
                    Gate::Duplicate => self.settle(&from, now),
                    Gate::Gap => {}
                },
            },
        }
    }

    /// A binary frame arrived on a socket (not part of the protocol).
    pub fn handle_binary(&mut self, conn: ConnId, now: Millis) {
        let Some(from) = self.by_conn.get(&conn).cloned() else {
            return;
        };
        if !self.admit(conn, &from, None, now) {
            return;
        }
        let msg = "binary frames are not supported; send JSON text";
        self.send_error(
            conn,
            Some(&from),
            ErrorInfo::new(ErrorCode::UnsupportedFrame, msg),
        );
    }

    /// Counts a frame, notes it as a sign of life and applies the rate limit.
    /// `false`: drop the frame (one `rate_limited` error per window says so).
    fn admit(&mut self, conn: ConnId, from: &PeerId, text: Option<&str>, now: Millis) -> bool {
        self.counters.frames_in += 1;
        self.counters_dirty = true;
        self.want_lazy_checkpoint(now);
        let Some(p) = self.peers.get_mut(from) else {
            return true;
        };
        p.last_heard = p.last_heard.max(now);
        if p.limited_until.is_some_and(|t| now < t) {
            // Inside the announced window: dropped without another answer.
            return false;
        }
        if p.bucket.try_take(now) {
            p.limited_until = None;
            return true;
        }
        let wait = p.bucket.wait_ms(now).max(1);
        p.limited_until = Some(now.plus(wait));
        let cseq = text.and_then(|t| match wire::parse_client_frame(t) {
            Ok(ClientFrame::Signal { cseq, .. })
            | Ok(ClientFrame::Broadcast { cseq, .. })
            | Ok(ClientFrame::Relay { cseq, .. }) => cseq,
            Err(e) => e.cseq,
            Ok(_) => None,
        });
        let info = ErrorInfo {
            cseq,
            retry_after_ms: Some(wait),
            ..ErrorInfo::new(ErrorCode::RateLimited, "slow down: too many frames")
        };
        self.send_error(conn, Some(from), info);
        false
    }

    /// Applies the `cseq` rules to a frame before it is processed.
    fn gate(&mut self, conn: ConnId, from: &PeerId, cseq: Option<u64>, now: Millis) -> Gate {
        let Some(n) = cseq else {
            return Gate::Process;
        };
        let Some(p) = self.peers.get_mut(from) else {
            return Gate::Process;
        };
        let expected = p.cseq_hi.saturating_add(1);
        if n < expected {
            p.ack_wanted = true;
            return Gate::Duplicate;
        }
        // After a restore the settled `cseq_hi` may lag the last `ack` the
        // client got, and the client no longer holds the frames in between
        // (they were acknowledged, so delivered or written): its first frame
        // continues after that `ack`.
        if n == expected || std::mem::take(&mut p.cseq_restored) {
            p.cseq_restored = false;
            return Gate::Process;
        }
        if p.ooo_until.is_some_and(|t| now < t) {
            return Gate::Gap;
        }
        p.ooo_until = Some(now.plus(OUT_OF_ORDER_WINDOW_MS));
        let info = ErrorInfo {
            cseq: Some(n),
            expected: Some(expected),
            ..ErrorInfo::new(
                ErrorCode::OutOfOrder,
                "cseq skipped ahead; resend from `expected`",
            )
        };
        self.send_error(conn, Some(from), info);
        Gate::Gap
    }

    fn dispatch(&mut self, conn: ConnId, from: &PeerId, frame: ClientFrame<'_>, now: Millis) {
        let (cseq, ack) = match &frame {
            ClientFrame::Signal { cseq, ack, .. }
            | ClientFrame::Broadcast { cseq, ack, .. }
            | ClientFrame::Relay { cseq, ack, .. } => (*cseq, *ack),
            _ => (None, None),
        };
        // An `ack` the frame carries counts as an `ack` frame just before it, whatever
        // becomes of the frame itself.
        if let Some(seq) = ack {
            self.client_ack(from, seq, now);
        }
        match self.gate(conn, from, cseq, now) {
            Gate::Process => {}
            Gate::Duplicate => return self.settle(from, now),
            Gate::Gap => return,
        }
        match frame {
            ClientFrame::Signal {
                to, payload, cseq, ..
            } => {
                let body = SeqBody::signal(from, cseq, payload);
                self.unicast(conn, from, &to, body, cseq, now);
            }
            ClientFrame::Relay { to, data, cseq, .. } => {
                let body = SeqBody::relay(from, cseq, data);
                self.unicast(conn, from, &to, body, cseq, now);
            }
            ClientFrame::Broadcast { payload, cseq, .. } => {
                self.broadcast(conn, from, payload, cseq, now)
            }
            ClientFrame::Ack { seq } => self.client_ack(from, seq, now),
            ClientFrame::Leave => self.leave(conn, from, now),
            ClientFrame::Ping => {
                self.out.push(Output::Send {
                    conn,
                    text: wire::PONG.to_owned(),
                });
                self.counters.frames_out += 1;
            }
        }
    }

    /// The client processed every frame up to `seq` (never past what it was sent).
    fn client_ack(&mut self, from: &PeerId, seq: Seq, now: Millis) {
        let last_sent = self
            .peers
            .get(from)
            .map_or(0, |p| p.next_seq.saturating_sub(1));
        self.trim(from, seq.0.min(last_sent), now);
    }

    /// Ends a client frame's event: each `ack` to a client that reads `acked` (v1.2) rides, as
    /// `"acked":n`, on the last sequenced frame this event sends that client, instead of going
    /// out as a frame of its own. An `ack` with no such frame to ride on is sent as it is.
    fn fold_acks(&mut self) {
        let Some(mut fold) = self.fold.take() else {
            return;
        };
        let Fold {
            acks,
            frames,
            folded,
            carried,
        } = &mut fold;
        if !acks.is_empty() && !frames.is_empty() {
            self.fold_into_frames(acks, frames, folded, carried);
        }
        acks.clear();
        frames.clear();
        folded.clear();
        carried.clear();
        self.spare.fold = fold;
    }

    fn fold_into_frames(
        &mut self,
        acks: &[(ConnId, u64, usize)],
        frames: &[(ConnId, usize)],
        folded: &mut Vec<usize>,
        carried: &mut Vec<(usize, u64)>,
    ) {
        for &(conn, cseq, at) in acks {
            let Some(&(_, frame)) = frames.iter().rev().find(|(c, _)| *c == conn) else {
                continue;
            };
            folded.push(at);
            match carried.iter_mut().find(|(i, _)| *i == frame) {
                Some((_, n)) => *n = (*n).max(cseq),
                None => carried.push((frame, cseq)),
            }
        }
        for &mut (frame, cseq) in carried {
            if let Some(Output::Send { text, .. }) = self.out.get_mut(frame)
                && text.starts_with('{')
            {
                // Inserted back to front after the `{`: `"acked":`, the number, `,`.
                let mut digits = [0u8; 20];
                text.insert(1, ',');
                text.insert_str(1, wire::decimal(cseq, &mut digits));
                text.insert_str(1, "\"acked\":");
            }
        }
        let mut i = 0;
        self.out.retain(|_| {
            let keep = !folded.contains(&i);
            i += 1;
            keep
        });
        self.counters.frames_out = self.counters.frames_out.saturating_sub(folded.len() as u64);
    }

    fn unicast(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        to: &PeerId,
        body: SeqBody,
        cseq: Option<u64>,
        now: Millis,
    ) {
        if !self.peers.get(to).is_some_and(Peer::visible) {
            let msg = "no such peer in this room";
            return self.refuse_or_error(conn, from, cseq, ErrorCode::UnknownPeer, msg, now);
        }
        let body = self.new_body(body);
        let origin = cseq.map(|n| (from.clone(), n));
        if self
            .enqueue(to, &body, Kind::App, cseq.is_none(), origin, now)
            .is_err()
        {
            let msg = "the peer is away and its queue is full";
            return self.refuse_or_error(conn, from, cseq, ErrorCode::QueueFull, msg, now);
        }
        if cseq.is_some() {
            self.accept(from, cseq);
            self.settle(from, now);
        }
    }

    fn broadcast(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        payload: &RawValue,
        cseq: Option<u64>,
        now: Millis,
    ) {
        let targets: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.visible() && p.rec.peer_id != *from)
            .map(|p| p.rec.peer_id.clone())
            .collect();
        let body = self.new_body(SeqBody::signal(from, cseq, payload));
        let mut refused = Vec::new();
        for to in targets {
            let origin = cseq.map(|n| (from.clone(), n));
            if self
                .enqueue(&to, &body, Kind::App, cseq.is_none(), origin, now)
                .is_err()
            {
                refused.push(to);
            }
        }
        if cseq.is_some() {
            self.accept(from, cseq);
        }
        for to in refused {
            let msg = format!("peer {to} is away and its queue is full");
            self.refuse_or_error(conn, from, cseq, ErrorCode::QueueFull, &msg, now);
        }
        if cseq.is_some() {
            self.settle(from, now);
        }
    }

    /// Records `cseq` as processed.
    fn accept(&mut self, from: &PeerId, cseq: Option<u64>) {
        if let (Some(n), Some(p)) = (cseq, self.peers.get_mut(from)) {
            p.cseq_hi = p.cseq_hi.max(n);
        }
    }

    /// A refusal: sequenced and durable for a `cseq` frame, a plain error otherwise.
    fn refuse_or_error(
        &mut self,
        conn: ConnId,
        from: &PeerId,
        cseq: Option<u64>,
        code: ErrorCode,
        message: &str,
        now: Millis,
    ) {
        match cseq {
            None => self.send_error(conn, Some(from), ErrorInfo::new(code, message)),
            Some(n) => {
                self.refuse(from, n, code, message, now);
                self.settle(from, now);
            }
        }
    }

    /// Refuses the client frame `cseq` with a sequenced `error` that is written
    /// at once, together with every earlier frame of the sender: the client
    /// drops the frame on reading the error, so the refusal, the `cseq_hi` it
    /// implies and what came before may not be lost in a restart.
    fn refuse(&mut self, from: &PeerId, cseq: u64, code: ErrorCode, message: &str, now: Millis) {
        self.accept(from, Some(cseq));
        self.flush_from(from);
        let body = self.new_body(SeqBody::error(code, message, cseq));
        let _ = self.enqueue(from, &body, Kind::Presence, true, None, now);
        // This event writes anyway: the record goes with it, so a resend of
        // what came before is known as a duplicate even after a restart.
        self.settle(from, now);
        self.persist_peer(from);
        *self
            .counters
            .errors
            .entry(code.as_str().to_owned())
            .or_default() += 1;
        self.log("error", Some(from), Some(code.as_str()));
    }

    /// Acknowledges what `from` has settled, if that advanced or the client
    /// asked again (a duplicate). No write comes first: the record follows
    /// lazily (see `handle_checkpoint`).
    fn settle(&mut self, from: &PeerId, now: Millis) {
        let Some(p) = self.peers.get_mut(from) else {
            return;
        };
        let safe = p.settled();
        let advanced = safe > p.rec.cseq_hi;
        if !advanced && !p.ack_wanted {
            return;
        }
        if advanced {
            p.rec.cseq_hi = safe;
            p.dirty = true;
        }
        p.ack_wanted = false;
        let (conn, cseq, reads_acked) = (p.conn(), p.rec.cseq_hi, p.rec.reads_acked);
        if let Some(conn) = conn {
            if reads_acked && let Some(fold) = &mut self.fold {
                fold.acks.push((conn, cseq, self.out.len()));
            }
            self.out.push(Output::Send {
                conn,
                text: wire::ack_frame(cseq),
            });
            self.counters.frames_out += 1;
        }
        if advanced {
            self.want_lazy_checkpoint(now);
        }
    }

    fn leave(&mut self, conn: ConnId, peer_id: &PeerId, now: Millis) {
        self.by_conn.remove(&conn);
        let Some(trace) = self.trace_of(peer_id).cloned() else {
            return;
        };
        let visible = self.remove_peer(peer_id).is_some_and(|p| p.visible());
        self.out.push(Output::Close {
            conn,
            code: close_code::NORMAL,
            reason: "left".into(),
        });
        if visible {
            self.announce_left(peer_id, LeaveReason::Leave, now);
        }
        self.out.push(Output::Log(LogEvent {
            event: "leave",
            peer: Some(peer_id.clone()),
            trace: Some(trace),
            detail: Some(LeaveReason::Leave.as_str()),
        }));
    }

    /// Forgets a peer, its queue and its storage.
    fn remove_peer(&mut self, peer_id: &PeerId) -> Option<Peer> {
        let p = self.peers.remove(peer_id)?;
        self.room_bytes = self.room_bytes.saturating_sub(p.bytes);
        for e in p.queue.iter().filter(|e| !e.durable) {
            self.nondurable_gone(&e.origin);
        }
        self.out
            .push(Output::Store(StoreOp::DeletePeer(peer_id.clone())));
        self.gc_due = true;
        Some(p)
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
        self.go_away(&peer_id, reason, now);
        self.log("away", Some(&peer_id), Some(reason.as_str()));
    }

    /// The peer has no socket any more: its queue is written (a restart must
    /// not lose what it will resume to) and so is its record.
    fn go_away(&mut self, peer_id: &PeerId, reason: LeaveReason, now: Millis) {
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.rec.conn = None;
            p.rec.away_since = Some(now);
            p.rec.away_reason = reason;
        }
        // Senders whose frames were only in memory may be acknowledged now
        // (after the writes, which the output gate makes the acks wait for).
        for sender in self.flush_queue(peer_id) {
            self.settle(&sender, now);
        }
        self.persist_peer(peer_id);
        self.schedule_sweep(now);
    }

    /// Closes every socket with 4003 `retry_after_ms=<n>`; the peers stay, away
    /// and resumable (an operator's drain before a deploy).
    pub fn handle_drain(&mut self, retry_after_ms: u64, now: Millis) -> usize {
        let retry = retry_after_ms.min(MAX_RETRY_AFTER_MS);
        let connected: Vec<(PeerId, ConnId)> = self
            .peers
            .values()
            .filter_map(|p| p.conn().map(|c| (p.rec.peer_id.clone(), c)))
            .collect();
        for (peer_id, conn) in &connected {
            self.by_conn.remove(conn);
            self.out.push(Output::Close {
                conn: *conn,
                code: close_code::GOING_AWAY,
                reason: format!("retry_after_ms={retry}"),
            });
            self.go_away(peer_id, LeaveReason::Closed, now);
            self.log("drain", Some(peer_id), None);
        }
        connected.len()
    }

    /// The sweep at the earliest death deadline: reaps silent sockets, closes
    /// sockets of no peer, expires away peers and persists the counters.
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
                    reason: "unknown connection".into(),
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
                    let Some(p) = self.peers.get_mut(&peer_id) else {
                        continue;
                    };
                    p.last_heard = p.last_heard.max(last_ping.unwrap_or_default());
                    if now.since(p.last_heard) > dead_after {
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
            let trace = self.trace_of(&peer_id).cloned();
            if let Some(p) = self.remove_peer(&peer_id) {
                if p.visible() {
                    self.announce_left(&peer_id, p.rec.away_reason, now);
                }
                self.out.push(Output::Log(LogEvent {
                    event: "expire",
                    peer: Some(peer_id),
                    trace,
                    detail: Some(p.rec.away_reason.as_str()),
                }));
            }
        }
        self.next_sweep = None;
        self.schedule_sweep(now);
        self.persist_counters(now, true);
    }

    fn reap(&mut self, peer_id: &PeerId, conn: ConnId, now: Millis) {
        self.by_conn.remove(&conn);
        self.out.push(Output::Close {
            conn,
            code: close_code::HEARTBEAT_TIMEOUT,
            reason: "heartbeat timeout".into(),
        });
        if let Some(p) = self.peers.get_mut(peer_id) {
            p.rec.announced_left = true;
        }
        self.go_away(peer_id, LeaveReason::Timeout, now);
        self.announce_left(peer_id, LeaveReason::Timeout, now);
        self.log("reap", Some(peer_id), Some(LeaveReason::Timeout.as_str()));
    }

    /// The checkpoint: writes frames unacknowledged for `flush_after_ms`; then
    /// acknowledges every client frame that is settled (written, or
    /// acknowledged by its recipient; acks after a write leave only once it is
    /// confirmed). Changed records and counters are written with those frames,
    /// or at most every `COUNTERS_EVERY_MS` when nothing else is written (a
    /// room busy when that batch is due: `LAZY_BUSY_MAX_MS` after the last one).
    pub fn handle_checkpoint(&mut self, now: Millis) {
        self.checkpoint_at = None;
        let flush_after = self.cfg.limits.flush_after_ms;
        let ids: Vec<PeerId> = self.peers.keys().cloned().collect();
        let mut gone = Vec::new();
        for id in &ids {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            for e in p.queue.iter_mut() {
                if !e.durable && now.since(e.at) >= flush_after {
                    write_entry(&mut self.out, id, e);
                    gone.push(e.origin.take());
                }
            }
        }
        for origin in &gone {
            self.nondurable_gone(origin);
        }
        // Acks after the frames just written (the output gate holds them until
        // those are durable), and for duplicates that asked again.
        for id in &ids {
            self.settle(id, now);
        }
        // Records (`cseq_hi`, `floor`) wait for the lazy batch unless this
        // checkpoint writes anyway: every write holds back the deliveries after
        // it until it is durable (the output gate), and a lagging record costs
        // only replays and a skip-ahead after a restart (`cseq_restored`).
        let flushed = !gone.is_empty();
        let busy = self
            .last_frame
            .is_some_and(|t| now.since(t) < BUSY_WITHIN_MS);
        let last_batch = self.counters_written;
        let since = last_batch.map(|t| now.since(t));
        // Only records and counters wait: acknowledged rows to delete (v1 senders' frames, flushed
        // frames) and bodies to collect keep the 5 s cadence, so storage does not pile up.
        let rows_to_delete = self.gc_due || self.peers.values().any(|p| p.trim_through.is_some());
        let postponed = busy
            && !rows_to_delete
            && since.is_some_and(|s| (COUNTERS_EVERY_MS..LAZY_BUSY_MAX_MS).contains(&s));
        let lazy_due = !postponed && since.is_none_or(|s| s >= COUNTERS_EVERY_MS);
        let writing = flushed || lazy_due || self.gc_due;
        if writing {
            for id in &ids {
                if self.peers.get(id).is_some_and(|p| p.dirty) {
                    self.persist_peer(id);
                }
            }
        }
        if writing && std::mem::take(&mut self.gc_due) {
            let below = self
                .peers
                .values()
                .flat_map(|p| p.queue.iter())
                .filter(|e| !e.durable)
                .map(|e| e.body.id)
                .min()
                .unwrap_or(self.next_body_id);
            self.out.push(Output::Store(StoreOp::GcBodies { below }));
        }
        // Counters ride along at most every COUNTERS_EVERY_MS, and only when
        // this checkpoint writes anyway.
        if writing {
            self.persist_counters(now, false);
        }
        if lazy_due {
            self.counters_written = Some(now);
        }
        // Next: when the oldest frame still only in memory is due for writing,
        // or lazily for counters and records.
        let oldest = self
            .peers
            .values()
            .flat_map(|p| p.queue.iter())
            .filter(|e| !e.durable)
            .map(|e| e.at)
            .min();
        if let Some(at) = oldest {
            self.want_checkpoint_at(at.plus(flush_after));
        }
        if self.counters_dirty || self.gc_due || self.peers.values().any(|p| p.dirty) {
            if let (true, Some(t)) = (postponed, last_batch) {
                self.want_checkpoint_at(t.plus(LAZY_BUSY_MAX_MS));
            } else {
                self.want_lazy_checkpoint(now);
            }
        }
    }

    fn persist_counters(&mut self, now: Millis, anyway: bool) {
        let last = *self.counters_written.get_or_insert(now);
        if self.counters_dirty && (anyway || now.since(last) >= COUNTERS_EVERY_MS) {
            self.counters_dirty = false;
            self.counters_written = Some(now);
            self.out.push(Output::Counters(self.counters.clone()));
        }
    }

    /// A checkpoint by `at` at the latest.
    fn want_checkpoint_at(&mut self, at: Millis) {
        if self.checkpoint_at.is_none_or(|t| t > at) {
            self.checkpoint_at = Some(at);
        }
    }

    /// A checkpoint for what may wait (counters, records): when the counters
    /// are next due, at most every COUNTERS_EVERY_MS.
    fn want_lazy_checkpoint(&mut self, now: Millis) {
        if self.checkpoint_at.is_none() {
            let due = self
                .counters_written
                .map_or(now, |t| t.plus(COUNTERS_EVERY_MS));
            self.checkpoint_at = Some(due.max(now.plus(LAZY_DELAY_MS)));
        }
    }

    /// The next sweep: the earliest death deadline of a connected peer (three
    /// heartbeats after its last sign of life known to the room).
    fn schedule_sweep(&mut self, _now: Millis) {
        let dead_after = self.cfg.limits.dead_after_ms();
        let earliest = self
            .peers
            .values()
            .filter(|p| p.rec.conn.is_some())
            .map(|p| p.last_heard.plus(dead_after).plus(1))
            .min();
        self.next_sweep = match (self.next_sweep, earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (_, b) => b,
        };
    }

    fn new_bucket(&self, now: Millis) -> TokenBucket {
        TokenBucket::new(self.cfg.limits.rate_per_s, self.cfg.limits.rate_burst, now)
    }

    fn new_body(&mut self, frame: SeqBody) -> Rc<Body> {
        let id = self.next_body_id;
        self.next_body_id += 1;
        Body::new(id, frame)
    }

    fn send_welcome(
        &mut self,
        conn: ConnId,
        peer_id: &PeerId,
        token: &ResumeToken,
        resumed: bool,
        now: Millis,
    ) {
        let Some((ice_servers, sfu)) = self.relay_grants(peer_id, now) else {
            return;
        };
        let Some(me) = self.peers.get(peer_id) else {
            return;
        };
        let presence_off = me.rec.presence_off;
        let peers: Vec<PeerInfo<'_>> = if presence_off {
            Vec::new()
        } else {
            self.peers
                .values()
                .filter(|p| p.visible() && p.rec.peer_id != *peer_id)
                .map(|p| PeerInfo {
                    peer_id: &p.rec.peer_id,
                    meta: p.meta.raw(),
                })
                .collect()
        };
        let l = &self.cfg.limits;
        let text = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            rev: PROTOCOL_REV,
            peer_id,
            resume_token: token.expose(),
            room: self.cfg.name.as_str(),
            peers,
            presence: presence_off.then_some("off"),
            ice_servers: &ice_servers,
            heartbeat_ms: l.heartbeat_ms,
            resumed,
            trace_id: me.rec.trace_id.as_str(),
            limits: WireLimits {
                rate_per_s: l.rate_per_s,
                rate_burst: l.rate_burst,
                max_frame_bytes: l.max_frame_bytes,
                ack_delay_ms: l.ack_delay_ms,
            },
            cseq: me.rec.cseq_hi,
            sfu: sfu.as_ref(),
        }
        .to_json();
        self.out.push(Output::Send { conn, text });
        self.counters.frames_out += 1;
        self.counters_dirty = true;
    }

    fn announce_joined(&mut self, joined: &PeerId, now: Millis) {
        let Some(meta) = self.peers.get(joined).map(|p| p.meta.clone()) else {
            return;
        };
        let body = self.new_body(SeqBody::peer_joined(joined, meta.raw()));
        for to in self.others_visible(joined) {
            // Presence is never refused, so the result carries no information.
            let _ = self.enqueue(&to, &body, Kind::Presence, PRESENCE_DURABLE, None, now);
        }
    }

    fn announce_left(&mut self, left: &PeerId, reason: LeaveReason, now: Millis) {
        let body = self.new_body(SeqBody::peer_left(left, reason));
        for to in self.others_visible(left) {
            let _ = self.enqueue(&to, &body, Kind::Presence, PRESENCE_DURABLE, None, now);
        }
    }

    /// The peers told about `except` joining or leaving: visible ones that receive presence.
    fn others_visible(&self, except: &PeerId) -> Vec<PeerId> {
        self.peers
            .values()
            .filter(|p| p.visible() && !p.rec.presence_off && p.rec.peer_id != *except)
            .map(|p| p.rec.peer_id.clone())
            .collect()
    }

    /// Gives the next `seq` of `to` to a frame, queues it for resume and sends it
    /// if `to` is connected. The queue row is written now when `durable` is
    /// asked for or `to` is away; otherwise it stays in memory until a
    /// checkpoint or `to` going away writes it.
    fn enqueue(
        &mut self,
        to: &PeerId,
        body: &Rc<Body>,
        kind: Kind,
        durable: bool,
        origin: Option<(PeerId, u64)>,
        now: Millis,
    ) -> Result<(), QueueFull> {
        let limits = &self.cfg.limits;
        let len = body.frame.len();
        let room_over = self.room_bytes.saturating_add(len) > limits.room_queue_max_bytes;
        let Some(p) = self.peers.get_mut(to) else {
            return Ok(());
        };
        let away = p.rec.conn.is_none();
        let full = p.len >= limits.queue_max_frames
            || p.bytes.saturating_add(len) > limits.queue_max_bytes
            || room_over;
        if kind == Kind::App && away && full {
            return Err(QueueFull);
        }
        let seq = p.next_seq;
        p.next_seq += 1;
        p.len += 1;
        p.bytes = p.bytes.saturating_add(len);
        self.room_bytes = self.room_bytes.saturating_add(len);
        let durable = durable || away || !p.loaded;
        let mut entry = Entry {
            seq,
            body: body.clone(),
            durable: false,
            at: now,
            origin,
        };
        if durable {
            write_entry(&mut self.out, to, &mut entry);
        }
        if let Some(conn) = p.conn() {
            if p.rec.reads_acked
                && let Some(fold) = &mut self.fold
            {
                fold.frames.push((conn, self.out.len()));
            }
            self.out.push(Output::Send {
                conn,
                text: body.frame.text(seq),
            });
            self.counters.frames_out += 1;
            self.counters_dirty = true;
        }
        let mut nondurable = None;
        if p.loaded {
            if !entry.durable {
                self.nondurable += 1;
                nondurable = Some(entry.origin.clone());
            }
            p.queue.push_back(entry);
        }
        if let Some(origin) = nondurable {
            // Written by the checkpoint at the flush deadline unless acknowledged first.
            self.want_checkpoint_at(now.plus(self.cfg.limits.flush_after_ms));
            if let Some((o, n)) = origin
                && let Some(op) = self.peers.get_mut(&o)
            {
                op.inflight.add(n);
            }
        }
        self.bound_queue(to, len);
        Ok(())
    }

    /// Over a bound, the oldest frames go; a later resume from before them
    /// fails loudly with `resume_failed` rather than losing frames silently, so
    /// the raised floor is written at once.
    fn bound_queue(&mut self, peer_id: &PeerId, added: usize) {
        let limits = &self.cfg.limits;
        let Some(p) = self.peers.get_mut(peer_id) else {
            return;
        };
        let over_peer =
            |p: &Peer| p.len > limits.queue_max_frames || p.bytes > limits.queue_max_bytes;
        if !p.loaded {
            // Only presence reaches here (app frames were refused): storage
            // keeps just the newest frame.
            if over_peer(p) {
                let through = p.next_seq.saturating_sub(2);
                self.room_bytes = self
                    .room_bytes
                    .saturating_sub(p.bytes)
                    .saturating_add(added);
                p.len = 1;
                p.bytes = added;
                p.rec.floor = p.rec.floor.max(through);
                p.trim_through = Some(through);
                self.persist_peer(peer_id);
            }
            return;
        }
        let mut dropped_through = None;
        let mut origins = Vec::new();
        loop {
            let room_over = self.room_bytes > limits.room_queue_max_bytes
                && p.rec.conn.is_some()
                && p.queue.len() > 1;
            if !(over_peer(p) || room_over) {
                break;
            }
            let Some(e) = p.queue.pop_front() else { break };
            let len = e.body.frame.len();
            p.len = p.len.saturating_sub(1);
            p.bytes = p.bytes.saturating_sub(len);
            self.room_bytes = self.room_bytes.saturating_sub(len);
            if e.durable {
                p.trim_through = Some(e.seq);
            } else {
                origins.push(e.origin);
            }
            dropped_through = Some(e.seq);
        }
        if let Some(through) = dropped_through {
            p.rec.floor = p.rec.floor.max(through);
            for o in origins {
                self.nondurable_gone(&o);
            }
            self.gc_due = true;
            self.persist_peer(peer_id);
        }
    }

    /// Forgets frames of `peer` with `seq <= through` (acknowledged by it); the
    /// record and the rows follow at the next checkpoint.
    fn trim(&mut self, peer: &PeerId, through: u64, now: Millis) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if through <= p.rec.floor {
            return;
        }
        let mut origins = std::mem::take(&mut self.spare.origins);
        while p.queue.front().is_some_and(|e| e.seq <= through) {
            if let Some(e) = p.queue.pop_front() {
                let len = e.body.frame.len();
                p.len = p.len.saturating_sub(1);
                p.bytes = p.bytes.saturating_sub(len);
                self.room_bytes = self.room_bytes.saturating_sub(len);
                if e.durable {
                    p.trim_through = Some(e.seq);
                } else {
                    origins.push(e.origin);
                }
            }
        }
        p.rec.floor = through;
        p.dirty = true;
        let mut senders = std::mem::take(&mut self.spare.senders);
        for (o, _) in origins.iter().flatten() {
            if !senders.contains(o) {
                senders.push(o.clone());
            }
        }
        senders.sort();
        for o in origins.drain(..) {
            self.nondurable_gone(&o);
        }
        // The recipient's ack settles those frames: their senders hear it now,
        // in this event, which writes nothing (presence frames have no sender).
        for sender in senders.drain(..) {
            self.settle(&sender, now);
        }
        self.spare.origins = origins;
        self.spare.senders = senders;
        self.want_lazy_checkpoint(now);
    }

    /// A queue entry that was only in memory is written or gone.
    fn nondurable_gone(&mut self, origin: &Option<(PeerId, u64)>) {
        self.nondurable = self.nondurable.saturating_sub(1);
        if let Some((o, n)) = origin
            && let Some(p) = self.peers.get_mut(o)
        {
            p.inflight.done(*n);
        }
    }

    /// Writes every queued frame of `peer` that is only in memory; returns the
    /// senders of those frames.
    fn flush_queue(&mut self, peer_id: &PeerId) -> Vec<PeerId> {
        let Some(p) = self.peers.get_mut(peer_id) else {
            return Vec::new();
        };
        let mut origins = Vec::new();
        for e in p.queue.iter_mut().filter(|e| !e.durable) {
            write_entry(&mut self.out, peer_id, e);
            origins.push(e.origin.take());
        }
        let mut senders: Vec<PeerId> = origins.iter().flatten().map(|(o, _)| o.clone()).collect();
        senders.sort();
        senders.dedup();
        for o in origins {
            self.nondurable_gone(&o);
        }
        senders
    }

    /// Writes every frame from `sender` that is only in memory.
    fn flush_from(&mut self, sender: &PeerId) {
        if self.peers.get(sender).is_none_or(|p| p.inflight.is_empty()) {
            return;
        }
        let mut origins = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            for e in p.queue.iter_mut() {
                if !e.durable && e.origin.as_ref().is_some_and(|(o, _)| o == sender) {
                    write_entry(&mut self.out, id, e);
                    origins.push(e.origin.take());
                }
            }
        }
        for o in origins {
            self.nondurable_gone(&o);
        }
    }

    /// Writes a peer's record (and deletes its acknowledged rows) now.
    fn persist_peer(&mut self, peer_id: &PeerId) {
        let Some(p) = self.peers.get_mut(peer_id) else {
            return;
        };
        p.dirty = false;
        if let Some(through) = p.trim_through.take() {
            self.out.push(Output::Store(StoreOp::TrimQueue {
                peer: peer_id.clone(),
                through,
            }));
            self.gc_due = true;
        }
        self.out
            .push(Output::Store(StoreOp::PutPeer(p.rec.clone())));
    }

    fn send_error(&mut self, conn: ConnId, peer: Option<&PeerId>, info: ErrorInfo<'_>) {
        self.out.push(Output::Send {
            conn,
            text: ServerFrame::Error(info).to_json(),
        });
        self.counters.frames_out += 1;
        *self
            .counters
            .errors
            .entry(info.code.to_owned())
            .or_default() += 1;
        self.counters_dirty = true;
        self.log("error", peer, Some(info.code));
    }

    fn log(&mut self, event: &'static str, peer: Option<&PeerId>, detail: Option<&'static str>) {
        let trace = peer.and_then(|p| self.trace_of(p)).cloned();
        self.out.push(Output::Log(LogEvent {
            event,
            peer: peer.cloned(),
            trace,
            detail,
        }));
    }
}

/// Emits the storage writes that make `e` durable (its body first, once).
fn write_entry(out: &mut Vec<Output>, peer: &PeerId, e: &mut Entry) {
    if !e.body.written.get() {
        e.body.written.set(true);
        out.push(Output::Store(StoreOp::PutBody {
            id: e.body.id,
            body: e.body.frame.clone(),
        }));
    }
    out.push(Output::Store(StoreOp::PushQueue {
        peer: peer.clone(),
        seq: e.seq,
        body: e.body.id,
        bytes: e.body.frame.len(),
    }));
    e.durable = true;
}

#[derive(Debug)]
struct QueueFull;
