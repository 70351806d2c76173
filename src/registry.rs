//! The Registry Durable Object: the single source of truth for which relay nodes are alive.
//!
//! One object (named [`REGISTRY_NAME`]) runs the sans-IO [`switchboard_proto::registry`]
//! core. Relay nodes send signed heartbeats to it through the router; each renews the
//! node's lease. Records live in the object's SQLite storage, so a restart of the object
//! forgets no node and no replay guard; an alarm at the earliest lease end removes nodes
//! that stopped beating. A relay may also keep one WebSocket here (`GET /v1/relays/ws`,
//! accepted with the Hibernation API, tagged with the node id the router authenticated)
//! and send each heartbeat as a frame; both paths go through [`Registry::heartbeat`].
//! The router reads the node list through [`nodes`], which keeps a
//! copy per isolate for [`CACHE_MS`], so the registry is not on every request's path.

use std::cell::{Cell, RefCell};

use serde::Deserialize;
use switchboard_proto::ice::IceConfig;
use switchboard_proto::registry::{
    self as core, Dice, HeartbeatError, HeartbeatFrame, HeartbeatReply, NodeId, NodeRecord, Region,
    Registry as Core, RegistryConfig, RegistryOutput, Transport,
};
use switchboard_proto::{ErrorCode, Millis, relays};
use worker::{
    DurableObject, Env, Method, Request, RequestInit, Response, Result, SqlStorageValue, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair, durable_object,
};

use crate::config;
use crate::http::{self, json, now};

/// The name of the one Registry object.
pub const REGISTRY_NAME: &str = "relays";

/// How long the router keeps a copy of the node list.
pub const CACHE_MS: u64 = 3_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (node_id TEXT NOT NULL, room TEXT NOT NULL,
                                 PRIMARY KEY (node_id, room));
CREATE INDEX IF NOT EXISTS pins_by_room ON pins (room);
CREATE TABLE IF NOT EXISTS moving (node_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS retries (room TEXT PRIMARY KEY, attempt INTEGER NOT NULL,
                                    due INTEGER NOT NULL);
";

/// Rooms told per batch when a pinned node dies or drains; the alarm runs the next batch at once.
pub const NOTIFY_BATCH: usize = 64;

/// The tag prefix of a relay's WebSocket; the node id follows.
const NODE_TAG: &str = "node:";

/// The query parameter of the internal `/ws` request naming the authenticated node.
const Q_NODE: &str = "node";

/// The body of the Registry's internal `POST /pin`: the nodes a room pinned (none: unpinned).
#[derive(serde::Serialize, Deserialize)]
struct PinBody {
    room: String,
    nodes: Vec<String>,
}

/// The Registry Durable Object.
#[allow(missing_debug_implementations)] // State and Env have no Debug
#[durable_object]
pub struct Registry {
    state: State,
    env: Env,
    core: RefCell<Option<Core>>,
    alarm_at: crate::alarm::KnownAlarm,
}

#[derive(Deserialize)]
struct NodeRow {
    record: String,
}

#[derive(Deserialize)]
struct PinRow {
    node_id: String,
    room: String,
}

impl DurableObject for Registry {
    fn new(state: State, env: Env) -> Self {
        Registry {
            state,
            env,
            core: RefCell::new(None),
            alarm_at: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let t = now();
        self.load()?;
        match (req.method(), req.path().as_str()) {
            (Method::Post, "/heartbeat") => {
                let signature = req.headers().get(core::SIGNATURE_HEADER)?;
                let body = req.bytes().await?;
                let result = self.heartbeat(signature.as_deref(), &body, None, t);
                self.after_event().await?;
                match result {
                    Ok(()) => json(200, r#"{"ok":true}"#),
                    Err(e) => refused(e),
                }
            }
            (Method::Get, "/ws") => {
                // The router checked the upgrade's signature; only it reaches this object.
                let url = req.url()?;
                let Some(node) = http::query_param(&url, Q_NODE)
                    .as_deref()
                    .and_then(NodeId::parse)
                else {
                    return refused(HeartbeatError::BadNode);
                };
                self.accept_socket(&node)
            }
            (Method::Post, "/pin") => {
                let pin: PinBody = match req.json().await {
                    Ok(p) => p,
                    Err(_) => return http::error(ErrorCode::BadRequest, "bad pin"),
                };
                self.pin(&pin, t)?;
                self.after_event().await?;
                json(200, r#"{"ok":true}"#)
            }
            (Method::Get, "/nodes") => {
                let body = {
                    let guard = self.core.borrow();
                    let list: Vec<&NodeRecord> = guard
                        .as_ref()
                        .map(|c| c.nodes().collect())
                        .unwrap_or_default();
                    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
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
        let result = match (&message, self.socket_node(&ws)) {
            (_, None) => Err(HeartbeatError::BadNode),
            (WebSocketIncomingMessage::Binary(_), Some(_)) => Err(HeartbeatError::BadBody),
            (WebSocketIncomingMessage::String(text), Some(node)) => {
                HeartbeatFrame::parse(text).map(|frame| (frame, node))
            }
        };
        let reply = match result {
            Ok((frame, node)) => match self.socket_heartbeat(&node, &frame, t).await {
                Ok(Ok(())) => HeartbeatReply::Accepted,
                Ok(Err(e)) => {
                    log_refused(e);
                    HeartbeatReply::refused(e)
                }
                // We failed (storage), not the relay: it hears `internal` and counts a failed
                // heartbeat; the object and the socket keep serving.
                Err(e) => {
                    worker::console_error!(
                        "{}",
                        http::log_line("error", None, None, Some(&e.to_string()))
                    );
                    HeartbeatReply::Error {
                        code: ErrorCode::Internal.as_str().to_owned(),
                        message: "internal error".to_owned(),
                    }
                }
            },
            Err(e) => {
                log_refused(e);
                HeartbeatReply::refused(e)
            }
        };
        // A socket closing under us cannot take the reply; the relay falls back to POST.
        let _ = ws.send_with_str(reply.encode());
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // 1005/1006 may not be sent back; a normal close is always allowed.
        let _ = ws.close(Some(1000), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, _error: worker::Error) -> Result<()> {
        // The node's lease runs on; the relay reconnects or posts its next heartbeat.
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        let t = now();
        self.alarm_at.set(Some(None));
        self.load()?;
        if let Some(core) = self.core.borrow_mut().as_mut() {
            core.handle_sweep(t);
        }
        self.after_event().await?;
        self.notify_batch().await?;
        self.retry_batch().await?;
        Response::ok("swept")
    }
}

impl Registry {
    /// One heartbeat, from `POST /heartbeat` (`socket_node` `None`) or a frame on the socket
    /// of `socket_node`: the same authentication, replay guard and core handling.
    fn heartbeat(
        &self,
        signature: Option<&str>,
        body: &[u8],
        socket_node: Option<&NodeId>,
        t: Millis,
    ) -> std::result::Result<(), HeartbeatError> {
        let Some(secret) = config::registry_secret(&self.env) else {
            // The router refuses heartbeats before they get here when no secret is set.
            return Err(HeartbeatError::BadSignature);
        };
        let (hb, signed) =
            core::check_heartbeat(secret.as_bytes(), signature, body, socket_node, t)?;
        let via = if socket_node.is_some() {
            Transport::Ws
        } else {
            Transport::Http
        };
        let mut guard = self.core.borrow_mut();
        let Some(core) = guard.as_mut() else {
            return Err(HeartbeatError::Full);
        };
        core.handle_heartbeat_via(hb, signed, via, t)
    }

    /// A heartbeat frame on the socket of `node`: the POST's handling, for that node only.
    async fn socket_heartbeat(
        &self,
        node: &NodeId,
        frame: &HeartbeatFrame,
        t: Millis,
    ) -> Result<std::result::Result<(), HeartbeatError>> {
        self.load()?;
        let result = self.heartbeat(Some(&frame.signature), frame.body.as_bytes(), Some(node), t);
        self.after_event().await?;
        Ok(result)
    }

    /// Accepts node `node`'s WebSocket (hibernatable, tagged with the node id). Earlier
    /// sockets of the same node are closed: a relay holds one, and one that reconnects after
    /// a network failure leaves no half-open socket behind.
    fn accept_socket(&self, node: &NodeId) -> Result<Response> {
        let tag = format!("{NODE_TAG}{node}");
        let raw = self.state.as_raw();
        for old in raw.get_websockets_with_tag(&tag).unwrap_or_default() {
            let _ = WebSocket::from(old).close(Some(1000), Some("replaced by a newer socket"));
        }
        let pair = WebSocketPair::new()?;
        raw.accept_websocket_with_tags(pair.server.as_ref(), vec![tag.as_str().into()])
            .map_err(|e| worker::Error::RustError(format!("acceptWebSocket: {e:?}")))?;
        worker::console_log!(
            "{}",
            serde_json::json!({"ts": now().0, "event": "relay_socket", "node_id": node.as_str()})
        );
        Response::from_websocket(pair.client)
    }

    /// The node a socket was opened for, from its tag.
    fn socket_node(&self, ws: &WebSocket) -> Option<NodeId> {
        let tags = self.state.as_raw().get_tags(ws.as_ref()).ok()?;
        tags.iter()
            .find_map(|t| t.strip_prefix(NODE_TAG).and_then(NodeId::parse))
    }

    fn load(&self) -> Result<()> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        let sql = self.state.storage().sql();
        sql.exec(SCHEMA, None)?;
        let records: Vec<NodeRecord> = sql
            .exec("SELECT record FROM nodes", None)?
            .to_array::<NodeRow>()?
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r.record).ok())
            .collect();
        let cfg = RegistryConfig {
            lease_ms: config::relay_lease_ms(&self.env),
            ..RegistryConfig::default()
        };
        *self.core.borrow_mut() = Some(Core::restore(cfg, records));
        Ok(())
    }

    /// Performs the core's outputs and keeps the alarm at the earliest lease end.
    async fn after_event(&self) -> Result<()> {
        let (outputs, wake_at) = {
            let mut guard = self.core.borrow_mut();
            let Some(core) = guard.as_mut() else {
                return Ok(());
            };
            (core.drain_outputs(), core.poll_timeout())
        };
        let sql = self.state.storage().sql();
        let mut moving = false;
        for out in outputs {
            match out {
                RegistryOutput::Store(rec) => {
                    let text = serde_json::to_string(&rec)
                        .map_err(|e| worker::Error::RustError(e.to_string()))?;
                    sql.exec(
                        "INSERT OR REPLACE INTO nodes (node_id, record) VALUES (?, ?)",
                        vec![
                            SqlStorageValue::from(rec.node_id().as_str().to_owned()),
                            SqlStorageValue::from(text),
                        ],
                    )?;
                }
                RegistryOutput::Delete(id) => {
                    sql.exec(
                        "DELETE FROM nodes WHERE node_id = ?",
                        vec![SqlStorageValue::from(id.as_str().to_owned())],
                    )?;
                }
                RegistryOutput::Expired(id)
                | RegistryOutput::Draining(id)
                | RegistryOutput::PinStale(id) => {
                    mark_moving(&sql, &id)?;
                    moving = true;
                }
                RegistryOutput::Log(event, node, detail) => {
                    let line = serde_json::json!({
                        "ts": now().0, "event": event, "node_id": node.as_str(), "detail": detail,
                    });
                    worker::console_log!("{line}");
                }
            }
        }
        // Rooms to tell wait for no lease: the alarm fires at once.
        let wake_at = if moving { Some(at_once()) } else { wake_at };
        crate::alarm::wake_by(&self.state, &self.alarm_at, wake_at).await
    }

    /// A room's pin: `POST /pin {room, nodes}` replaces the room's rows (none: unpinned).
    /// A pin that names a node which is no longer live (its lease ended or it drains while
    /// the pin was on its way) gets the core's [`RegistryOutput::PinStale`]: the caller's
    /// [`Registry::after_event`] marks that node moving and wakes the alarm at once, so the
    /// room is called back.
    fn pin(&self, pin: &PinBody, now: Millis) -> Result<()> {
        let sql = self.state.storage().sql();
        let room = || SqlStorageValue::from(pin.room.clone());
        sql.exec("DELETE FROM pins WHERE room = ?", vec![room()])?;
        let mut ids = Vec::new();
        for node in pin.nodes.iter().take(relays::ROOM_NODES) {
            // Rooms pin ids they took from the registry; anything else names no node.
            let Some(id) = NodeId::parse(node) else {
                continue;
            };
            sql.exec(
                "INSERT OR IGNORE INTO pins (node_id, room) VALUES (?, ?)",
                vec![SqlStorageValue::from(node.clone()), room()],
            )?;
            ids.push(id);
        }
        if let Some(core) = self.core.borrow_mut().as_mut() {
            core.handle_pin(&ids, now);
        }
        Ok(())
    }

    /// Tells up to [`NOTIFY_BATCH`] rooms pinned to a dead or draining node to look at the
    /// registry again (the room's `/relays`), forgets their rows, and wakes again at once
    /// while rows of such nodes remain. A room that no longer pins the node does nothing.
    async fn notify_batch(&self) -> Result<()> {
        let sql = self.state.storage().sql();
        let rows: Vec<PinRow> = sql
            .exec(
                &format!(
                    "SELECT p.node_id AS node_id, p.room AS room FROM pins p \
                     JOIN moving m ON m.node_id = p.node_id LIMIT {NOTIFY_BATCH}"
                ),
                None,
            )?
            .to_array()?;
        if !rows.is_empty() {
            let line = serde_json::json!({
                "ts": now().0, "event": "rooms_notified", "rooms": rows.len(),
                "node_id": rows.first().map(|r| r.node_id.as_str()),
            });
            worker::console_log!("{line}");
        }
        let calls = rows.iter().map(|r| notify_room(&self.env, &r.room));
        let results = futures_util::future::join_all(calls).await;
        for (row, result) in rows.iter().zip(results) {
            if let Err(e) = result {
                self.notify_failed(&sql, &row.room, 0, &e)?;
            }
            sql.exec(
                "DELETE FROM pins WHERE node_id = ? AND room = ?",
                vec![
                    SqlStorageValue::from(row.node_id.clone()),
                    SqlStorageValue::from(row.room.clone()),
                ],
            )?;
        }
        if rows.len() < NOTIFY_BATCH {
            sql.exec(
                "DELETE FROM moving WHERE node_id NOT IN (SELECT node_id FROM pins)",
                None,
            )?;
            return Ok(());
        }
        crate::alarm::wake_by(&self.state, &self.alarm_at, Some(at_once())).await
    }
}

/// The alarm time for "at once": one millisecond after now. Inside the alarm handler `now()`
/// (`Date.now()`, which stands still between I/O) can equal the time of the alarm being
/// handled, and the runtime deletes an alarm still set to that time when the handler returns:
/// the next batch (and every later lease end, the object believing an alarm was set) would
/// never fire.
fn at_once() -> Millis {
    now().plus(1)
}

impl Registry {
    /// A call to `room` failed after `attempt` earlier retries: schedules the next retry
    /// ([`core::notify_retry_delay`]) or, past [`core::NOTIFY_RETRIES`], gives up (the room then
    /// moves at its next join).
    fn notify_failed(
        &self,
        sql: &worker::SqlStorage,
        room: &str,
        attempt: u32,
        e: &worker::Error,
    ) -> Result<()> {
        let next = attempt.saturating_add(1);
        let room_v = || SqlStorageValue::from(room.to_owned());
        match core::notify_retry_delay(next) {
            Some(delay) => {
                let due = now().plus(delay).0;
                sql.exec(
                    "INSERT OR REPLACE INTO retries (room, attempt, due) VALUES (?, ?, ?)",
                    vec![
                        room_v(),
                        SqlStorageValue::from(i64::from(next)),
                        SqlStorageValue::from(i64::try_from(due).unwrap_or(i64::MAX)),
                    ],
                )?;
            }
            None => {
                sql.exec("DELETE FROM retries WHERE room = ?", vec![room_v()])?;
            }
        }
        let event = if next > core::NOTIFY_RETRIES {
            "room_notify_gave_up"
        } else {
            "room_notify_failed"
        };
        worker::console_error!(
            "{}",
            http::log_line(event, Some(room), None, Some(&e.to_string()))
        );
        Ok(())
    }

    /// Calls again, up to [`NOTIFY_BATCH`] at a time, the rooms whose call failed and whose
    /// retry is due, then keeps the alarm at the next retry due.
    async fn retry_batch(&self) -> Result<()> {
        let sql = self.state.storage().sql();
        let t = i64::try_from(now().0).unwrap_or(i64::MAX);
        let rows: Vec<RetryRow> = sql
            .exec(
                &format!(
                    "SELECT room, attempt FROM retries WHERE due <= ? ORDER BY due LIMIT {NOTIFY_BATCH}"
                ),
                vec![SqlStorageValue::from(t)],
            )?
            .to_array()?;
        let calls = rows.iter().map(|r| notify_room(&self.env, &r.room));
        let results = futures_util::future::join_all(calls).await;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(()) => {
                    sql.exec(
                        "DELETE FROM retries WHERE room = ?",
                        vec![SqlStorageValue::from(row.room.clone())],
                    )?;
                }
                Err(e) => {
                    let attempt = u32::try_from(row.attempt).unwrap_or(u32::MAX);
                    self.notify_failed(&sql, &row.room, attempt, &e)?;
                }
            }
        }
        let next: Option<i64> = sql
            .exec("SELECT MIN(due) AS due FROM retries", None)?
            .to_array::<DueRow>()?
            .into_iter()
            .next()
            .and_then(|r| r.due);
        let next = next.and_then(|d| u64::try_from(d).ok()).map(Millis);
        crate::alarm::wake_by(&self.state, &self.alarm_at, next).await
    }
}

#[derive(Deserialize)]
struct RetryRow {
    room: String,
    attempt: i64,
}

#[derive(Deserialize)]
struct DueRow {
    due: Option<i64>,
}

/// Rooms pinned to `id` must move: the alarm tells them ([`Registry::notify_batch`]).
fn mark_moving(sql: &worker::SqlStorage, id: &core::NodeId) -> Result<()> {
    sql.exec(
        "INSERT OR IGNORE INTO moving (node_id) VALUES (?)",
        vec![SqlStorageValue::from(id.as_str().to_owned())],
    )?;
    Ok(())
}

/// The HTTP answer refusing a heartbeat or an upgrade for `e` (status and `code` as in
/// docs/PROTOCOL.md; the message never repeats the secret or a signature).
pub fn refused(e: HeartbeatError) -> Result<Response> {
    log_refused(e);
    json(
        e.http_status(),
        &switchboard_proto::wire::http_error_body(e.code(), e.message()),
    )
}

fn log_refused(e: HeartbeatError) {
    worker::console_log!(
        "{}",
        http::log_line("heartbeat_refused", None, None, Some(e.message()))
    );
}

/// Asks room `room` to check its relays now (`https://room.internal/relays`).
async fn notify_room(env: &Env, room: &str) -> Result<()> {
    let Some(name) = switchboard_proto::RoomName::parse(room) else {
        return Ok(());
    };
    let mut url = worker::Url::parse("https://room.internal/relays")
        .map_err(|e| worker::Error::RustError(e.to_string()))?;
    url.query_pairs_mut()
        .append_pair(crate::room::Q_ROOM, name.as_str())
        .append_pair("fresh", "1");
    let stub = env
        .durable_object("ROOM")?
        .id_from_name(name.as_str())?
        .get_stub()?;
    let resp = stub.fetch_with_str(url.as_str()).await?;
    if resp.status_code() >= 400 {
        return Err(worker::Error::RustError(format!(
            "room answered {}",
            resp.status_code()
        )));
    }
    Ok(())
}

/// Records that `room` pinned `nodes` (none: it pinned nothing any more), so that the room is
/// told when one of them dies or drains.
pub async fn pin_room(env: &Env, room: &str, nodes: Vec<String>) -> Result<()> {
    let body = serde_json::to_string(&PinBody {
        room: room.to_owned(),
        nodes,
    })
    .map_err(|e| worker::Error::RustError(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&body)));
    let req = Request::new_with_init(&internal("pin"), &init)?;
    let resp = stub(env)?.fetch_with_request(req).await?;
    if resp.status_code() >= 400 {
        return Err(worker::Error::RustError(format!(
            "registry answered {}",
            resp.status_code()
        )));
    }
    Ok(())
}

/// `https://registry.internal/{action}`: the request the Registry object receives.
fn internal(action: &str) -> String {
    format!("https://registry.internal/{action}")
}

/// Forwards a heartbeat (body and signature header as received) to the Registry object.
pub async fn forward_heartbeat(
    env: &Env,
    signature: Option<String>,
    body: Vec<u8>,
) -> Result<Response> {
    let headers = worker::Headers::new();
    if let Some(sig) = signature {
        headers.set(core::SIGNATURE_HEADER, &sig)?;
    }
    let mut init = RequestInit::new();
    let array = js_sys::Uint8Array::from(body.as_slice());
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(array.into()));
    let req = Request::new_with_init(&internal("heartbeat"), &init)?;
    stub(env)?.fetch_with_request(req).await
}

/// Hands an authenticated upgrade for `node` to the Registry object, which accepts the socket.
pub async fn open_socket(env: &Env, node: &NodeId) -> Result<Response> {
    let mut url =
        worker::Url::parse(&internal("ws")).map_err(|e| worker::Error::RustError(e.to_string()))?;
    url.query_pairs_mut().append_pair(Q_NODE, node.as_str());
    let headers = worker::Headers::new();
    headers.set("upgrade", "websocket")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let req = Request::new_with_init(url.as_str(), &init)?;
    stub(env)?.fetch_with_request(req).await
}

fn stub(env: &Env) -> Result<worker::Stub> {
    env.durable_object("REGISTRY")?
        .id_from_name(REGISTRY_NAME)?
        .get_stub()
}

thread_local! {
    static CACHE: RefCell<Option<(Millis, Vec<NodeRecord>)>> = const { RefCell::new(None) };
}

/// Every node the Registry holds, from this isolate's copy when it is fresh enough (younger
/// than [`CACHE_MS`] and no lease in it ended yet).
///
/// A failure to reach the Registry yields the last copy (or nothing): handing out a
/// slightly old list beats failing a join.
pub async fn nodes(env: &Env, fresh: bool) -> Vec<NodeRecord> {
    let t = now();
    if !fresh {
        let cached = CACHE.with(|c| {
            c.borrow()
                .as_ref()
                // A node whose lease ended in the copy may have beaten since (a lease shorter
                // than the copy's age): ask again rather than drop a live node.
                .filter(|(at, list)| {
                    t.since(*at) < CACHE_MS && list.iter().all(|r| r.lease_until > t)
                })
                .map(|(_, list)| list.clone())
        });
        if let Some(list) = cached {
            return list;
        }
    }
    match fetch_nodes(env).await {
        Ok(list) => {
            CACHE.with(|c| *c.borrow_mut() = Some((t, list.clone())));
            list
        }
        Err(e) => {
            worker::console_error!(
                "{}",
                http::log_line("registry_unreachable", None, None, Some(&e.to_string()))
            );
            CACHE.with(|c| {
                c.borrow()
                    .as_ref()
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default()
            })
        }
    }
}

async fn fetch_nodes(env: &Env) -> Result<Vec<NodeRecord>> {
    let mut resp = stub(env)?.fetch_with_str(&internal("nodes")).await?;
    resp.json().await
}

/// The ICE configuration for a client: `STUN_URLS`/`TURN_URLS` as configured, replaced by
/// two registered relay nodes drawn for the client's region ([`core::select`]) when the
/// registry is on and has live nodes.
pub async fn ice_config(env: &Env, req: &Request) -> IceConfig {
    let mut cfg = config::ice(env);
    if config::registry_secret(env).is_none() {
        return cfg;
    }
    let list = nodes(env, false).await;
    let region = client_region(env, req);
    let chosen = core::select(&list, region.as_ref(), 2, now(), &mut dice());
    if chosen.is_empty() {
        return cfg;
    }
    let mut stun = Vec::new();
    let mut turn = Vec::new();
    for rec in chosen {
        stun.extend(rec.heartbeat.urls.stun.iter().cloned());
        turn.extend(rec.heartbeat.urls.turn.iter().cloned());
    }
    cfg.stun_urls = stun;
    cfg.turn_urls = turn;
    cfg
}

/// Fresh randomness for [`core::select`] (getrandom; a fixed seed only if that fails, which
/// costs the spread of one answer, never the answer).
pub fn dice() -> Dice {
    Dice::new(http::random::<8>().map_or(0, u64::from_le_bytes))
}

/// The client's region: `X-Switchboard-Region` when trusted (local development), else
/// the continent Cloudflare saw the request come from (`request.cf.continent`).
pub fn client_region(env: &Env, req: &Request) -> Option<Region> {
    if config::trust_region_header(env)
        && let Ok(Some(h)) = req.headers().get("x-switchboard-region")
    {
        return Region::parse(&h);
    }
    req.cf()
        .and_then(worker::Cf::continent)
        .and_then(|c| Region::parse(&c))
}

/// `GET /v1/relays` (admin): every node with its region, load, lease age and state.
pub async fn list_for_admin(env: &Env) -> Result<Response> {
    let t = now();
    let list = nodes(env, true).await;
    let view: Vec<serde_json::Value> = list
        .iter()
        .map(|r| {
            serde_json::json!({
                "node_id": r.node_id().as_str(),
                "region": r.heartbeat.region.as_str(),
                "urls": r.heartbeat.urls,
                "load": r.heartbeat.load,
                "load_score": r.heartbeat.load.score(),
                "draining": r.heartbeat.draining,
                "live": r.lease_until > t,
                "lease_age_ms": t.since(r.last_seen),
                "lease_left_ms": r.lease_until.since(t),
                "first_seen": r.first_seen.0,
                "transport": r.transport,
            })
        })
        .collect();
    json(200, &serde_json::json!({ "relays": view }).to_string())
}
