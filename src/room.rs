//! The Room Durable Object: one per room, the single owner of the room's state.
//!
//! It holds the room's WebSockets through the Hibernation API and runs the
//! sans-IO [`switchboard_proto::room::Room`] over them. What must survive
//! hibernation and restarts lives in the object's SQLite storage (peer records,
//! queued frames as references to bodies stored once, counters); each socket
//! carries its [`ConnId`] as a tag. Pings are answered by the runtime's
//! auto-response, so an idle room sleeps.
//!
//! Two timers: the alarm (storage-backed, survives hibernation) runs the
//! sweep at the earliest death deadline; an in-memory `setTimeout` runs the
//! checkpoint, because arming it must not itself be a storage write (every
//! write holds back the messages sent after it until it is durable).
//!
//! The hibernation API's WebSocket handlers are exported by hand (the
//! `#[durable_object(alarm)]` macro exports the constructor, `fetch` and
//! `alarm`): a message is handled synchronously and the handler returns
//! `undefined`, and only an event that must set the alarm returns a promise.
//! The macro's handlers are `async` and every call pays for a promise and a
//! microtask round, a large share of the CPU of each message (docs/BENCHMARKS.md).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Deserialize;
use switchboard_proto::room::{
    self as core, Counters, Join, LogEvent, Output, PeerRecord, ResumeRequest, RoomConfig, StoreOp,
    StoredFrame, StoredQueue,
};
use switchboard_proto::wire::{SeqBody, SeqType};
use switchboard_proto::{
    ConnId, ErrorCode, Meta, Millis, PeerId, ResumeToken, RoomName, TraceId, UserId, wire,
};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::{JsValue, wasm_bindgen};
use worker::wasm_bindgen_futures::future_to_promise;
use worker::worker_sys::web_sys;
use worker::{
    DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue, State, WebSocket,
    WebSocketPair, durable_object,
};

use crate::config;
use crate::ffi;
use crate::http::{self, json, now};

mod relays;
pub use relays::{Q_CAPS, Q_REGION};
use switchboard_proto::registry::Region;
use switchboard_proto::relays::RoomRelays;

// The router calls the object at `https://room.internal/{join,stats,drain,relays}` with
// these query parameters (and the Registry calls `relays`, see `relays.rs`); clients never
// reach the object directly.
/// Internal query parameter: the room name.
pub const Q_ROOM: &str = "room";
/// Internal query parameter: the joining peer's meta JSON (validated by the router).
pub const Q_META: &str = "meta";
/// Internal query parameter: the presented resume token.
pub const Q_RESUME: &str = "resume";
/// Internal query parameter: the client's `last_seq`.
pub const Q_LAST_SEQ: &str = "last_seq";
/// Internal query parameter: the stable user id (`[A-Za-z0-9_-]{1,64}`); absent: the peer id.
pub const Q_USER: &str = "user";
/// Internal query parameter: present (`off`) when the client joined with `presence=off`.
pub const Q_PRESENCE: &str = "presence";
/// Internal query parameter of `drain`: the `retry_after_ms` announced in the close reason.
pub const Q_RETRY_AFTER_MS: &str = "retry_after_ms";

/// Connection ids are 53-bit, so a JS number holds them exactly.
const CONN_ID_MASK: u64 = (1 << 53) - 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS peers (peer_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, ty TEXT NOT NULL, rest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (peer_id TEXT NOT NULL, seq INTEGER NOT NULL,
                                   body_id INTEGER NOT NULL, bytes INTEGER NOT NULL,
                                   PRIMARY KEY (peer_id, seq));
CREATE INDEX IF NOT EXISTS frames_by_body ON frames (body_id);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The Room Durable Object.
#[allow(missing_debug_implementations)] // State and Env have no Debug
#[durable_object(alarm)]
pub struct Room {
    inner: Rc<Inner>,
}

/// The hibernation API's WebSocket handlers (see the module docs for why by hand).
#[wasm_bindgen]
impl Room {
    /// A message on one of the room's sockets: handled before this returns; a promise only
    /// when the event must still set the alarm.
    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn web_socket_message(
        &self,
        ws: web_sys::WebSocket,
        message: JsValue,
    ) -> std::result::Result<JsValue, JsValue> {
        let this = &self.inner;
        let wake_at = Inner::message(this, ws.into(), message.as_string())?;
        if !this.must_schedule(wake_at) {
            return Ok(JsValue::UNDEFINED);
        }
        let this = Rc::clone(this);
        Ok(future_to_promise(async move {
            this.schedule(wake_at).await?;
            Ok(JsValue::UNDEFINED)
        })
        .into())
    }

    /// A socket closed.
    #[wasm_bindgen(js_name = webSocketClose)]
    pub fn web_socket_close(
        &self,
        ws: web_sys::WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> js_sys::Promise {
        let this = Rc::clone(&self.inner);
        future_to_promise(async move {
            Inner::socket_gone(&this, ws.into(), code == 1000 || code == 1001).await?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// A socket failed.
    #[wasm_bindgen(js_name = webSocketError)]
    pub fn web_socket_error(&self, ws: web_sys::WebSocket, _error: JsValue) -> js_sys::Promise {
        let this = Rc::clone(&self.inner);
        future_to_promise(async move {
            Inner::socket_gone(&this, ws.into(), false).await?;
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// Everything the object owns; shared with its checkpoint timer task.
struct Inner {
    state: State,
    env: Env,
    core: RefCell<Option<core::Room>>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    /// Socket → its [`ConnId`] (a BigInt) for the sockets seen since the object woke: one
    /// lookup per message instead of reading the socket's tags from the runtime.
    conn_ids: js_sys::WeakMap,
    alarm_at: crate::alarm::KnownAlarm,
    /// The armed checkpoint timer's deadline, if one is armed.
    timer_at: Cell<Option<u64>>,
    /// SQL statements executed since the object woke, by kind (for the stats endpoint).
    sql_counts: RefCell<BTreeMap<&'static str, u64>>,
    /// The relay nodes the room pinned (`relays`), as stored.
    pin: RefCell<Option<RoomRelays>>,
    /// The pin still to be told to the Registry, and whether a task is telling it.
    pin_to_record: RefCell<Option<Vec<String>>>,
    pin_recording: Cell<bool>,
}

#[derive(Deserialize)]
struct PeerRow {
    record: String,
}

/// The object's scalars, read in one statement on wake.
#[derive(Deserialize, Default)]
struct HeadRow {
    room: Option<String>,
    counters: Option<String>,
    max_body: Option<f64>,
    old_queue: f64,
}

#[derive(Deserialize)]
struct SummaryRow {
    peer_id: String,
    n: f64,
    b: f64,
    m: f64,
}

#[derive(Deserialize)]
struct MaxRow {
    m: Option<f64>,
}

#[derive(Deserialize)]
struct FrameRow {
    seq: f64,
    body_id: f64,
    ty: String,
    rest: String,
}

impl DurableObject for Room {
    fn new(state: State, env: Env) -> Self {
        let pair = worker::worker_sys::WebSocketRequestResponsePair::new(wire::PING, wire::PONG);
        match pair {
            Ok(pair) => {
                if state.as_raw().set_websocket_auto_response(&pair).is_err() {
                    worker::console_error!(
                        "{}",
                        http::log_line("error", None, None, Some("auto-response not set"))
                    );
                }
            }
            Err(_) => worker::console_error!(
                "{}",
                http::log_line("error", None, None, Some("auto-response pair"))
            ),
        }
        // One line per construction: tests use it to see the object was evicted and rebuilt.
        worker::console_log!("{}", http::log_line("object_start", None, None, None));
        Room {
            inner: Rc::new(Inner {
                state,
                env,
                core: RefCell::new(None),
                sockets: RefCell::new(HashMap::new()),
                conn_ids: js_sys::WeakMap::new(),
                alarm_at: Cell::new(None),
                timer_at: Cell::new(None),
                sql_counts: RefCell::new(BTreeMap::new()),
                pin: RefCell::new(None),
                pin_to_record: RefCell::new(None),
                pin_recording: Cell::new(false),
            }),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let this = &self.inner;
        let path = req.path();
        let url = req.url()?;
        let param = |key: &str| http::query_param(&url, key);
        let Some(name) = param(Q_ROOM).as_deref().and_then(RoomName::parse) else {
            return http::error(ErrorCode::BadRequest, "missing room");
        };
        match path.as_str() {
            "/join" => {
                let meta = param(Q_META)
                    .and_then(|m| Meta::parse(&m).ok())
                    .unwrap_or_else(Meta::empty);
                let resume = param(Q_RESUME).map(|token| ResumeRequest {
                    token: ResumeToken::presented(&token),
                    last_seq: param(Q_LAST_SEQ).and_then(|n| n.parse().ok()),
                });
                let user = param(Q_USER).as_deref().and_then(UserId::parse);
                let region = param(Q_REGION).as_deref().and_then(Region::parse);
                let caps = param(Q_CAPS);
                let wants = |cap| relays::has_cap(caps.as_deref(), cap);
                let (relays_cap, reads_acked) = (wants(relays::CAP_RELAYS), wants(wire::CAP_ACKS));
                let presence_off = param(Q_PRESENCE).as_deref() == Some("off");
                Inner::join(
                    this,
                    name,
                    meta,
                    resume,
                    user,
                    (region, relays_cap, reads_acked, presence_off),
                )
                .await
            }
            "/relays" => {
                // The Registry's call (a pinned node died or drains: `fresh`), or the router's
                // question for the SFU node when it renews a session token.
                this.load(Some(&name), now())?;
                Inner::check_relays(this, None, param("fresh").is_some()).await?;
                Inner::after_event(this).await?;
                let body = serde_json::json!({ "sfu": this.sfu_base() });
                json(200, &body.to_string())
            }
            "/stats" => {
                let body = {
                    this.load(Some(&name), now())?;
                    let core = this.core.borrow();
                    let mut stats = core
                        .as_ref()
                        .map(core::Room::stats)
                        .and_then(|s| serde_json::to_value(s).ok())
                        .unwrap_or_default();
                    if let Some(obj) = stats.as_object_mut() {
                        let sql = this.sql_counts.borrow();
                        obj.insert("sql_since_wake".into(), serde_json::json!(*sql));
                    }
                    stats.to_string()
                };
                json(200, &body)
            }
            "/drain" => {
                let t = now();
                let retry = param(Q_RETRY_AFTER_MS)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(5000);
                this.load(Some(&name), t)?;
                let mut closed = 0;
                this.with_core(|room| closed = room.handle_drain(retry, t));
                Inner::after_event(this).await?;
                json(200, &serde_json::json!({ "closed": closed }).to_string())
            }
            _ => http::error(ErrorCode::NotFound, "no such endpoint"),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        let this = &self.inner;
        let t = now();
        this.alarm_at.set(Some(None));
        this.load(None, t)?;
        let live: Vec<(ConnId, Option<Millis>)> = this
            .live_sockets()
            .into_iter()
            .map(|(conn, ws)| {
                let pinged =
                    ffi::auto_response_timestamp(this.state.as_raw(), ws.as_ref()).map(Millis);
                (conn, pinged)
            })
            .collect();
        this.with_core(|room| room.handle_sweep(&live, t));
        Inner::after_event(this).await?;
        Response::ok("swept")
    }
}

impl Inner {
    async fn join(
        this: &Rc<Inner>,
        name: RoomName,
        meta: Meta,
        resume: Option<ResumeRequest>,
        user: Option<UserId>,
        (region, caps, reads_acked, presence_off): (Option<Region>, bool, bool, bool),
    ) -> Result<Response> {
        this.load(Some(&name), now())?;
        // The welcome below hands out the room's relays: pin them first (or move off a
        // node that died without the Registry reaching the room).
        Inner::check_relays(this, region, false).await?;
        let t = now();
        if let Some(req) = &resume {
            // A resuming away peer's queue is read now, not at every wake.
            let target = this
                .core
                .borrow()
                .as_ref()
                .and_then(|room| room.resume_target(&req.token));
            if let Some(peer) = target {
                this.load_queue(&peer, t)?;
            }
        }
        let pair = WebSocketPair::new()?;
        // 53 random bits: the id is kept as a JS number in `conn_ids` (exact up to 2^53).
        let conn = ConnId(u64::from_le_bytes(http::random()?) & CONN_ID_MASK);
        let tag = conn.tag();
        let mut tags = vec![tag.as_str().into()];
        if caps {
            tags.push(relays::TAG_RELAYS.into());
        }
        this.state
            .as_raw()
            .accept_websocket_with_tags(pair.server.as_ref(), tags)
            .map_err(|e| worker::Error::RustError(format!("acceptWebSocket: {e:?}")))?;
        this.remember(&pair.server, conn);
        this.sockets.borrow_mut().insert(conn, pair.server);
        let join = Join {
            conn,
            meta,
            resume,
            fresh_peer: PeerId::from_random(http::random()?),
            fresh_token: ResumeToken::from_random(http::random()?),
            fresh_trace: TraceId::from_random(http::random()?),
            user,
            reads_acked,
            presence_off,
        };
        this.with_core(|room| room.handle_join(join, t));
        Inner::after_event(this).await?;
        Response::from_websocket(pair.client)
    }

    /// A message (`text`; `None`: binary) handled synchronously; returns when the room wants
    /// to wake (for the alarm, which the caller sets if it must).
    fn message(this: &Rc<Inner>, ws: WebSocket, text: Option<String>) -> Result<Option<Millis>> {
        let t = now();
        let Some(conn) = this.conn_of(&ws) else {
            let _ = ws.close(
                Some(core::close_code::UNKNOWN_CONNECTION),
                Some("unknown connection"),
            );
            return Ok(None);
        };
        // Cached once: replacing the handle on every message would cost a release of the old one.
        this.sockets.borrow_mut().entry(conn).or_insert(ws);
        this.load(None, t)?;
        this.with_core(|room| match &text {
            Some(text) => room.handle_text(conn, text, t),
            None => room.handle_binary(conn, t),
        });
        Inner::perform(this)
    }

    async fn socket_gone(this: &Rc<Inner>, ws: WebSocket, clean: bool) -> Result<()> {
        let t = now();
        let Some(conn) = this.conn_of(&ws) else {
            return Ok(());
        };
        this.sockets.borrow_mut().remove(&conn);
        this.load(None, t)?;
        this.with_core(|room| room.handle_close(conn, clean, t));
        // 1005/1006 may not be sent back; a normal close is always allowed.
        let _ = ws.close(Some(1000), Some("closed"));
        Inner::after_event(this).await
    }

    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        let key: &js_sys::Object = ws.as_ref().unchecked_ref();
        // A number, not a BigInt: converting a u64 both ways through BigInt cost
        // several percent of the room's CPU per message.
        if let Some(id) = self.conn_ids.get(key).as_f64()
            && id >= 0.0
            && id <= CONN_ID_MASK as f64
        {
            return Some(ConnId(id as u64));
        }
        let tags = self.state.as_raw().get_tags(ws.as_ref()).ok()?;
        let conn = tags.iter().find_map(|t| ConnId::from_tag(t))?;
        self.remember(ws, conn);
        Some(conn)
    }

    fn remember(&self, ws: &WebSocket, conn: ConnId) {
        let key: &js_sys::Object = ws.as_ref().unchecked_ref();
        // (A socket of an older deployment may carry a 64-bit id: found by tag each time.)
        if conn.0 <= CONN_ID_MASK {
            self.conn_ids
                .set(key, &wasm_bindgen::JsValue::from_f64(conn.0 as f64));
        }
    }

    fn live_sockets(&self) -> Vec<(ConnId, WebSocket)> {
        let all = self.state.as_raw().get_websockets().unwrap_or_default();
        all.into_iter()
            .map(WebSocket::from)
            .filter_map(|ws| self.conn_of(&ws).map(|c| (c, ws)))
            .collect()
    }

    /// The socket for `conn`: from the cache, else (after hibernation) from the runtime by tag.
    fn socket(&self, conn: ConnId) -> Option<WebSocket> {
        if let Some(ws) = self.sockets.borrow().get(&conn) {
            return Some(ws.clone());
        }
        let ws: WebSocket = self
            .state
            .as_raw()
            .get_websockets_with_tag(&conn.tag())
            .ok()?
            .into_iter()
            .next()?
            .into();
        self.sockets.borrow_mut().insert(conn, ws.clone());
        Some(ws)
    }

    fn with_core(&self, f: impl FnOnce(&mut core::Room)) {
        if let Some(room) = self.core.borrow_mut().as_mut() {
            f(room);
        }
    }

    fn exec(
        &self,
        sql: &SqlStorage,
        kind: &'static str,
        query: &str,
        bindings: Option<Vec<SqlStorageValue>>,
    ) -> Result<worker::SqlCursor> {
        *self.sql_counts.borrow_mut().entry(kind).or_default() += 1;
        sql.exec(query, bindings)
    }

    /// Builds the in-memory room from storage once per wake-up: the records and
    /// a summary per queue, not the queued frames (connected peers' queues
    /// are read here; an away peer's when it resumes).
    fn load(&self, name: Option<&RoomName>, t: Millis) -> Result<()> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        self.exec(&sql, "schema", SCHEMA, None)?;
        // One statement for the object's scalars (a fresh room's first join pays for every
        // statement here).
        let head = self
            .exec(
                &sql,
                "load",
                "SELECT (SELECT value FROM kv WHERE key = 'room') AS room, \
                        (SELECT value FROM kv WHERE key = 'counters') AS counters, \
                        (SELECT MAX(id) FROM bodies) AS max_body, \
                        (SELECT COUNT(*) FROM sqlite_master \
                         WHERE type = 'table' AND name = 'queue') AS old_queue",
                None,
            )?
            .to_array::<HeadRow>()?
            .into_iter()
            .next()
            .unwrap_or_default();
        if head.old_queue > 0.0 {
            migrate_v1_queue(&sql)?;
        }
        let name = match (name, head.room.as_deref().and_then(RoomName::parse)) {
            (_, Some(stored)) => stored,
            (Some(given), None) => {
                sql.exec(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES ('room', ?)",
                    vec![SqlStorageValue::from(given.as_str().to_owned())],
                )?;
                given.clone()
            }
            (None, None) => {
                return Err(worker::Error::RustError("room woke without a name".into()));
            }
        };
        let records: Vec<PeerRecord> = self
            .exec(&sql, "load", "SELECT record FROM peers", None)?
            .to_array::<PeerRow>()?
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r.record).ok())
            .collect();
        let stored: Vec<StoredQueue> = self
            .exec(
                &sql,
                "load",
                "SELECT peer_id, COUNT(*) AS n, SUM(bytes) AS b, MAX(seq) AS m FROM frames GROUP BY peer_id",
                None,
            )?
            .to_array::<SummaryRow>()?
            .into_iter()
            .filter_map(|r| {
                Some(StoredQueue {
                    peer: PeerId::parse(&r.peer_id)?,
                    len: r.n as usize,
                    bytes: r.b as usize,
                    max_seq: r.m as u64,
                })
            })
            .collect();
        // After a migration, bodies were added: read their high-water mark again.
        let max_body = if head.old_queue > 0.0 {
            self.exec(&sql, "load", "SELECT MAX(id) AS m FROM bodies", None)?
                .to_array::<MaxRow>()?
                .into_iter()
                .next()
                .and_then(|r| r.m)
        } else {
            head.max_body
        };
        let next_body_id = max_body.map_or(1, |m| m as u64 + 1);
        let counters: Counters = head
            .counters
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        let cfg = RoomConfig {
            name,
            limits: config::limits(&self.env),
            ice: config::ice(&self.env),
            sfu: config::sfu(&self.env),
        };
        let room = core::Room::restore(cfg, records, stored, counters, next_body_id, t);
        let to_load = room.peers_to_load();
        *self.core.borrow_mut() = Some(room);
        for peer in to_load {
            self.load_queue(&peer, t)?;
        }
        self.load_relays(&sql)?;
        Ok(())
    }

    /// Reads one peer's queued frames into the room.
    fn load_queue(&self, peer: &PeerId, t: Millis) -> Result<()> {
        let sql = self.state.storage().sql();
        let frames: Vec<StoredFrame> = self
            .exec(
                &sql,
                "load_queue",
                "SELECT f.seq AS seq, f.body_id AS body_id, b.ty AS ty, b.rest AS rest \
                 FROM frames f JOIN bodies b ON b.id = f.body_id WHERE f.peer_id = ?",
                Some(vec![SqlStorageValue::from(peer.as_str().to_owned())]),
            )?
            .to_array::<FrameRow>()?
            .into_iter()
            .filter_map(|r| {
                Some(StoredFrame {
                    seq: r.seq as u64,
                    body_id: r.body_id as u64,
                    body: SeqBody::stored(SeqType::parse(&r.ty)?, r.rest),
                })
            })
            .collect();
        self.with_core(|room| room.load_queue(peer, frames, t));
        Ok(())
    }

    /// Performs the room's outputs and keeps the alarm and the checkpoint timer right.
    async fn after_event(this: &Rc<Inner>) -> Result<()> {
        let wake_at = Inner::perform(this)?;
        this.schedule(wake_at).await
    }

    /// Carries out the core's outputs (sends, closes, writes, logs) and arms the checkpoint
    /// timer; returns when the room wants its alarm.
    fn perform(this: &Rc<Inner>) -> Result<Option<Millis>> {
        let (outputs, wake_at, checkpoint_at) = {
            let mut guard = this.core.borrow_mut();
            let Some(room) = guard.as_mut() else {
                return Ok(None);
            };
            (
                room.drain_outputs(),
                room.poll_timeout(),
                room.poll_checkpoint(),
            )
        };
        // Most events only send: the storage handle is fetched from the runtime when one writes.
        let mut sql_handle = None;
        let mut sql = || {
            sql_handle
                .get_or_insert_with(|| this.state.storage().sql())
                .clone()
        };
        for out in outputs {
            match out {
                Output::Send { conn, text } => {
                    if let Some(ws) = this.socket(conn) {
                        let _ = ws.send_with_str(&text);
                    }
                }
                Output::Close { conn, code, reason } => {
                    // `socket` borrows the cache itself, so no borrow may be held here.
                    if let Some(ws) = this.socket(conn) {
                        let _ = ws.close(Some(code), Some(reason.as_str()));
                    }
                    this.sockets.borrow_mut().remove(&conn);
                }
                Output::Store(op) => this.store(&sql(), op)?,
                Output::Counters(c) => {
                    let text = serde_json::to_string(&c).unwrap_or_default();
                    this.exec(
                        &sql(),
                        "counters",
                        "INSERT OR REPLACE INTO kv (key, value) VALUES ('counters', ?)",
                        Some(vec![SqlStorageValue::from(text)]),
                    )?;
                }
                Output::Log(l) => {
                    let guard = this.core.borrow();
                    let room = guard.as_ref().map_or("", |r| r.config().name.as_str());
                    worker::console_log!("{}", log_line(room, &l));
                }
            }
        }
        Inner::arm_checkpoint(this, checkpoint_at);
        Inner::release_relays_if_empty(this)?;
        Ok(wake_at)
    }

    /// Arms the in-memory checkpoint timer for `at`, unless one armed fires by then.
    /// A timer that fires runs the checkpoint only if it is due (an earlier
    /// one may have run it, and the room may since want a later one).
    fn arm_checkpoint(this: &Rc<Inner>, at: Option<Millis>) {
        let Some(at) = at else {
            return;
        };
        if this.timer_at.get().is_some_and(|t| t <= at.0) {
            return;
        }
        this.timer_at.set(Some(at.0));
        let delay = at.0.saturating_sub(now().0);
        let inner = Rc::clone(this);
        worker::wasm_bindgen_futures::spawn_local(async move {
            worker::Delay::from(std::time::Duration::from_millis(delay)).await;
            if inner.timer_at.get() == Some(at.0) {
                inner.timer_at.set(None);
            }
            let t = now();
            inner.with_core(|room| {
                if room.poll_checkpoint().is_some_and(|due| due <= t) {
                    room.handle_checkpoint(t);
                }
            });
            if let Err(e) = Inner::after_event(&inner).await {
                worker::console_error!(
                    "{}",
                    http::log_line("error", None, None, Some(&format!("checkpoint: {e}")))
                );
            }
        });
    }

    /// Sets the alarm if the room needs to wake earlier than it is scheduled to; deletes it
    /// when the room is empty (an emptied room is not woken again).
    async fn schedule(&self, wake_at: Option<Millis>) -> Result<()> {
        if wake_at.is_none() && self.is_empty() {
            return crate::alarm::clear(&self.state, &self.alarm_at).await;
        }
        crate::alarm::wake_by(&self.state, &self.alarm_at, wake_at).await
    }

    /// Whether [`Inner::schedule`] would touch storage for `wake_at`.
    fn must_schedule(&self, wake_at: Option<Millis>) -> bool {
        if wake_at.is_none() && self.is_empty() {
            return crate::alarm::may_be_set(&self.alarm_at);
        }
        crate::alarm::must_set(&self.alarm_at, wake_at)
    }

    /// Whether the room has no peers (connected or away); `false` before it is loaded.
    fn is_empty(&self) -> bool {
        self.core
            .borrow()
            .as_ref()
            .is_some_and(core::Room::is_empty)
    }

    fn store(&self, sql: &SqlStorage, op: StoreOp) -> Result<()> {
        let text = |s: &str| SqlStorageValue::from(s.to_owned());
        match op {
            StoreOp::PutPeer(rec) => {
                let record = serde_json::to_string(&rec)
                    .map_err(|e| worker::Error::RustError(e.to_string()))?;
                self.exec(
                    sql,
                    "put_peer",
                    "INSERT OR REPLACE INTO peers (peer_id, record) VALUES (?, ?)",
                    Some(vec![text(rec.peer_id.as_str()), record.into()]),
                )?;
            }
            StoreOp::DeletePeer(peer) => {
                let id = || vec![text(peer.as_str())];
                self.exec(
                    sql,
                    "delete_peer",
                    "DELETE FROM peers WHERE peer_id = ?",
                    Some(id()),
                )?;
                self.exec(
                    sql,
                    "delete_peer",
                    "DELETE FROM frames WHERE peer_id = ?",
                    Some(id()),
                )?;
            }
            StoreOp::PutBody { id, body } => {
                self.exec(
                    sql,
                    "put_body",
                    "INSERT OR REPLACE INTO bodies (id, ty, rest) VALUES (?, ?, ?)",
                    Some(vec![int(id), text(body.ty.as_str()), body.rest.into()]),
                )?;
            }
            StoreOp::PushQueue {
                peer,
                seq,
                body,
                bytes,
            } => {
                self.exec(
                    sql,
                    "push_frame",
                    "INSERT OR REPLACE INTO frames (peer_id, seq, body_id, bytes) VALUES (?, ?, ?, ?)",
                    Some(vec![
                        text(peer.as_str()),
                        int(seq),
                        int(body),
                        int(bytes as u64),
                    ]),
                )?;
            }
            StoreOp::TrimQueue { peer, through } => {
                self.exec(
                    sql,
                    "trim_frames",
                    "DELETE FROM frames WHERE peer_id = ? AND seq <= ?",
                    Some(vec![text(peer.as_str()), int(through)]),
                )?;
            }
            StoreOp::Renumber { peer, from, to } => {
                self.exec(
                    sql,
                    "renumber",
                    "UPDATE frames SET seq = ? WHERE peer_id = ? AND seq = ?",
                    Some(vec![int(to), text(peer.as_str()), int(from)]),
                )?;
            }
            StoreOp::GcBodies { below } => {
                self.exec(
                    sql,
                    "gc_bodies",
                    "DELETE FROM bodies WHERE id < ? AND id NOT IN (SELECT body_id FROM frames)",
                    Some(vec![int(below)]),
                )?;
            }
        }
        Ok(())
    }
}

/// Rooms stored before bodies were shared kept whole frames in `queue`; move
/// them into `bodies`/`frames` once, so a deploy loses no queued frame.
fn migrate_v1_queue(sql: &SqlStorage) -> Result<()> {
    #[derive(Deserialize)]
    struct Old {
        peer_id: String,
        seq: f64,
        frame: String,
    }
    #[derive(Deserialize)]
    struct Name {
        #[allow(dead_code)] // only its presence matters
        name: String,
    }
    let exists = !sql
        .exec(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'queue'",
            None,
        )?
        .to_array::<Name>()?
        .is_empty();
    if !exists {
        return Ok(());
    }
    let rows = sql
        .exec("SELECT peer_id, seq, frame FROM queue", None)?
        .to_array::<Old>()?;
    let mut next: u64 = sql
        .exec("SELECT MAX(id) AS m FROM bodies", None)?
        .to_array::<MaxRow>()?
        .into_iter()
        .next()
        .and_then(|r| r.m)
        .map_or(1, |m| m as u64 + 1);
    for r in rows {
        let Some(body) = SeqBody::from_v1_frame(&r.frame) else {
            continue;
        };
        let bytes = body.len() as u64;
        sql.exec(
            "INSERT OR REPLACE INTO bodies (id, ty, rest) VALUES (?, ?, ?)",
            vec![
                int(next),
                body.ty.as_str().to_owned().into(),
                body.rest.into(),
            ],
        )?;
        sql.exec(
            "INSERT OR REPLACE INTO frames (peer_id, seq, body_id, bytes) VALUES (?, ?, ?, ?)",
            vec![r.peer_id.into(), int(r.seq as u64), int(next), int(bytes)],
        )?;
        next += 1;
    }
    sql.exec("DROP TABLE queue", None)?;
    Ok(())
}

/// One structured log line for a room event, with the peer's trace id.
fn log_line(room: &str, l: &LogEvent) -> String {
    serde_json::json!({
        "ts": now().0,
        "event": l.event,
        "room": room,
        "peer_id": l.peer.as_ref().map(PeerId::as_str),
        "trace_id": l.trace.as_ref().map(TraceId::as_str),
        "detail": l.detail,
    })
    .to_string()
}

fn int(n: u64) -> SqlStorageValue {
    // Sequence numbers, ids and sizes stay far below 2^53, so the JS number is exact.
    SqlStorageValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}
