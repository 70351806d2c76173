//! The Room Durable Object: one per room, the single owner of the room's state.
//!
//! It holds the room's WebSockets through the Hibernation API and runs the
//! sans-IO [`switchboard_proto::room::Room`] over them. What must survive
//! hibernation and restarts lives in the object's SQLite storage (peers, their
//! resume queues, counters); each socket carries its [`ConnId`] as a tag.
//! Pings are answered by the runtime's auto-response, so an idle room sleeps.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde::Deserialize;
use switchboard_proto::room::{
    self as core, Counters, Join, Output, PeerRecord, ResumeRequest, RoomConfig, StoreOp,
};
use switchboard_proto::{ConnId, ErrorCode, Meta, Millis, PeerId, ResumeToken, RoomName, wire};
use worker::{
    DurableObject, Env, Request, Response, Result, SqlStorageValue, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair, durable_object,
};

use crate::config;
use crate::ffi;
use crate::http::{self, json, now};

// The router calls the object at `https://room.internal/{join,stats}` with these
// query parameters; clients never reach the object directly.
/// Internal query parameter: the room name.
pub const Q_ROOM: &str = "room";
/// Internal query parameter: the joining peer's meta JSON (validated by the router).
pub const Q_META: &str = "meta";
/// Internal query parameter: the presented resume token.
pub const Q_RESUME: &str = "resume";
/// Internal query parameter: the client's `last_seq`.
pub const Q_LAST_SEQ: &str = "last_seq";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS peers (peer_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queue (peer_id TEXT NOT NULL, seq INTEGER NOT NULL, frame TEXT NOT NULL,
                                  PRIMARY KEY (peer_id, seq));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The Room Durable Object.
#[allow(missing_debug_implementations)] // State and Env have no Debug
#[durable_object]
pub struct Room {
    state: State,
    env: Env,
    core: RefCell<Option<core::Room>>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    alarm_at: Cell<Option<Option<u64>>>,
}

#[derive(Deserialize)]
struct QueueRow {
    peer_id: String,
    seq: f64,
    frame: String,
}

#[derive(Deserialize)]
struct PeerRow {
    record: String,
}

#[derive(Deserialize)]
struct KvRow {
    value: String,
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
        Room {
            state,
            env,
            core: RefCell::new(None),
            sockets: RefCell::new(HashMap::new()),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
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
                self.join(name, meta, resume).await
            }
            "/stats" => {
                let body = {
                    self.load(Some(&name), now())?;
                    let core = self.core.borrow();
                    let stats = core.as_ref().map(core::Room::stats);
                    serde_json::to_string(&stats).unwrap_or_default()
                };
                json(200, &body)
            }
            _ => http::error(ErrorCode::NotFound, "no such endpoint"),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let t = now();
        let Some(conn) = self.conn_of(&ws) else {
            let _ = ws.close(
                Some(core::close_code::UNKNOWN_CONNECTION),
                Some("unknown connection"),
            );
            return Ok(());
        };
        self.sockets.borrow_mut().insert(conn, ws);
        self.load(None, t)?;
        self.with_core(|room| match &message {
            WebSocketIncomingMessage::String(text) => room.handle_text(conn, text, t),
            WebSocketIncomingMessage::Binary(_) => room.handle_binary(conn, t),
        });
        self.after_event().await
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        self.socket_gone(ws, code == 1000 || code == 1001).await
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        self.socket_gone(ws, false).await
    }

    async fn alarm(&self) -> Result<Response> {
        let t = now();
        self.alarm_at.set(Some(None));
        self.load(None, t)?;
        let live: Vec<(ConnId, Option<Millis>)> = self
            .live_sockets()
            .into_iter()
            .map(|(conn, ws)| {
                let pinged =
                    ffi::auto_response_timestamp(self.state.as_raw(), ws.as_ref()).map(Millis);
                (conn, pinged)
            })
            .collect();
        self.with_core(|room| room.handle_sweep(&live, t));
        self.after_event().await?;
        Response::ok("swept")
    }
}

impl Room {
    async fn join(
        &self,
        name: RoomName,
        meta: Meta,
        resume: Option<ResumeRequest>,
    ) -> Result<Response> {
        let t = now();
        self.load(Some(&name), t)?;
        let pair = WebSocketPair::new()?;
        let conn = ConnId(u64::from_le_bytes(http::random()?));
        let tag = conn.tag();
        self.state
            .as_raw()
            .accept_websocket_with_tags(pair.server.as_ref(), vec![tag.as_str().into()])
            .map_err(|e| worker::Error::RustError(format!("acceptWebSocket: {e:?}")))?;
        self.sockets.borrow_mut().insert(conn, pair.server);
        let join = Join {
            conn,
            meta,
            resume,
            fresh_peer: PeerId::from_random(http::random()?),
            fresh_token: ResumeToken::from_random(http::random()?),
        };
        self.with_core(|room| room.handle_join(join, t));
        self.after_event().await?;
        Response::from_websocket(pair.client)
    }

    async fn socket_gone(&self, ws: WebSocket, clean: bool) -> Result<()> {
        let t = now();
        let Some(conn) = self.conn_of(&ws) else {
            return Ok(());
        };
        self.sockets.borrow_mut().remove(&conn);
        self.load(None, t)?;
        self.with_core(|room| room.handle_close(conn, clean, t));
        // 1005/1006 may not be sent back; a normal close is always allowed.
        let _ = ws.close(Some(1000), Some("closed"));
        self.after_event().await
    }

    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        let tags = self.state.as_raw().get_tags(ws.as_ref()).ok()?;
        tags.iter().find_map(|t| ConnId::from_tag(t))
    }

    fn live_sockets(&self) -> Vec<(ConnId, WebSocket)> {
        let all = self.state.as_raw().get_websockets().unwrap_or_default();
        all.into_iter()
            .map(WebSocket::from)
            .filter_map(|ws| self.conn_of(&ws).map(|c| (c, ws)))
            .collect()
    }

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

    /// Builds the in-memory room from storage once per wake-up.
    fn load(&self, name: Option<&RoomName>, t: Millis) -> Result<()> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        sql.exec(SCHEMA, None)?;
        let stored_name: Option<RoomName> = sql
            .exec("SELECT value FROM kv WHERE key = 'room'", None)?
            .to_array::<KvRow>()?
            .into_iter()
            .next()
            .and_then(|r| RoomName::parse(&r.value));
        let name = match (name, stored_name) {
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
        let records: Vec<PeerRecord> = sql
            .exec("SELECT record FROM peers", None)?
            .to_array::<PeerRow>()?
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r.record).ok())
            .collect();
        let queued: Vec<(PeerId, u64, String)> = sql
            .exec("SELECT peer_id, seq, frame FROM queue", None)?
            .to_array::<QueueRow>()?
            .into_iter()
            .filter_map(|r| PeerId::parse(&r.peer_id).map(|p| (p, r.seq as u64, r.frame)))
            .collect();
        let counters: Counters = sql
            .exec("SELECT value FROM kv WHERE key = 'counters'", None)?
            .to_array::<KvRow>()?
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.value).ok())
            .unwrap_or_default();
        let cfg = RoomConfig {
            name,
            limits: config::limits(&self.env),
            ice: config::ice(&self.env),
        };
        *self.core.borrow_mut() = Some(core::Room::restore(cfg, records, queued, counters, t));
        Ok(())
    }

    /// Performs the room's outputs, persists counters and keeps the alarm right.
    async fn after_event(&self) -> Result<()> {
        let (outputs, counters, wake_at, room_name) = {
            let mut guard = self.core.borrow_mut();
            let Some(room) = guard.as_mut() else {
                return Ok(());
            };
            let outputs = room.drain_outputs();
            let counters = room.take_dirty_counters().cloned();
            (
                outputs,
                counters,
                room.poll_timeout(),
                room.config().name.as_str().to_owned(),
            )
        };
        let sql = self.state.storage().sql();
        for out in outputs {
            match out {
                Output::Send { conn, text } => {
                    if let Some(ws) = self.socket(conn) {
                        let _ = ws.send_with_str(&text);
                    }
                }
                Output::Close { conn, code, reason } => {
                    // `socket` borrows the cache itself, so no borrow may be held here.
                    if let Some(ws) = self.socket(conn) {
                        let _ = ws.close(Some(code), Some(reason));
                    }
                    self.sockets.borrow_mut().remove(&conn);
                }
                Output::Store(op) => store(&sql, op)?,
                Output::Log(l) => {
                    let line = http::log_line(
                        l.event,
                        Some(&room_name),
                        l.peer.as_ref().map(PeerId::as_str),
                        l.detail,
                    );
                    worker::console_log!("{line}");
                }
            }
        }
        if let Some(c) = counters {
            let text = serde_json::to_string(&c).unwrap_or_default();
            sql.exec(
                "INSERT OR REPLACE INTO kv (key, value) VALUES ('counters', ?)",
                vec![SqlStorageValue::from(text)],
            )?;
        }
        self.schedule(wake_at).await
    }

    /// Sets the alarm if the room needs to wake earlier than it is scheduled to.
    async fn schedule(&self, wake_at: Option<Millis>) -> Result<()> {
        let Some(want) = wake_at else {
            return Ok(());
        };
        let storage = self.state.storage();
        let current = match self.alarm_at.get() {
            Some(known) => known,
            None => {
                let a = storage
                    .get_alarm()
                    .await?
                    .and_then(|ms| u64::try_from(ms).ok());
                self.alarm_at.set(Some(a));
                a
            }
        };
        if current.is_none_or(|at| at > want.0) {
            // An absolute time: `set_alarm(i64)` would be read as an offset.
            let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(want.0 as f64));
            storage.set_alarm(worker::ScheduledTime::new(at)).await?;
            self.alarm_at.set(Some(Some(want.0)));
        }
        Ok(())
    }
}

fn store(sql: &worker::SqlStorage, op: StoreOp) -> Result<()> {
    match op {
        StoreOp::PutPeer(rec) => {
            let text =
                serde_json::to_string(&rec).map_err(|e| worker::Error::RustError(e.to_string()))?;
            sql.exec(
                "INSERT OR REPLACE INTO peers (peer_id, record) VALUES (?, ?)",
                vec![rec.peer_id.as_str().to_owned().into(), text.into()],
            )?;
        }
        StoreOp::DeletePeer(peer) => {
            let id = || SqlStorageValue::from(peer.as_str().to_owned());
            sql.exec("DELETE FROM peers WHERE peer_id = ?", vec![id()])?;
            sql.exec("DELETE FROM queue WHERE peer_id = ?", vec![id()])?;
        }
        StoreOp::PushQueue { peer, seq, text } => {
            sql.exec(
                "INSERT OR REPLACE INTO queue (peer_id, seq, frame) VALUES (?, ?, ?)",
                vec![peer.as_str().to_owned().into(), seq_value(seq), text.into()],
            )?;
        }
        StoreOp::TrimQueue { peer, through } => {
            sql.exec(
                "DELETE FROM queue WHERE peer_id = ? AND seq <= ?",
                vec![peer.as_str().to_owned().into(), seq_value(through)],
            )?;
        }
    }
    Ok(())
}

fn seq_value(seq: u64) -> SqlStorageValue {
    // Sequence numbers stay far below 2^53 (one per frame), so the JS number is exact.
    SqlStorageValue::Integer(i64::try_from(seq).unwrap_or(i64::MAX))
}
