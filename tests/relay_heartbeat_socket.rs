//! Relay heartbeats over one WebSocket to the Registry object (`GET /v1/relays/ws`): a relay
//! process renews its lease over the socket, the upgrade needs a signature over the node id,
//! every bad frame gets a typed error reply on a socket that keeps serving, a relay whose
//! socket is refused falls back to POST and stays listed, one whose socket is closed under it
//! reconnects without losing its lease, and a killed node still drops out after its lease.
//!
//! Runs against the `fleet` instance of scripts/e2e.sh, like tests/relay_registry.rs (the
//! admin listing's `transport` field tells how a node's last heartbeat arrived).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_proto::Millis;
use switchboard_proto::registry::{
    HeartbeatFrame, NODE_HEADER, NodeId, SIGNATURE_HEADER, sign_heartbeat, sign_upgrade,
};
use switchboard_tests::fleet::{
    Fleet, RelayNode, fleet, heartbeat_body, next_ts, now_ms, relay_bin,
};
use switchboard_tests::{http_get, unique_room, ws_url};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// Opens `GET /v1/relays/ws` with the given headers.
fn open(f: &Fleet, headers: &[(&str, &str)]) -> Socket {
    let url = ws_url(&f.base, "/v1/relays/ws");
    let mut req = url.as_str().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (ws, _) = tungstenite::connect(req).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// The answer to an upgrade request with `headers` (status and body), read as plain HTTP so
/// that the refusal's body is read whole.
fn upgrade_answer(f: &Fleet, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    all.extend_from_slice(headers);
    let r = http_get(&format!("{}/v1/relays/ws", f.base), &all);
    (r.status, r.body)
}

/// Opens node `node`'s socket with a fresh signed upgrade.
fn open_signed(f: &Fleet, node: &str) -> Socket {
    let sig = sign_upgrade(
        f.secret.as_bytes(),
        &NodeId::parse(node).unwrap(),
        Millis(now_ms()),
    );
    open(f, &[(NODE_HEADER, node), (SIGNATURE_HEADER, &sig)])
}

/// Sends `msg` and returns the registry's one reply frame.
fn ask(ws: &mut Socket, msg: Message) -> Value {
    ws.send(msg).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("the registry closed the socket: {c:?}"),
            _ => {}
        }
    }
}

fn frame(signature: &str, body: &[u8]) -> Message {
    Message::text(HeartbeatFrame::encode(
        signature,
        std::str::from_utf8(body).unwrap(),
    ))
}

fn signed_frame(f: &Fleet, ts: Millis, body: &[u8]) -> Message {
    frame(&sign_heartbeat(f.secret.as_bytes(), ts, body), body)
}

fn listed(f: &Fleet, node: &str) -> Option<Value> {
    f.relays().into_iter().find(|n| n["node_id"] == node)
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

#[test]
fn an_upgrade_without_a_valid_signature_over_the_node_is_refused() {
    let f = fleet();
    let node = unique_room("stranger");
    let id = NodeId::parse(&node).unwrap();
    let other = NodeId::parse(&unique_room("other")).unwrap();
    let fresh = sign_upgrade(f.secret.as_bytes(), &id, Millis(now_ms()));
    let wrong_key = sign_upgrade(b"not-the-secret", &id, Millis(now_ms()));
    let for_other = sign_upgrade(f.secret.as_bytes(), &other, Millis(now_ms()));
    let stale = sign_upgrade(f.secret.as_bytes(), &id, Millis(now_ms() - 31_000));
    // A heartbeat's signature is not an upgrade's.
    let hb_sig = sign_heartbeat(
        f.secret.as_bytes(),
        next_ts(),
        &heartbeat_body(&node, "eu", 1, 0, false, false),
    );
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case; 7] = [
        ("no headers", vec![], 400, "bad_request"),
        (
            "no signature",
            vec![(NODE_HEADER, &node)],
            401,
            "unauthorized",
        ),
        (
            "no node",
            vec![(SIGNATURE_HEADER, &fresh)],
            400,
            "bad_request",
        ),
        (
            "wrong key",
            vec![(NODE_HEADER, &node), (SIGNATURE_HEADER, &wrong_key)],
            401,
            "unauthorized",
        ),
        (
            "signed for another node",
            vec![(NODE_HEADER, &node), (SIGNATURE_HEADER, &for_other)],
            401,
            "unauthorized",
        ),
        (
            "stale",
            vec![(NODE_HEADER, &node), (SIGNATURE_HEADER, &stale)],
            401,
            "unauthorized",
        ),
        (
            "a heartbeat signature",
            vec![(NODE_HEADER, &node), (SIGNATURE_HEADER, &hb_sig)],
            401,
            "unauthorized",
        ),
    ];
    for (what, headers, status, code) in cases {
        let (got, body) = upgrade_answer(&f, &headers);
        assert_eq!(got, status, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"]["code"], code, "{what}: {body}");
        assert!(!body.contains(&f.secret), "{what}");
    }
    // Without Upgrade: 426; another method: 405.
    let r = http_get(&format!("{}/v1/relays/ws", f.base), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (426, "upgrade_required")
    );
    let r = switchboard_tests::http_post(&format!("{}/v1/relays/ws", f.base), &[], b"");
    assert_eq!(r.status, 405);
    // The same headers, correctly signed, open the socket (the check above is not a refusal
    // of every upgrade).
    let (status, _) = upgrade_answer(&f, &[(NODE_HEADER, &node), (SIGNATURE_HEADER, &fresh)]);
    assert_eq!(status, 101);
    let mut ws = open_signed(&f, &node);
    let body = heartbeat_body(&node, "eu", 1, 0, true, false);
    let reply = ask(&mut ws, signed_frame(&f, next_ts(), &body));
    assert_eq!(reply["type"], "accepted", "{reply}");
}

#[test]
fn bad_frames_get_error_replies_and_the_socket_keeps_serving() {
    let f = fleet();
    let node = unique_room("wsframes");
    let body = heartbeat_body(&node, "eu", 1, 2, false, false);
    let mut ws = open_signed(&f, &node);

    // Forged: the signature of another body.
    let other = heartbeat_body(&node, "eu", 1, 2, true, false);
    let sig_other = sign_heartbeat(f.secret.as_bytes(), next_ts(), &other);
    assert_error(&ask(&mut ws, frame(&sig_other, &body)), "unauthorized");
    // Signed with another key.
    let wrong = sign_heartbeat(b"not-the-secret", next_ts(), &body);
    assert_error(&ask(&mut ws, frame(&wrong, &body)), "unauthorized");
    // Stale.
    let stale = Millis(now_ms() - 31_000);
    assert_error(
        &ask(&mut ws, signed_frame(&f, stale, &body)),
        "unauthorized",
    );
    // Malformed frames, a binary frame, an oversized one.
    assert_error(&ask(&mut ws, Message::text("{not json")), "bad_request");
    assert_error(
        &ask(&mut ws, Message::text(r#"{"type":"hello"}"#)),
        "bad_request",
    );
    assert_error(
        &ask(&mut ws, Message::binary(vec![1u8, 2, 3])),
        "bad_request",
    );
    let big = vec![b' '; 9 * 1024];
    assert_error(
        &ask(&mut ws, signed_frame(&f, next_ts(), &big)),
        "payload_too_large",
    );
    // A signed body that is no heartbeat.
    assert_error(
        &ask(&mut ws, signed_frame(&f, next_ts(), b"[1,2]")),
        "bad_request",
    );
    // A valid heartbeat of another node, on this node's socket.
    let stranger = unique_room("wsother");
    let theirs = heartbeat_body(&stranger, "eu", 1, 0, false, false);
    let reply = ask(&mut ws, signed_frame(&f, next_ts(), &theirs));
    assert_error(&reply, "unauthorized");
    assert!(!reply.to_string().contains(&f.secret));
    assert!(f.relays().iter().all(|n| n["node_id"] != node.as_str()));
    assert!(f.relays().iter().all(|n| n["node_id"] != stranger.as_str()));

    // The socket still serves: a valid heartbeat is accepted and lists the node.
    let ts = next_ts();
    let good = signed_frame(&f, ts, &body);
    let reply = ask(&mut ws, good.clone());
    assert_eq!(reply["type"], "accepted", "{reply}");
    let me = listed(&f, &node).expect("listed after an accepted frame");
    assert_eq!(me["transport"], "ws");
    assert_eq!(me["load"]["allocations"], 2);
    // Replayed: the same frame again.
    let reply = ask(&mut ws, good);
    assert_error(&reply, "unauthorized");
    assert!(
        reply["message"].as_str().unwrap().contains("not newer"),
        "{reply}"
    );
    // And again a valid one.
    let reply = ask(&mut ws, signed_frame(&f, next_ts(), &body));
    assert_eq!(reply["type"], "accepted", "{reply}");
    // The replay guard is shared with POST: a POST of an older signing time is refused.
    let old = sign_heartbeat(f.secret.as_bytes(), ts, &body);
    let r = switchboard_tests::fleet::post_heartbeat(&f, &body, Some(&old));
    assert_eq!(r.status, 401, "{}", r.body);
    // Retire the node.
    let draining = heartbeat_body(&node, "eu", 1, 2, true, false);
    let reply = ask(&mut ws, signed_frame(&f, next_ts(), &draining));
    assert_eq!(reply["type"], "accepted", "{reply}");
}

#[test]
fn a_relay_process_renews_its_lease_over_the_socket_and_drops_out_when_killed() {
    let f = fleet();
    let region = unique_room("w").to_ascii_lowercase();
    let node = unique_room("wsnode");
    let relay = RelayNode::start(&relay_bin(), &f, "127.0.0.4", &node, &region);
    f.eventually("the relay registered over its socket", || {
        listed(&f, &node).is_some_and(|n| n["transport"] == "ws")
    });
    // Renewed over the socket: three leases later it is still listed, still by socket, and
    // its last heartbeat is recent.
    let first_seen = listed(&f, &node).unwrap()["first_seen"].clone();
    let until = Instant::now() + Duration::from_millis(f.lease_ms * 3);
    let mut checks = 0;
    while Instant::now() < until {
        let n = listed(&f, &node).expect("listed throughout");
        assert_eq!(n["transport"], "ws", "{n}");
        assert_eq!(n["first_seen"], first_seen, "one lease run: {n}");
        assert!(n["lease_age_ms"].as_u64().unwrap() < f.lease_ms, "{n}");
        checks += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(checks >= 3);
    // kill -9: the socket dies with the process; the node drops out after its lease.
    let killed = Instant::now();
    relay.signal(rustix::process::Signal::KILL);
    f.eventually("the killed node removed from the registry", || {
        listed(&f, &node).is_none()
    });
    assert!(
        killed.elapsed() >= Duration::from_millis(f.lease_ms / 2),
        "removed sooner than a lease could have ended"
    );
    drop(relay);
}

/// A proxy on loopback in front of the fleet instance that refuses every WebSocket upgrade
/// (503) and passes everything else through; counts the refusals.
fn upgrade_refusing_proxy(upstream: &str) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let refused = Arc::new(AtomicU64::new(0));
    let count = refused.clone();
    std::thread::spawn(move || {
        // Ends with the test process; each connection is one relay's request(s).
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            let upstream = upstream.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("upgrade: websocket") {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = client.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    return;
                };
                if server.write_all(&head).is_err() {
                    return;
                }
                let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                    return;
                };
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    (base, refused)
}

#[test]
fn a_relay_whose_socket_is_refused_posts_its_heartbeats_and_stays_listed() {
    let f = fleet();
    let region = unique_room("x").to_ascii_lowercase();
    let node = unique_room("wsrefused");
    let (proxy, refused) = upgrade_refusing_proxy(&f.base);
    let relay = RelayNode::start_with(&relay_bin(), &f, &proxy, "127.0.0.5", &node, &region, &[]);
    f.eventually("the relay registered by POST", || {
        listed(&f, &node).is_some_and(|n| n["transport"] == "http")
    });
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the relay never tried its socket"
    );
    // It stays listed across three leases while its socket keeps being refused.
    let first_seen = listed(&f, &node).unwrap()["first_seen"].clone();
    let tries = refused.load(Ordering::SeqCst);
    let until = Instant::now() + Duration::from_millis(f.lease_ms * 3);
    while Instant::now() < until {
        let n = listed(&f, &node).expect("listed throughout");
        assert_eq!(n["transport"], "http", "{n}");
        assert_eq!(n["first_seen"], first_seen, "one lease run: {n}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        refused.load(Ordering::SeqCst) > tries,
        "the relay stopped trying to reconnect its socket"
    );
    drop(relay);
}

#[test]
fn a_relay_whose_socket_is_closed_under_it_reconnects_and_stays_listed() {
    let f = fleet();
    let region = unique_room("c").to_ascii_lowercase();
    let node = unique_room("wsclosed");
    let relay = RelayNode::start(&relay_bin(), &f, "127.0.0.6", &node, &region);
    f.eventually("the relay registered over its socket", || {
        listed(&f, &node).is_some_and(|n| n["transport"] == "ws")
    });
    let first_seen = listed(&f, &node).unwrap()["first_seen"].clone();
    // A newer socket of the same node (this test knows the secret) makes the Registry close
    // the relay's: its next heartbeat finds the socket gone, goes by POST, and the relay opens
    // a socket again, which in turn closes this one.
    let mut taken = open_signed(&f, &node);
    let closed = loop {
        match taken.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => {}
            Err(e) => panic!("the relay never took its socket back: {e}"),
        }
    };
    assert_eq!(
        closed.map(|c| u16::from(c.code)),
        Some(1000),
        "closed by the relay's new socket"
    );
    // Its lease never lapsed, and its heartbeats arrive over the socket again.
    f.eventually("heartbeats over the new socket", || {
        listed(&f, &node).is_some_and(|n| n["transport"] == "ws" && n["first_seen"] == first_seen)
    });
    let n = listed(&f, &node).unwrap();
    assert_eq!(n["first_seen"], first_seen, "one lease run: {n}");
    drop(relay);
}
