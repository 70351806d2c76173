//! The room state machine, driven with injected time and in-memory sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::{Value, json};
use switchboard_proto::ice::IceConfig;
use switchboard_proto::limits::Limits;
use switchboard_proto::room::{
    COUNTERS_EVERY_MS, Counters, Join, LAZY_BUSY_MAX_MS, Output, PeerRecord, ResumeRequest, Room,
    RoomConfig, StoreOp, StoredFrame, StoredQueue, close_code,
};
use switchboard_proto::sfu_token::{self, SfuConfig};
use switchboard_proto::wire::SeqBody;
use switchboard_proto::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName, TraceId};

const T0: Millis = Millis(1_700_000_000_000);

/// A room plus a record of what each socket received and what storage holds.
struct Harness {
    room: Room,
    next_conn: u64,
    next_id: u8,
    inbox: std::collections::HashMap<u64, Vec<Value>>,
    closed: std::collections::HashMap<u64, u16>,
    records: std::collections::BTreeMap<String, PeerRecord>,
    /// (peer, seq) -> (body id, bytes), as the `queue` table.
    queue: std::collections::BTreeMap<(String, u64), (u64, usize)>,
    /// The `bodies` table.
    bodies: std::collections::BTreeMap<u64, SeqBody>,
    counters: Option<Counters>,
    /// Kinds of outputs in order: `send:<conn>`, `store`, `counters`, `close`, `log`.
    ops: Vec<String>,
    logs: Vec<(&'static str, Option<&'static str>)>,
    limits: Limits,
    /// Whether the clients joining from now on say `caps=acks` (v1.2).
    reads_acked: bool,
    /// Whether the clients joining from now on say `presence=off`.
    presence_off: bool,
}

struct Client {
    conn: ConnId,
    peer: PeerId,
    token: String,
}

fn limits() -> Limits {
    Limits {
        heartbeat_ms: 1000,
        resume_window_ms: 5000,
        max_peers: 4,
        presence_max_peers: 4,
        max_frame_bytes: 256,
        rate_per_s: 10,
        rate_burst: 20,
        queue_max_frames: 5,
        queue_max_bytes: 4096,
        room_queue_max_bytes: 1 << 20,
        flush_after_ms: 500,
        ack_delay_ms: 200,
    }
}

fn config(limits: Limits) -> RoomConfig {
    RoomConfig {
        name: RoomName::parse("lobby").unwrap(),
        limits,
        ice: IceConfig {
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            turn_urls: vec!["turn:127.0.0.1:3478".into()],
            turn_secret: Some("s".into()),
            ttl_s: 3600,
        },
        sfu: None,
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(limits())
    }

    fn with(limits: Limits) -> Harness {
        Harness {
            room: Room::new(config(limits.clone())),
            next_conn: 1,
            next_id: 1,
            inbox: Default::default(),
            closed: Default::default(),
            records: Default::default(),
            queue: Default::default(),
            bodies: Default::default(),
            counters: None,
            ops: Vec::new(),
            logs: Vec::new(),
            limits,
            reads_acked: false,
            presence_off: false,
        }
    }

    fn pump(&mut self) {
        for o in self.room.drain_outputs() {
            self.ops.push(match &o {
                Output::Send { conn, .. } => format!("send:{}", conn.0),
                Output::Close { .. } => "close".into(),
                Output::Store(_) => "store".into(),
                Output::Counters(_) => "counters".into(),
                Output::Log(_) => "log".into(),
            });
            match o {
                Output::Send { conn, text } => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    self.inbox.entry(conn.0).or_default().push(v);
                }
                Output::Close { conn, code, .. } => {
                    self.closed.insert(conn.0, code);
                }
                Output::Store(op) => match op {
                    StoreOp::PutPeer(r) => {
                        self.records.insert(r.peer_id.to_string(), r);
                    }
                    StoreOp::DeletePeer(p) => {
                        self.records.remove(p.as_str());
                        self.queue.retain(|(peer, _), _| peer != p.as_str());
                    }
                    StoreOp::PutBody { id, body } => {
                        self.bodies.insert(id, body);
                    }
                    StoreOp::PushQueue {
                        peer,
                        seq,
                        body,
                        bytes,
                    } => {
                        assert!(self.bodies.contains_key(&body), "body {body} written first");
                        self.queue.insert((peer.to_string(), seq), (body, bytes));
                    }
                    StoreOp::TrimQueue { peer, through } => {
                        self.queue
                            .retain(|(p, s), _| !(p == peer.as_str() && *s <= through));
                    }
                    StoreOp::Renumber { peer, from, to } => {
                        let row = self.queue.remove(&(peer.to_string(), from)).unwrap();
                        assert!(self.queue.insert((peer.to_string(), to), row).is_none());
                    }
                    StoreOp::GcBodies { below } => {
                        let used: std::collections::HashSet<u64> =
                            self.queue.values().map(|(b, _)| *b).collect();
                        self.bodies
                            .retain(|id, _| *id >= below || used.contains(id));
                    }
                },
                Output::Counters(c) => self.counters = Some(c),
                Output::Log(l) => self.logs.push((l.event, l.detail)),
            }
        }
    }

    /// A room with peers `a` and `b`; `a` has already seen `b` join.
    fn pair() -> (Harness, Client, Client) {
        let mut h = Harness::new();
        let a = h.join(T0);
        let b = h.join(T0);
        let joined = h.take(a.conn);
        assert_eq!(joined[0]["peer_id"], b.peer.as_str());
        (h, a, b)
    }

    fn fresh_ids(&mut self) -> (PeerId, ResumeToken) {
        let n = self.next_id;
        self.next_id += 1;
        (
            PeerId::from_random([n; 8]),
            ResumeToken::from_random([n; 16]),
        )
    }

    fn join_with(&mut self, meta: &str, resume: Option<ResumeRequest>, now: Millis) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let (fresh_peer, fresh_token) = self.fresh_ids();
        if let Some(target) = resume
            .as_ref()
            .and_then(|r| self.room.resume_target(&r.token))
        {
            let frames = self.stored_frames(&target);
            self.room.load_queue(&target, frames, now);
        }
        let n = self.next_id;
        self.room.handle_join(
            Join {
                conn,
                meta: Meta::parse(meta).unwrap(),
                resume,
                fresh_peer,
                fresh_token,
                fresh_trace: TraceId::from_random([n; 8]),
                user: None,
                reads_acked: self.reads_acked,
                presence_off: self.presence_off,
            },
            now,
        );
        self.pump();
        conn
    }

    fn join(&mut self, now: Millis) -> Client {
        let conn = self.join_with(r#"{"n":1}"#, None, now);
        let w = self.take(conn).into_iter().next().unwrap();
        assert_eq!(w["type"], "welcome");
        Client {
            conn,
            peer: PeerId::parse(w["peer_id"].as_str().unwrap()).unwrap(),
            token: w["resume_token"].as_str().unwrap().to_owned(),
        }
    }

    fn send(&mut self, c: &Client, v: Value, now: Millis) {
        self.room.handle_text(c.conn, &v.to_string(), now);
        self.pump();
    }

    fn send_raw(&mut self, conn: ConnId, text: &str, now: Millis) {
        self.room.handle_text(conn, text, now);
        self.pump();
    }

    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.inbox.remove(&conn.0).unwrap_or_default()
    }

    fn types(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_owned())
            .collect()
    }

    fn error_code(&mut self, conn: ConnId) -> String {
        let frames = self.take(conn);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "error", "{frames:?}");
        assert!(frames[0].get("seq").is_none(), "errors carry no seq");
        frames[0]["code"].as_str().unwrap().to_owned()
    }

    fn stored_frames(&self, peer: &PeerId) -> Vec<StoredFrame> {
        self.queue
            .iter()
            .filter(|((p, _), _)| p == peer.as_str())
            .map(|((_, seq), (body_id, _))| StoredFrame {
                seq: *seq,
                body_id: *body_id,
                body: self.bodies[body_id].clone(),
            })
            .collect()
    }

    /// Rebuilds the room from what storage holds, as after hibernation or a
    /// restart: records, queue summaries, then the connected peers' queues.
    fn hibernate(&mut self, now: Millis) {
        let records: Vec<PeerRecord> = self.records.values().cloned().collect();
        let mut summaries: std::collections::BTreeMap<String, StoredQueue> = Default::default();
        for ((p, seq), (_, bytes)) in &self.queue {
            let s = summaries.entry(p.clone()).or_insert(StoredQueue {
                peer: PeerId::parse(p).unwrap(),
                len: 0,
                bytes: 0,
                max_seq: 0,
            });
            s.len += 1;
            s.bytes += bytes;
            s.max_seq = s.max_seq.max(*seq);
        }
        let next_body = self.bodies.keys().max().map_or(1, |m| m + 1);
        self.room = Room::restore(
            config(self.limits.clone()),
            records,
            summaries.into_values().collect(),
            self.counters.clone().unwrap_or_default(),
            next_body,
            now,
        );
        for peer in self.room.peers_to_load() {
            let frames = self.stored_frames(&peer);
            self.room.load_queue(&peer, frames, now);
        }
    }

    /// The Worker restarts: memory is lost, every socket is gone.
    fn crash(&mut self, now: Millis) {
        self.hibernate(now);
        self.room.handle_sweep(&[], now);
        self.pump();
    }

    fn checkpoint(&mut self, now: Millis) {
        self.room.handle_checkpoint(now);
        self.pump();
    }
}

fn signal_to(to: &PeerId, payload: Value) -> Value {
    json!({"type":"signal","to":to.as_str(),"payload":payload})
}

#[test]
fn join_presence_and_welcome() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let conn = h.join_with(r#"{"name":"bob"}"#, None, T0);
    let w = h.take(conn).remove(0);
    assert_eq!(w["v"], 1);
    assert_eq!(w["room"], "lobby");
    assert_eq!(w["resumed"], false);
    assert_eq!(w["heartbeat_ms"], 1000);
    assert!(w.get("seq").is_none(), "welcome carries no seq");
    assert_eq!(
        w["peers"],
        json!([{"peer_id": a.peer.as_str(), "meta": {"n":1}}])
    );
    let ice = w["ice_servers"].as_array().unwrap();
    assert_eq!(ice.len(), 2);
    // v1.1: TURN username `<expiry>:<user>.<trace>`; the user is the peer id
    // when the router names none.
    let trace = w["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 16);
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()));
    let user = format!("{}.{trace}", w["peer_id"].as_str().unwrap());
    assert!(
        ice[1]["username"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{user}"))
    );
    assert_eq!(w["rev"], 2);
    assert_eq!(w["cseq"], 0);
    assert_eq!(
        w["limits"],
        json!({"rate_per_s":10,"rate_burst":20,"max_frame_bytes":256,"ack_delay_ms":200})
    );
    let joined = h.take(a.conn);
    assert_eq!(
        joined,
        vec![json!({"type":"peer-joined","seq":1,"peer_id":w["peer_id"],"meta":{"name":"bob"}})]
    );
    assert!(h.logs.iter().filter(|l| l.0 == "join").count() == 2);
    assert!(w.get("sfu").is_none(), "no SFU configured: no sfu field");
}

#[test]
fn welcome_carries_an_sfu_grant_for_the_peer_when_configured() {
    let mut h = Harness::new();
    let urls = vec![
        "http://127.0.0.1:1".to_owned(),
        "http://127.0.0.1:2/".to_owned(),
    ];
    let mut cfg = config(limits());
    cfg.sfu = SfuConfig::new(&urls, Some("relay-secret"), 120);
    let node = cfg.sfu.as_ref().unwrap().node_for(&cfg.name).to_owned();
    h.room = Room::new(cfg);
    let a = h.join(T0);
    let conn = h.join_with("{}", None, T0);
    let w = h.take(conn).remove(0);
    let sfu = &w["sfu"];
    assert_eq!(sfu["url"], format!("{node}/v1/sessions"));
    assert_eq!(sfu["expires"], T0.as_secs() + 120);
    let claims = sfu_token::verify(b"relay-secret", sfu["token"].as_str().unwrap(), T0).unwrap();
    assert_eq!(claims.room.as_str(), "lobby");
    assert_eq!(claims.peer_id.as_str(), w["peer_id"].as_str().unwrap());
    assert_eq!(claims.exp, T0.as_secs() + 120);
    assert!(sfu_token::verify(b"other", sfu["token"].as_str().unwrap(), T0).is_err());
    // A resumed session gets a fresh token for the same peer.
    let later = Millis(T0.0 + 60_000);
    let (_, frames) = resume(&mut h, &a, 0, later);
    let w = &frames[0];
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["resumed"], true);
    assert_eq!(w["sfu"]["expires"], later.as_secs() + 120);
    let claims =
        sfu_token::verify(b"relay-secret", w["sfu"]["token"].as_str().unwrap(), later).unwrap();
    assert_eq!(claims.peer_id, a.peer);
}

#[test]
fn targeted_signal_reaches_only_its_target_with_increasing_seq() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let b = h.join(T0);
    let c = h.join(T0);
    h.take(a.conn);
    h.take(b.conn);
    h.send(&a, signal_to(&b.peer, json!({"sdp":"offer"})), T0);
    h.send(&a, signal_to(&b.peer, json!({"candidate":"x"})), T0);
    let got = h.take(b.conn);
    assert_eq!(
        got[0],
        json!({"type":"signal","seq":2,"from":a.peer.as_str(),"payload":{"sdp":"offer"}})
    );
    assert_eq!(got[1]["seq"], 3);
    assert!(h.take(c.conn).is_empty());
    assert!(h.take(a.conn).is_empty());
}

#[test]
fn broadcast_and_relay() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let b = h.join(T0);
    let c = h.join(T0);
    for x in [&a, &b, &c] {
        h.take(x.conn);
    }
    h.send(&a, json!({"type":"broadcast","payload":"hi"}), T0);
    assert!(
        h.take(a.conn).is_empty(),
        "the sender does not get its own broadcast"
    );
    for x in [&b, &c] {
        let got = h.take(x.conn);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["type"], "signal");
        assert_eq!(got[0]["payload"], "hi");
    }
    h.send(
        &b,
        json!({"type":"relay","to":c.peer.as_str(),"data":{"bytes":"AAE="}}),
        T0,
    );
    let got = h.take(c.conn);
    assert_eq!(got[0]["type"], "relay");
    assert_eq!(got[0]["from"], b.peer.as_str());
    assert_eq!(got[0]["data"], json!({"bytes":"AAE="}));
}

#[test]
fn every_frame_error_leaves_the_socket_working() {
    let (mut h, a, b) = Harness::pair();
    let cases: Vec<(String, &str)> = vec![
        ("{oops".into(), "bad_json"),
        (r#"{"type":"teleport"}"#.into(), "unknown_type"),
        (r#"{"type":"signal","payload":1}"#.into(), "invalid_frame"),
        (
            signal_to(&PeerId::parse("nobody").unwrap(), json!(1)).to_string(),
            "unknown_peer",
        ),
        (
            format!(r#"{{"type":"broadcast","payload":"{}"}}"#, "x".repeat(300)),
            "payload_too_large",
        ),
    ];
    for (text, code) in cases {
        h.send_raw(a.conn, &text, T0);
        assert_eq!(h.error_code(a.conn), code, "{text}");
        h.send(&a, signal_to(&b.peer, json!("still works")), T0);
        assert_eq!(h.take(b.conn).last().unwrap()["payload"], "still works");
    }
    h.room.handle_binary(a.conn, T0);
    h.pump();
    assert_eq!(h.error_code(a.conn), "unsupported_frame");
    let stats = h.room.stats();
    assert_eq!(stats.errors.len(), 6);
    assert_eq!(stats.errors["bad_json"], 1);
    assert!(h.closed.is_empty());
}

#[test]
fn rate_limit_uses_injected_time() {
    let (mut h, a, b) = Harness::pair();
    for i in 0..20 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
    }
    assert_eq!(h.take(b.conn).len(), 20, "the burst passes");
    h.send(&a, signal_to(&b.peer, json!("over")), T0);
    assert_eq!(h.error_code(a.conn), "rate_limited");
    assert!(h.take(b.conn).is_empty());
    // 10 frames/s: one token every 100 ms.
    h.send(&a, signal_to(&b.peer, json!("later")), T0.plus(100));
    assert_eq!(h.take(b.conn)[0]["payload"], "later");
    assert!(h.take(a.conn).is_empty());
}

#[test]
fn room_full_refuses_and_closes() {
    let mut h = Harness::new();
    let peers: Vec<Client> = (0..4).map(|_| h.join(T0)).collect();
    let conn = h.join_with("{}", None, T0);
    assert_eq!(h.error_code(conn), "room_full");
    assert_eq!(h.closed.get(&conn.0), Some(&close_code::ROOM_FULL));
    assert_eq!(h.room.stats().peers_connected, 4);
    // Away peers count toward capacity too.
    h.room.handle_close(peers[0].conn, false, T0);
    h.pump();
    let conn = h.join_with("{}", None, T0);
    assert_eq!(h.error_code(conn), "room_full");
}

#[test]
fn ping_that_reaches_the_room_gets_pong() {
    let mut h = Harness::new();
    let a = h.join(T0);
    h.send_raw(a.conn, r#"{ "type": "ping" }"#, T0);
    assert_eq!(h.take(a.conn), vec![json!({"type":"pong"})]);
}

#[test]
fn resume_replays_missed_frames_in_order_without_duplicates() {
    let (mut h, a, b) = Harness::pair();
    h.send(&a, signal_to(&b.peer, json!(1)), T0);
    let got = h.take(b.conn);
    let last_seen = got[0]["seq"].as_u64().unwrap();
    // b's socket drops abruptly; a keeps signalling; nobody is told b left.
    h.room.handle_close(b.conn, false, T0.plus(10));
    h.pump();
    for i in 2..=4 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0.plus(20));
    }
    assert!(h.take(a.conn).is_empty(), "no peer-left while b may resume");
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(last_seen),
        }),
        T0.plus(100),
    );
    let frames = h.take(conn);
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(frames[0]["resumed"], true);
    assert_eq!(frames[0]["peer_id"], b.peer.as_str());
    let payloads: Vec<Value> = frames[1..].iter().map(|f| f["payload"].clone()).collect();
    assert_eq!(payloads, vec![json!(2), json!(3), json!(4)]);
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![last_seen + 1, last_seen + 2, last_seen + 3]);
    // Live traffic continues the sequence.
    let b2 = Client {
        conn,
        peer: b.peer.clone(),
        token: b.token.clone(),
    };
    h.send(&a, signal_to(&b2.peer, json!(5)), T0.plus(200));
    assert_eq!(h.take(conn)[0]["seq"], last_seen + 4);
    assert!(h.take(a.conn).is_empty(), "a saw no presence change");
}

#[test]
fn resume_survives_hibernation() {
    let (mut h, a, b) = Harness::pair();
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    h.send(&a, signal_to(&b.peer, json!("while away")), T0);
    h.hibernate(T0.plus(50));
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(0),
        }),
        T0.plus(100),
    );
    let frames = h.take(conn);
    assert_eq!(frames[0]["resumed"], true);
    assert_eq!(frames[1]["payload"], "while away");
    assert_eq!(frames[1]["seq"], 1);
    // a's socket is still known to the restored room.
    h.send(&a, signal_to(&b.peer, json!("live")), T0.plus(200));
    assert_eq!(h.take(conn)[0]["seq"], 2);
}

#[test]
fn ack_trims_and_a_resume_from_before_the_floor_fails() {
    let (mut h, a, b) = Harness::pair();
    for i in 0..3 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
    }
    h.send(&b, json!({"type":"ack","seq":2}), T0);
    // Acknowledged rows leave storage at the next checkpoint, not per ack.
    assert_eq!(
        h.queue.keys().filter(|(p, _)| p == b.peer.as_str()).count(),
        3
    );
    h.checkpoint(T0.plus(100));
    assert_eq!(
        h.queue.keys().filter(|(p, _)| p == b.peer.as_str()).count(),
        1
    );
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(1),
        }),
        T0,
    );
    let frames = h.take(conn);
    assert_eq!(frames[0]["code"], "resume_failed");
    assert_eq!(
        frames[1]["type"], "welcome",
        "a fresh join follows on the same socket"
    );
    assert_eq!(frames[1]["resumed"], false);
    assert_ne!(frames[1]["peer_id"], b.peer.as_str());
}

#[test]
fn wrong_token_and_bogus_last_seq_fail_resume() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented("nope"),
            last_seq: Some(0),
        }),
        T0,
    );
    assert_eq!(h.types(conn), vec!["error", "welcome"]);
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&a.token),
            last_seq: Some(99),
        }),
        T0,
    );
    assert_eq!(h.types(conn), vec!["error", "welcome"]);
}

#[test]
fn resume_while_old_socket_lingers_replaces_it() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&a.token),
            last_seq: Some(0),
        }),
        T0,
    );
    assert_eq!(h.types(conn), vec!["welcome"]);
    assert_eq!(h.closed.get(&a.conn.0), Some(&close_code::REPLACED));
    assert_eq!(h.room.stats().peers_connected, 1);
    // A late close of the old socket changes nothing.
    h.room.handle_close(a.conn, false, T0);
    h.pump();
    assert_eq!(h.room.stats().peers_connected, 1);
}

#[test]
fn away_queue_is_bounded_with_queue_full() {
    let (mut h, a, b) = Harness::pair();
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    for i in 0..5 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
        assert!(h.take(a.conn).is_empty());
    }
    h.send(&a, signal_to(&b.peer, json!("one too many")), T0);
    assert_eq!(h.error_code(a.conn), "queue_full");
}

#[test]
fn zombie_is_reaped_announced_and_can_come_back() {
    let (mut h, a, b) = Harness::pair();
    // The sweep runs at the earliest death deadline (3 heartbeats), not every heartbeat.
    assert_eq!(h.room.poll_timeout(), Some(T0.plus(3001)));
    // a pings (auto-answered), b is silent.
    let t = T0.plus(3500);
    h.room.handle_sweep(&[(a.conn, Some(t)), (b.conn, None)], t);
    h.pump();
    assert_eq!(
        h.closed.get(&b.conn.0),
        Some(&close_code::HEARTBEAT_TIMEOUT)
    );
    assert!(!h.closed.contains_key(&a.conn.0));
    let left = h.take(a.conn);
    assert_eq!(left[0]["type"], "peer-left");
    assert_eq!(left[0]["reason"], "timeout");
    assert_eq!(left[0]["peer_id"], b.peer.as_str());
    // Signalling the reaped peer is refused: others were told it is gone.
    h.send(&a, signal_to(&b.peer, json!(1)), t);
    assert_eq!(h.error_code(a.conn), "unknown_peer");
    // It resumes within the window: others see it join again.
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(0),
        }),
        t.plus(100),
    );
    assert_eq!(h.take(conn)[0]["resumed"], true);
    let back = h.take(a.conn);
    assert_eq!(back[0]["type"], "peer-joined");
    assert_eq!(back[0]["peer_id"], b.peer.as_str());
}

#[test]
fn away_peer_expires_after_the_window() {
    let (mut h, a, b) = Harness::pair();
    h.room.handle_close(b.conn, true, T0);
    h.pump();
    assert_eq!(h.room.stats().peers_away, 1);
    let at = T0.plus(5000);
    assert_eq!(h.room.poll_timeout(), Some(T0.plus(3001)));
    h.room.handle_sweep(&[(a.conn, Some(at))], at);
    h.pump();
    let left = h.take(a.conn);
    assert_eq!(left[0]["type"], "peer-left");
    assert_eq!(left[0]["reason"], "closed");
    assert!(!h.records.contains_key(b.peer.as_str()));
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(0),
        }),
        at,
    );
    assert_eq!(h.types(conn), vec!["error", "welcome"]);
}

#[test]
fn leave_is_final() {
    let (mut h, a, b) = Harness::pair();
    h.send(&b, json!({"type":"leave"}), T0);
    assert_eq!(h.closed.get(&b.conn.0), Some(&close_code::NORMAL));
    let left = h.take(a.conn);
    assert_eq!(left[0]["reason"], "leave");
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(0),
        }),
        T0,
    );
    assert_eq!(h.types(conn), vec!["error", "welcome"]);
    assert!(h.room.poll_timeout().is_some());
}

#[test]
fn unknown_sockets_are_closed_by_the_sweep() {
    let mut h = Harness::new();
    let a = h.join(T0);
    h.room
        .handle_sweep(&[(a.conn, None), (ConnId(999), None)], T0.plus(10));
    h.pump();
    assert_eq!(h.closed.get(&999), Some(&close_code::UNKNOWN_CONNECTION));
    assert!(!h.closed.contains_key(&a.conn.0));
}

#[test]
fn connected_peer_queue_keeps_only_the_newest_frames() {
    let (mut h, a, b) = Harness::pair();
    for i in 0..8 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
    }
    assert_eq!(
        h.take(b.conn).len(),
        8,
        "a connected peer gets everything live"
    );
    let kept: Vec<u64> = h
        .queue
        .keys()
        .filter(|(p, _)| p == b.peer.as_str())
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(kept, vec![4, 5, 6, 7, 8]);
    assert_eq!(h.records[b.peer.as_str()].floor, 3);
}

fn cseq_signal(to: &PeerId, payload: Value, cseq: u64) -> Value {
    json!({"type":"signal","to":to.as_str(),"payload":payload,"cseq":cseq})
}

fn rows_of(h: &Harness, p: &PeerId) -> Vec<u64> {
    h.queue
        .keys()
        .filter(|(q, _)| q == p.as_str())
        .map(|(_, s)| *s)
        .collect()
}

fn resume(h: &mut Harness, c: &Client, last_seq: u64, now: Millis) -> (ConnId, Vec<Value>) {
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&c.token),
            last_seq: Some(last_seq),
        }),
        now,
    );
    let frames = h.take(conn);
    assert_eq!(frames[0]["type"], "welcome", "{frames:?}");
    (conn, frames)
}

#[test]
fn cseq_frame_to_a_connected_peer_is_delivered_from_memory_and_acked_once_settled() {
    let (mut h, a, b) = Harness::pair();
    h.ops.clear();
    h.send(&a, cseq_signal(&b.peer, json!("x"), 1), T0);
    let got = h.take(b.conn);
    assert_eq!(
        got[0]["cseq"], 1,
        "recipients can drop duplicates by (from, cseq)"
    );
    assert_eq!(got[0]["from"], a.peer.as_str());
    assert!(
        !h.ops.iter().any(|o| o == "store"),
        "nothing is written before delivery: {:?}",
        h.ops
    );
    assert!(
        h.take(a.conn).is_empty(),
        "no ack while the frame is only in memory"
    );
    // b acknowledges it: the frame never needs writing, and a hears its ack
    // in the same event, which writes nothing.
    h.ops.clear();
    h.send(&b, json!({"type":"ack","seq":got[0]["seq"]}), T0.plus(10));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":1})]);
    assert!(!h.ops.iter().any(|o| o == "store"), "{:?}", h.ops);
    assert!(rows_of(&h, &b.peer).is_empty());
    // The record follows with the lazy batch.
    h.checkpoint(h.room.poll_checkpoint().unwrap());
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, 1);
    // A duplicate (a resend) is acked again, not delivered again.
    h.send(&a, cseq_signal(&b.peer, json!("x"), 1), T0.plus(200));
    assert!(h.take(b.conn).is_empty());
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":1})]);
}

#[test]
fn unacknowledged_frames_are_written_after_flush_after_then_acked() {
    let (mut h, a, b) = Harness::pair();
    for n in 1..=3 {
        h.send(&a, cseq_signal(&b.peer, json!(n), n), T0);
    }
    assert_eq!(h.take(b.conn).len(), 3);
    h.checkpoint(T0.plus(100));
    assert!(
        h.take(a.conn).is_empty(),
        "younger than flush_after: not written, not acked"
    );
    assert!(rows_of(&h, &b.peer).is_empty());
    h.ops.clear();
    h.checkpoint(T0.plus(500));
    assert_eq!(rows_of(&h, &b.peer), vec![1, 2, 3]);
    assert_eq!(
        h.take(a.conn),
        vec![json!({"type":"ack","cseq":3})],
        "one coalesced ack"
    );
    let first_send = h.ops.iter().position(|o| o.starts_with("send")).unwrap();
    assert!(
        h.ops[..first_send].iter().filter(|o| *o == "store").count() >= 4,
        "the writes precede the ack: {:?}",
        h.ops
    );
    // Only the counters are left; they are written at most every
    // COUNTERS_EVERY_MS, then the timer stops.
    h.counters = None;
    h.checkpoint(T0.plus(600 + COUNTERS_EVERY_MS));
    assert!(h.counters.is_some());
    assert_eq!(h.room.poll_checkpoint(), None, "nothing left to settle");
}

#[test]
fn v1_frames_are_written_before_they_are_delivered() {
    let (mut h, a, b) = Harness::pair();
    h.ops.clear();
    h.send(&a, signal_to(&b.peer, json!("v1")), T0);
    let send_b = format!("send:{}", b.conn.0);
    let store = h.ops.iter().position(|o| o == "store").unwrap();
    let send = h.ops.iter().position(|o| *o == send_b).unwrap();
    assert!(store < send, "{:?}", h.ops);
    assert_eq!(rows_of(&h, &b.peer), vec![1]);
    assert!(h.take(a.conn).is_empty(), "v1 frames get no ack");
}

#[test]
fn gaps_duplicates_and_refusals_follow_the_cseq_rules() {
    let (mut h, a, b) = Harness::pair();
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0);
    // A gap: refused, unsequenced, at most once per window.
    h.send(&a, cseq_signal(&b.peer, json!(3), 3), T0);
    h.send(&a, cseq_signal(&b.peer, json!(4), 4), T0);
    let errs = h.take(a.conn);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["code"], "out_of_order");
    assert_eq!(errs[0]["cseq"], 3);
    assert_eq!(errs[0]["expected"], 2);
    assert!(errs[0].get("seq").is_none());
    assert_eq!(h.take(b.conn).len(), 1, "only cseq 1 was delivered");
    // A refusal: sequenced, carries the cseq, written at once with what came before.
    let nobody = PeerId::parse("nobody").unwrap();
    h.send(&a, cseq_signal(&nobody, json!(2), 2), T0.plus(1));
    let got = h.take(a.conn);
    assert_eq!(got[0]["type"], "error");
    assert_eq!(got[0]["code"], "unknown_peer");
    assert_eq!(got[0]["cseq"], 2);
    let err_seq = got[0]["seq"].as_u64().unwrap();
    assert_eq!(
        got[1],
        json!({"type":"ack","cseq":2}),
        "everything of a is durable now"
    );
    // a's seq 1 (b's presence) is in memory until its flush deadline.
    assert_eq!(rows_of(&h, &a.peer), vec![err_seq]);
    assert_eq!(
        rows_of(&h, &b.peer),
        vec![1],
        "a's earlier frame was written with it"
    );
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, 2);
    // An invalid frame whose cseq could be read is a refusal too.
    h.send_raw(
        a.conn,
        r#"{"type":"signal","cseq":3,"payload":1}"#,
        T0.plus(2),
    );
    let got = h.take(a.conn);
    assert_eq!(got[0]["code"], "invalid_frame");
    assert_eq!(got[0]["cseq"], 3);
    assert_eq!(got[0]["seq"], err_seq + 1);
    // The refusals are replayed on resume like any sequenced frame.
    h.room.handle_close(a.conn, false, T0.plus(3));
    h.pump();
    let (_, frames) = resume(&mut h, &a, 1, T0.plus(4));
    assert_eq!(frames[0]["cseq"], 3, "welcome says which cseqs are settled");
    let codes: Vec<&str> = frames[1..]
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["unknown_peer", "invalid_frame"]);
}

#[test]
fn rate_limited_answers_once_per_window_then_drops_quietly() {
    let (mut h, a, b) = Harness::pair();
    for n in 1..=20 {
        h.send(&a, cseq_signal(&b.peer, json!(n), n), T0);
    }
    h.take(b.conn);
    h.logs.clear();
    h.send(&a, cseq_signal(&b.peer, json!(21), 21), T0);
    // (b's queue holds 5 frames: the older ones left it, so a has acks for them.)
    let got: Vec<Value> = h
        .take(a.conn)
        .into_iter()
        .filter(|f| f["type"] != "ack")
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["code"], "rate_limited");
    assert_eq!(got[0]["cseq"], 21);
    assert_eq!(
        got[0]["retry_after_ms"], 100,
        "10 frames/s: a token every 100 ms"
    );
    assert_eq!(h.logs.len(), 1);
    // Within the window: dropped without a word, a log line or an error count,
    // binary frames included.
    h.send(&a, cseq_signal(&b.peer, json!(21), 21), T0.plus(50));
    h.room.handle_binary(a.conn, T0.plus(60));
    h.pump();
    assert!(h.take(a.conn).is_empty());
    assert!(h.take(b.conn).is_empty());
    assert_eq!(h.logs.len(), 1);
    assert_eq!(h.room.stats().errors["rate_limited"], 1);
    // After it, the resent frame is processed (cseq_hi did not move).
    h.send(&a, cseq_signal(&b.peer, json!(21), 21), T0.plus(100));
    assert_eq!(h.take(b.conn)[0]["cseq"], 21);
    // Binary frames spend tokens too.
    for _ in 0..5 {
        h.room.handle_binary(a.conn, T0.plus(100));
    }
    h.pump();
    let got: Vec<Value> = h
        .take(a.conn)
        .into_iter()
        .filter(|f| f["type"] != "ack")
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["code"], "rate_limited");
    assert!(got[0].get("cseq").is_none());
}

#[test]
fn a_restart_loses_only_unsettled_frames_and_their_senders_resend_them() {
    let (mut h, a, b) = Harness::pair();
    // Settled: cseq 1 and 2 are written and acknowledged.
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0);
    h.send(&a, cseq_signal(&b.peer, json!(2), 2), T0);
    h.checkpoint(T0.plus(500));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":2})]);
    // Unsettled: 3 and 4 reached b from memory, 5 did not reach it (its socket is dying).
    for n in 3..=5 {
        h.send(&a, cseq_signal(&b.peer, json!(n), n), T0.plus(600));
    }
    let got = h.take(b.conn);
    let b_saw = got[3]["seq"].as_u64().unwrap(); // b read the frames with cseq 1..=4
    assert_eq!(got[3]["cseq"], 4);
    h.crash(T0.plus(700));
    // a resumes: welcome.cseq = 2, so it resends 3, 4, 5.
    let (a2, frames) = resume(&mut h, &a, 0, T0.plus(800));
    assert_eq!(frames[0]["cseq"], 2);
    // b resumes from what it saw, ahead of what storage kept.
    let (b2, frames) = resume(&mut h, &b, b_saw, T0.plus(800));
    assert_eq!(
        frames.len(),
        1,
        "nothing stored after what b saw: {frames:?}"
    );
    let a2c = Client {
        conn: a2,
        peer: a.peer.clone(),
        token: a.token.clone(),
    };
    for n in 3..=5 {
        h.send(&a2c, cseq_signal(&b.peer, json!(n), n), T0.plus(900));
    }
    let got = h.take(b2);
    let seqs: Vec<u64> = got.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        vec![b_saw + 1, b_saw + 2, b_saw + 3],
        "seq continues after last_seq"
    );
    // b keeps one frame per (from, cseq): 3 and 4 are duplicates of what it saw.
    let fresh: Vec<u64> = got
        .iter()
        .map(|f| f["cseq"].as_u64().unwrap())
        .filter(|c| *c > 4)
        .collect();
    assert_eq!(fresh, vec![5]);
}

#[test]
fn gaps_left_by_a_restart_are_closed_on_replay() {
    let (mut h, a, b) = Harness::pair();
    // seq 1 (cseq frame, memory only), seq 2 (v1 frame, written), then a crash.
    h.send(&a, cseq_signal(&b.peer, json!("memory"), 1), T0);
    h.send(&a, signal_to(&b.peer, json!("written")), T0);
    assert_eq!(rows_of(&h, &b.peer), vec![2]);
    h.crash(T0.plus(10));
    // b had read neither.
    let (_, frames) = resume(&mut h, &b, 0, T0.plus(20));
    assert_eq!(frames[1]["payload"], "written");
    assert_eq!(frames[1]["seq"], 1, "renumbered: no gap in what b sees");
    assert_eq!(rows_of(&h, &b.peer), vec![1]);
}

#[test]
fn a_peer_going_away_has_its_memory_frames_written() {
    let (mut h, a, b) = Harness::pair();
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0);
    assert!(rows_of(&h, &b.peer).is_empty());
    h.room.handle_close(b.conn, false, T0.plus(5));
    h.pump();
    assert_eq!(rows_of(&h, &b.peer), vec![1]);
    // Written, so a's ack may go out at once on the next checkpoint.
    h.checkpoint(T0.plus(100));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":1})]);
    h.crash(T0.plus(200));
    let (_, frames) = resume(&mut h, &b, 0, T0.plus(300));
    assert_eq!(frames[1]["payload"], 1);
}

#[test]
fn broadcast_bodies_are_stored_once() {
    let mut h = Harness::new();
    let a = h.join(T0);
    let others: Vec<Client> = (0..3).map(|_| h.join(T0)).collect();
    for c in &others {
        h.room.handle_close(c.conn, false, T0);
    }
    h.pump();
    let before = h.bodies.len();
    h.send(
        &a,
        json!({"type":"broadcast","payload":"x".repeat(100)}),
        T0,
    );
    assert_eq!(h.bodies.len(), before + 1, "one body row");
    let newest = *h.bodies.keys().max().unwrap();
    for c in &others {
        let last = *rows_of(&h, &c.peer).last().unwrap();
        assert_eq!(h.queue[&(c.peer.to_string(), last)].0, newest);
    }
    // Acknowledged everywhere, the body goes too.
    for c in &others {
        let (conn, frames) = resume(&mut h, c, 0, T0.plus(10));
        let last = frames.last().unwrap()["seq"].clone();
        h.send_raw(
            conn,
            &json!({"type":"ack","seq":last}).to_string(),
            T0.plus(10),
        );
    }
    h.send(&a, json!({"type":"ack","seq":3}), T0.plus(10)); // a's three peer-joined
    h.checkpoint(T0.plus(200));
    assert!(h.queue.is_empty());
    assert!(h.bodies.is_empty(), "{:?}", h.bodies.keys());
}

#[test]
fn the_room_wide_queue_cap_refuses_with_queue_full() {
    let mut l = limits();
    l.room_queue_max_bytes = 600;
    l.queue_max_bytes = 10_000;
    l.queue_max_frames = 100;
    let mut h = Harness::with(l);
    let a = h.join(T0);
    let b = h.join(T0);
    let c = h.join(T0);
    h.room.handle_close(b.conn, false, T0);
    h.room.handle_close(c.conn, false, T0);
    h.pump();
    h.take(a.conn);
    let mut sent = 0;
    for i in 0..10 {
        let to = if i % 2 == 0 { &b.peer } else { &c.peer };
        h.send(&a, signal_to(to, json!("y".repeat(100))), T0.plus(i));
        let got = h.take(a.conn);
        if got.is_empty() {
            sent += 1;
        } else {
            assert_eq!(got[0]["code"], "queue_full");
            break;
        }
    }
    assert!((2..8).contains(&sent), "{sent}");
    assert!(h.room.stats().queued_bytes <= 600);
}

#[test]
fn away_queues_are_loaded_only_when_their_peer_resumes() {
    let (mut h, a, b) = Harness::pair();
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    h.send(&a, signal_to(&b.peer, json!("queued")), T0);
    h.hibernate(T0.plus(10));
    let token = ResumeToken::presented(&b.token);
    assert_eq!(h.room.resume_target(&token), Some(b.peer.clone()));
    assert_eq!(
        h.room.stats().queued_bytes,
        h.queue.values().map(|(_, n)| n).sum::<usize>()
    );
    // Frames for it while unloaded are written, counted and kept in order.
    h.send(&a, signal_to(&b.peer, json!("after wake")), T0.plus(20));
    let (_, frames) = resume(&mut h, &b, 0, T0.plus(30));
    let p: Vec<Value> = frames[1..].iter().map(|f| f["payload"].clone()).collect();
    assert_eq!(p, vec![json!("queued"), json!("after wake")]);
    assert_eq!(frames[1]["seq"], 1);
    assert_eq!(h.room.resume_target(&token), None);
}

#[test]
fn drain_closes_every_socket_with_4003_and_keeps_the_peers() {
    let (mut h, a, b) = Harness::pair();
    assert_eq!(h.room.handle_drain(90_000, T0), 2);
    h.pump();
    assert_eq!(h.closed.get(&a.conn.0), Some(&close_code::GOING_AWAY));
    assert_eq!(h.closed.get(&b.conn.0), Some(&close_code::GOING_AWAY));
    assert_eq!(h.room.stats().peers_away, 2);
    assert!(h.take(a.conn).is_empty(), "nobody is told anyone left");
    let (_, frames) = resume(&mut h, &a, 1, T0.plus(10));
    assert_eq!(frames[0]["resumed"], true);
}

#[test]
fn drain_reason_carries_the_capped_retry_after() {
    let mut h = Harness::new();
    let _a = h.join(T0);
    h.room.handle_drain(90_000, T0);
    let outs = h.room.drain_outputs();
    let reason = outs.iter().find_map(|o| match o {
        Output::Close { code, reason, .. } if *code == close_code::GOING_AWAY => {
            Some(reason.clone())
        }
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("retry_after_ms=60000"));
}

#[test]
fn counters_are_persisted_from_checkpoints_and_sweeps_never_per_frame() {
    let (mut h, a, b) = Harness::pair();
    h.counters = None;
    for i in 0..5 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
    }
    assert!(h.counters.is_none(), "no counters write per frame");
    h.checkpoint(T0.plus(100));
    assert!(
        h.counters.is_none(),
        "a checkpoint with nothing else to write waits: {:?}",
        h.ops
    );
    let later = T0.plus(COUNTERS_EVERY_MS);
    h.checkpoint(later.plus(100));
    assert_eq!(h.counters.as_ref().unwrap().frames_in, 5);
    h.send(&a, signal_to(&b.peer, json!(9)), later.plus(200));
    h.room.handle_sweep(
        &[
            (a.conn, Some(later.plus(200))),
            (b.conn, Some(later.plus(200))),
        ],
        later.plus(300),
    );
    h.pump();
    assert_eq!(h.counters.as_ref().unwrap().frames_in, 6);
}

#[test]
fn trace_ids_are_kept_across_resume_and_logged() {
    let (mut h, _a, b) = Harness::pair();
    let trace = h.records[b.peer.as_str()].trace_id.clone();
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    let (_, frames) = resume(&mut h, &b, 0, T0.plus(1));
    assert_eq!(frames[0]["trace_id"], trace.as_str());
    h.room.handle_close(ConnId(h.next_conn - 1), false, T0);
    let logs = h.room.drain_outputs();
    assert!(
        logs.iter()
            .any(|o| matches!(o, Output::Log(l) if l.trace.as_ref() == Some(&trace)))
    );
}

#[test]
fn presence_overflowing_a_stored_queue_drops_it_and_the_resume_fails_loudly() {
    let (mut h, a, b) = Harness::pair();
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    for i in 0..5 {
        h.send(&a, signal_to(&b.peer, json!(i)), T0);
    }
    h.hibernate(T0.plus(10));
    // b's queue (5 frames, the limit) is only in storage; a join adds presence.
    let _c = h.join(T0.plus(20));
    assert_eq!(
        rows_of(&h, &b.peer),
        vec![6],
        "only the newest frame is kept"
    );
    // a's copy of the presence frame is in memory until its flush deadline.
    h.checkpoint(T0.plus(20 + 500));
    assert_eq!(
        h.room.stats().queued_bytes,
        h.queue.values().map(|(_, n)| n).sum::<usize>()
    );
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&b.token),
            last_seq: Some(0),
        }),
        T0.plus(30),
    );
    assert_eq!(h.take(conn)[0]["code"], "resume_failed");
}

#[test]
fn a_join_writes_the_newcomer_s_record_and_no_queue_row_for_connected_peers() {
    let (mut h, a, b) = Harness::pair();
    h.take(b.conn);
    h.room.handle_close(b.conn, false, T0);
    h.pump();
    h.take(a.conn);
    let rows_before = h.queue.len();
    // c joins: a is connected, b is away.
    let c = h.join(T0.plus(1));
    assert!(
        h.records.contains_key(c.peer.as_str()),
        "membership is written at once"
    );
    let to_a = h.take(a.conn);
    assert_eq!(to_a[0]["type"], "peer-joined");
    assert!(rows_of(&h, &a.peer).is_empty(), "delivered from memory");
    assert_eq!(
        rows_of(&h, &b.peer).len(),
        1,
        "an away peer's copy is written"
    );
    assert_eq!(h.queue.len(), rows_before + 1);
    // a acknowledges it: never written.
    h.send(&a, json!({"type":"ack","seq":to_a[0]["seq"]}), T0.plus(2));
    h.checkpoint(T0.plus(600));
    assert!(rows_of(&h, &a.peer).is_empty());
    // Unacknowledged presence is written at the flush deadline.
    let d = h.join(T0.plus(700));
    assert_eq!(h.take(a.conn)[0]["peer_id"], d.peer.as_str());
    let due = h.room.poll_checkpoint().unwrap();
    assert!(due <= T0.plus(700 + 500), "a flush is scheduled: {due:?}");
    h.checkpoint(T0.plus(700 + 500));
    assert_eq!(rows_of(&h, &a.peer).len(), 1);
}

#[test]
fn presence_lost_in_a_restart_is_in_the_resume_welcome() {
    let (mut h, a, _b) = Harness::pair();
    let c = h.join(T0.plus(1));
    // a read b's `peer-joined` (seq 1) but not c's (seq 2): its socket died with the Worker.
    let missed = h.take(a.conn);
    assert_eq!(missed[0]["peer_id"], c.peer.as_str());
    assert_eq!(missed[0]["seq"], 2);
    h.crash(T0.plus(10));
    let (a2, frames) = resume(&mut h, &a, 1, T0.plus(20));
    let members: Vec<&str> = frames[0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert!(members.contains(&c.peer.as_str()), "{members:?}");
    // The stream goes on from what a read, without a gap.
    let (c2, _) = resume(&mut h, &c, 0, T0.plus(30));
    let c2 = Client {
        conn: c2,
        peer: c.peer.clone(),
        token: c.token.clone(),
    };
    h.send(&c2, signal_to(&a.peer, json!("hi")), T0.plus(40));
    let got = h.take(a2);
    let signal = got.iter().find(|f| f["type"] == "signal").unwrap();
    assert_eq!(signal["seq"], 2, "{got:?}");
}

#[test]
fn acks_in_a_busy_room_write_nothing_until_the_lazy_batch() {
    let (mut h, a, b) = Harness::pair();
    // The first checkpoint writes the lazy batch; from then on records wait.
    h.checkpoint(T0.plus(1));
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0.plus(10));
    let got = h.take(b.conn);
    h.ops.clear();
    h.send(&b, json!({"type":"ack","seq":got[0]["seq"]}), T0.plus(20));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":1})]);
    assert!(
        !h.ops.iter().any(|o| o == "store"),
        "the ack waits for no write: {:?}",
        h.ops
    );
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, 0, "not written yet");
    // Nor does a checkpoint before the lazy batch is due.
    h.checkpoint(T0.plus(300));
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, 0, "not written yet");
    // The lazy batch writes it within COUNTERS_EVERY_MS.
    let due = h.room.poll_checkpoint().unwrap();
    assert!(due <= T0.plus(1 + COUNTERS_EVERY_MS), "{due:?}");
    h.checkpoint(due);
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, 1);
}

#[test]
fn after_a_restart_a_sender_continues_after_its_last_ack_once() {
    let (mut h, a, b) = Harness::pair();
    h.checkpoint(T0.plus(1));
    for n in 1..=3 {
        h.send(&a, cseq_signal(&b.peer, json!(n), n), T0.plus(10));
    }
    let got = h.take(b.conn);
    h.send(&b, json!({"type":"ack","seq":got[2]["seq"]}), T0.plus(20));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":3})]);
    // The Worker dies before the lazy batch: storage says cseq_hi 0.
    h.crash(T0.plus(100));
    let (a2, frames) = resume(&mut h, &a, 0, T0.plus(200));
    assert_eq!(frames[0]["cseq"], 0);
    let (b2, _) = resume(&mut h, &b, got[2]["seq"].as_u64().unwrap(), T0.plus(200));
    let a2 = Client {
        conn: a2,
        peer: a.peer.clone(),
        token: a.token.clone(),
    };
    // a dropped 1..=3 on their ack; it goes on with 4, which the room takes.
    h.send(&a2, cseq_signal(&b.peer, json!(4), 4), T0.plus(300));
    let got = h.take(b2);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["cseq"], 4);
    let to_a: Vec<Value> = h.take(a2.conn);
    assert!(
        to_a.iter().all(|f| f["type"] == "ack"),
        "no out_of_order: {to_a:?}"
    );
    // Only once: a later gap is refused as before.
    h.send(&a2, cseq_signal(&b.peer, json!(6), 6), T0.plus(400));
    let errs = h.take(a2.conn);
    assert_eq!(errs[0]["code"], "out_of_order", "{errs:?}");
    assert_eq!(errs[0]["expected"], 5);
}

/// A pair whose clients joined with `caps=acks` (v1.2).
fn pair_reading_acked() -> (Harness, Client, Client) {
    let mut h = Harness::new();
    h.reads_acked = true;
    let a = h.join(T0);
    let b = h.join(T0);
    h.take(a.conn);
    (h, a, b)
}

/// a offers (cseq 1) to b; b answers (cseq 1) carrying its ack of the offer, at `T0 + 20`.
fn offer_then_answer_with_ack(h: &mut Harness, a: &Client, b: &Client) {
    h.send(a, cseq_signal(&b.peer, json!("offer"), 1), T0.plus(10));
    let got = h.take(b.conn);
    let mut answer = cseq_signal(&a.peer, json!("answer"), 1);
    answer["ack"] = got[0]["seq"].clone();
    h.send(b, answer, T0.plus(20));
}

#[test]
fn an_ack_carried_by_a_frame_settles_and_the_room_s_ack_rides_on_the_reply() {
    let (mut h, a, b) = pair_reading_acked();
    h.checkpoint(T0.plus(1));
    h.send(&a, cseq_signal(&b.peer, json!("offer"), 1), T0.plus(10));
    let got = h.take(b.conn);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(h.take(a.conn).is_empty(), "not settled before b's ack");
    // b answers and, in the same frame, acknowledges what it read.
    let mut answer = cseq_signal(&a.peer, json!("answer"), 1);
    answer["ack"] = got[0]["seq"].clone();
    h.ops.clear();
    let frames_out = h.room.stats().frames_out;
    h.send(&b, answer, T0.plus(20));
    // One frame to a: b's signal, carrying the room's ack of a's cseq 1.
    let to_a = h.take(a.conn);
    assert_eq!(to_a.len(), 1, "the ack rode on the signal: {to_a:?}");
    assert_eq!(to_a[0]["type"], "signal");
    assert_eq!(to_a[0]["payload"], "answer");
    assert_eq!(to_a[0]["acked"], 1);
    assert!(
        !h.ops.iter().any(|o| o == "store"),
        "nothing written: {:?}",
        h.ops
    );
    assert_eq!(
        h.room.stats().frames_out,
        frames_out + 1,
        "one frame went out"
    );
}

#[test]
fn without_caps_acks_the_room_s_ack_is_a_frame_of_its_own() {
    let (mut h, a, b) = Harness::pair();
    offer_then_answer_with_ack(&mut h, &a, &b);
    let to_a = h.take(a.conn);
    assert_eq!(to_a.len(), 2, "{to_a:?}");
    assert!(to_a.iter().all(|f| f.get("acked").is_none()), "{to_a:?}");
    assert!(to_a.contains(&json!({"type":"ack","cseq":1})), "{to_a:?}");
}

#[test]
fn a_carried_ack_counts_even_when_its_frame_is_refused() {
    let (mut h, a, b) = pair_reading_acked();
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0.plus(10));
    let got = h.take(b.conn);
    // b skips a cseq: the frame is refused out_of_order, its ack still counts.
    let mut gap = cseq_signal(&a.peer, json!(1), 5);
    gap["ack"] = got[0]["seq"].clone();
    h.send(&b, gap, T0.plus(20));
    assert_eq!(h.take(a.conn), vec![json!({"type":"ack","cseq":1})]);
    assert_eq!(h.take(b.conn)[0]["code"], "out_of_order");
}

#[test]
fn a_refusal_carries_the_ack_after_it() {
    let (mut h, a, _b) = pair_reading_acked();
    let nobody = PeerId::from_random([99; 8]);
    h.send(&a, cseq_signal(&nobody, json!(1), 1), T0.plus(10));
    // The sequenced refusal of cseq 1 and the room's ack of it come as one frame; `acked` is
    // applied after the frame that carries it, so the client rejects cseq 1 first.
    let to_a = h.take(a.conn);
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert_eq!(to_a[0]["type"], "error");
    assert_eq!(to_a[0]["code"], "unknown_peer");
    assert_eq!(to_a[0]["cseq"], 1);
    assert_eq!(to_a[0]["acked"], 1);
}

#[test]
fn a_frame_with_an_invalid_ack_is_refused_whole() {
    let (mut h, a, b) = pair_reading_acked();
    h.send(&a, cseq_signal(&b.peer, json!(1), 1), T0.plus(10));
    let got = h.take(b.conn);
    let mut bad = cseq_signal(&a.peer, json!(1), 1);
    bad["ack"] = json!("7");
    h.send(&b, bad, T0.plus(20));
    let err = h.take(b.conn);
    assert_eq!(err[0]["code"], "invalid_frame", "{err:?}");
    assert_eq!(err[0]["cseq"], 1);
    assert!(h.take(a.conn).iter().all(|f| f["type"] != "signal"));
    // The ack was not applied: a's frame is still b's to acknowledge.
    h.send(&b, json!({"type":"ack","seq":got[0]["seq"]}), T0.plus(30));
    assert!(
        h.take(a.conn)
            .iter()
            .any(|f| f["acked"] == 1 || f["type"] == "ack"),
        "a hears its ack only now"
    );
}

#[test]
fn caps_acks_survives_hibernation() {
    let (mut h, a, b) = pair_reading_acked();
    h.hibernate(T0.plus(5));
    offer_then_answer_with_ack(&mut h, &a, &b);
    let to_a = h.take(a.conn);
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert_eq!(to_a[0]["acked"], 1);
}

#[test]
fn a_busy_room_writes_its_records_every_30_s() {
    let (mut h, a, b) = Harness::pair();
    // a acknowledges b's arrival, so no frame waits for a flush (which would write anyway).
    h.send(&a, json!({"type":"ack","seq":1}), T0.plus(1));
    h.checkpoint(T0.plus(2));
    let mut t = T0.plus(10);
    let mut n = 1;
    // a and b exchange frames every 200 ms, acknowledging as they go, for 12 s.
    let talk = |h: &mut Harness, until: Millis, t: &mut Millis, n: &mut u64| {
        while *t < until {
            h.send(&a, cseq_signal(&b.peer, json!(*n), *n), *t);
            let got = h.take(b.conn);
            h.send(&b, json!({"type":"ack","seq":got[0]["seq"]}), t.plus(1));
            h.take(a.conn);
            if let Some(due) = h.room.poll_checkpoint()
                && due <= t.plus(1)
            {
                h.checkpoint(t.plus(1));
            }
            *n += 1;
            *t = t.plus(200);
        }
    };
    talk(&mut h, T0.plus(12_000), &mut t, &mut n);
    assert_eq!(
        h.records[a.peer.as_str()].cseq_hi,
        0,
        "no lazy batch while the room is busy"
    );
    assert!(h.counters.is_none(), "nor counters");
    // Busy for the longest wait: the batch is written anyway.
    talk(&mut h, T0.plus(31_000), &mut t, &mut n);
    let written = h.records[a.peer.as_str()].cseq_hi;
    assert!(written > 100, "written after 30 s: {written}");
    // The room goes quiet: the next batch writes what is left, and nothing stays due.
    let settled = n - 1;
    let due = h.room.poll_checkpoint().unwrap();
    assert!(due <= t.plus(LAZY_BUSY_MAX_MS), "{due:?}");
    h.checkpoint(due);
    if let Some(next) = h.room.poll_checkpoint() {
        h.checkpoint(next);
    }
    assert_eq!(h.records[a.peer.as_str()].cseq_hi, settled);
    assert_eq!(h.room.poll_checkpoint(), None, "free to hibernate");
}

#[test]
fn a_busy_room_still_deletes_acknowledged_rows_every_5_s() {
    let (mut h, a, b) = Harness::pair();
    h.send(&a, json!({"type":"ack","seq":1}), T0.plus(1));
    h.checkpoint(T0.plus(2));
    // v1 frames (no cseq) are written before delivery; b acknowledges each.
    let mut t = T0.plus(10);
    for n in 0..40 {
        h.send(
            &a,
            json!({"type":"signal","to":b.peer.as_str(),"payload":n}),
            t,
        );
        let got = h.take(b.conn);
        h.send(&b, json!({"type":"ack","seq":got[0]["seq"]}), t.plus(1));
        if let Some(due) = h.room.poll_checkpoint()
            && due <= t.plus(1)
        {
            h.checkpoint(t.plus(1));
        }
        t = t.plus(200);
    }
    // 8 s of traffic, busy all along: the acknowledged rows went at the 5 s cadence.
    let left = rows_of(&h, &b.peer);
    assert!(left.len() < 20, "rows kept: {left:?}");
}

/// `presence=off`: no presence is sent to the peer, yet the others see it come and go, and
/// frames reach it both ways; it keeps the choice across hibernation and a resume.
#[test]
fn presence_off_peer_gets_no_presence_but_is_announced_and_reachable() {
    let mut h = Harness::new();
    let a = h.join(T0);
    h.presence_off = true;
    let conn = h.join_with("{}", None, T0);
    let w = h.take(conn).remove(0);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["peers"], json!([]), "a is present but not listed");
    assert_eq!(w["presence"], "off");
    let v = Client {
        conn,
        peer: PeerId::parse(w["peer_id"].as_str().unwrap()).unwrap(),
        token: w["resume_token"].as_str().unwrap().to_owned(),
    };
    let joined = h.take(a.conn);
    assert_eq!(joined[0]["type"], "peer-joined");
    assert_eq!(joined[0]["peer_id"], v.peer.as_str());
    h.presence_off = false;
    let b = h.join(T0);
    assert!(h.take(v.conn).is_empty(), "no peer-joined for b");
    assert_eq!(h.types(a.conn), vec!["peer-joined"]);
    // Reachable by id both ways.
    h.send(&a, signal_to(&v.peer, json!("to v")), T0);
    assert_eq!(h.take(v.conn)[0]["payload"], "to v");
    h.send(&v, signal_to(&a.peer, json!("from v")), T0);
    assert_eq!(h.take(a.conn)[0]["payload"], "from v");
    // Away, b leaves: nothing is queued for v; a welcome after hibernation still says off.
    h.room.handle_close(v.conn, false, T0.plus(5));
    h.pump();
    h.send(&b, json!({"type":"leave"}), T0.plus(6));
    assert_eq!(h.types(a.conn), vec!["peer-left"]);
    h.hibernate(T0.plus(7));
    let conn = h.join_with(
        "{}",
        Some(ResumeRequest {
            token: ResumeToken::presented(&v.token),
            last_seq: Some(1),
        }),
        T0.plus(8),
    );
    let frames = h.take(conn);
    assert_eq!(frames.len(), 1, "a welcome and no presence: {frames:?}");
    assert_eq!(frames[0]["resumed"], true);
    assert_eq!(frames[0]["presence"], "off");
    assert_eq!(frames[0]["peers"], json!([]));
}

/// `PRESENCE_MAX_PEERS` bounds the peers that receive presence; `presence=off` peers still
/// join up to `MAX_PEERS`, and a welcome with presence omits the `presence` field.
#[test]
fn presence_max_peers_refuses_presence_but_not_presence_off() {
    let mut h = Harness::with(Limits {
        presence_max_peers: 2,
        ..limits()
    });
    let a = h.join(T0);
    let _b = h.join(T0);
    let conn = h.join_with("{}", None, T0);
    assert_eq!(h.error_code(conn), "presence_full");
    assert_eq!(h.closed.get(&conn.0), Some(&close_code::ROOM_FULL));
    h.presence_off = true;
    let v = h.join(T0);
    let _w = h.join(T0);
    assert_eq!(h.room.stats().peers_connected, 4);
    // MAX_PEERS still holds for them.
    let conn = h.join_with("{}", None, T0);
    assert_eq!(h.error_code(conn), "room_full");
    // A peer with presence leaving makes room for one.
    h.send(&a, json!({"type":"leave"}), T0);
    h.presence_off = false;
    let conn = h.join_with("{}", None, T0);
    let w = h.take(conn).remove(0);
    assert_eq!(w["type"], "welcome");
    assert!(w.get("presence").is_none(), "{w}");
    let listed: Vec<&str> = w["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&v.peer.as_str()),
        "presence=off peers are listed to others"
    );
}

/// An emptied room wants no wake-up (the shell then deletes its alarm): the sweep is only for
/// connected peers, and an away peer's expiry is the only deadline left when none is.
#[test]
fn an_emptied_room_wants_no_wake_up() {
    let (mut h, a, b) = Harness::pair();
    let sweep = h.room.poll_timeout().unwrap();
    assert!(sweep > T0);
    h.room.handle_close(a.conn, false, T0.plus(10));
    h.pump();
    assert!(h.room.poll_timeout().is_some(), "b is still connected");
    h.send(&b, json!({"type":"leave"}), T0.plus(20));
    // Only a, away, is left: its expiry, not the sweep.
    assert_eq!(
        h.room.poll_timeout(),
        Some(T0.plus(10).plus(limits().resume_window_ms))
    );
    h.room
        .handle_sweep(&[], T0.plus(10).plus(limits().resume_window_ms));
    h.pump();
    assert!(h.room.is_empty());
    assert_eq!(h.room.poll_timeout(), None);
}
