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
    Counters, Join, Output, PeerRecord, ResumeRequest, Room, RoomConfig, StoreOp, close_code,
};
use switchboard_proto::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName};

const T0: Millis = Millis(1_700_000_000_000);

/// A room plus a record of what each socket received and what storage holds.
struct Harness {
    room: Room,
    next_conn: u64,
    next_id: u8,
    inbox: std::collections::HashMap<u64, Vec<Value>>,
    closed: std::collections::HashMap<u64, u16>,
    records: std::collections::BTreeMap<String, PeerRecord>,
    queue: std::collections::BTreeMap<(String, u64), String>,
    logs: Vec<(&'static str, Option<&'static str>)>,
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
        max_frame_bytes: 256,
        rate_per_s: 10,
        rate_burst: 20,
        queue_max_frames: 5,
        queue_max_bytes: 4096,
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
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(limits())
    }

    fn with(limits: Limits) -> Harness {
        Harness {
            room: Room::new(config(limits)),
            next_conn: 1,
            next_id: 1,
            inbox: Default::default(),
            closed: Default::default(),
            records: Default::default(),
            queue: Default::default(),
            logs: Vec::new(),
        }
    }

    fn pump(&mut self) {
        for o in self.room.drain_outputs() {
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
                    StoreOp::PushQueue { peer, seq, text } => {
                        self.queue.insert((peer.to_string(), seq), text);
                    }
                    StoreOp::TrimQueue { peer, through } => {
                        self.queue
                            .retain(|(p, s), _| !(p == peer.as_str() && *s <= through));
                    }
                },
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
        self.room.handle_join(
            Join {
                conn,
                meta: Meta::parse(meta).unwrap(),
                resume,
                fresh_peer,
                fresh_token,
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

    /// Rebuilds the room from what storage holds, as after hibernation.
    fn hibernate(&mut self, now: Millis) {
        let records: Vec<PeerRecord> = self.records.values().cloned().collect();
        let queued = self
            .queue
            .iter()
            .map(|((p, s), t)| (PeerId::parse(p).unwrap(), *s, t.clone()))
            .collect();
        self.room = Room::restore(config(limits()), records, queued, Counters::default(), now);
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
    assert!(
        ice[1]["username"]
            .as_str()
            .unwrap()
            .ends_with(w["peer_id"].as_str().unwrap())
    );
    let joined = h.take(a.conn);
    assert_eq!(
        joined,
        vec![json!({"type":"peer-joined","seq":1,"peer_id":w["peer_id"],"meta":{"name":"bob"}})]
    );
    assert!(h.logs.iter().filter(|l| l.0 == "join").count() == 2);
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
    assert_eq!(h.room.poll_timeout(), Some(T0.plus(1000)));
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
    assert_eq!(h.room.poll_timeout(), Some(T0.plus(1000)));
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
