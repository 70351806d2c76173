//! Joining a room: `welcome`, presence of others, `peer-left` on leave.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, unique_room};

#[tokio::test]
async fn peers_see_each_other_join_and_leave() {
    let e = env();
    let room = unique_room("presence");
    // Meta is any JSON: non-ASCII text and whitespace must pass intact.
    let meta = urlencode("{\"name\": \"Zoë 😀\",\n \"n\": 1}");
    let mut a = Client::join(&e.open, &room, &format!("meta={meta}")).await;
    assert_eq!(a.welcome["v"], 1);
    assert_eq!(a.welcome["room"], room.as_str());
    assert_eq!(a.welcome["resumed"], false);
    assert_eq!(a.welcome["peers"], json!([]));
    assert_eq!(a.welcome["heartbeat_ms"], e.heartbeat_ms);
    assert!(a.welcome["resume_token"].as_str().unwrap().len() >= 32);
    assert!(a.welcome["ice_servers"].is_array());

    let mut b = Client::join(&e.open, &room, "").await;
    assert_eq!(
        b.welcome["peers"],
        json!([{"peer_id": a.peer_id(), "meta": {"name":"Zoë 😀","n":1}}])
    );
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["peer_id"], b.peer_id().as_str());
    assert_eq!(joined["meta"], json!({}));
    assert_eq!(joined["seq"], 1);

    b.send(json!({"type":"leave"}));
    b.expect_closed().await;
    let left = a.expect("peer-left").await;
    assert_eq!(left["peer_id"], b.peer_id().as_str());
    assert_eq!(left["reason"], "leave");
    assert_eq!(left["seq"], 2);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `presence=off` (for large rooms): the peer is sent no presence and an empty
/// `welcome.peers`, while the others still see it join and can signal it by id.
#[tokio::test]
async fn presence_off_peer_is_seen_but_sees_no_presence() {
    let e = env();
    let room = unique_room("presoff");
    let mut a = Client::join(&e.open, &room, "").await;
    let mut v = Client::join(&e.open, &room, "presence=off").await;
    assert_eq!(v.welcome["presence"], "off");
    assert_eq!(v.welcome["peers"], json!([]));
    assert!(a.welcome.get("presence").is_none(), "{}", a.welcome);
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["peer_id"], v.peer_id().as_str());
    let b = Client::join(&e.open, &room, "presence=on").await;
    let listed: Vec<&str> = b.welcome["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&v.peer_id().as_str()), "{listed:?}");
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["peer_id"], b.peer_id().as_str());
    // v's next frame is b's signal: no peer-joined for b came before it.
    b.signal(&v.peer_id(), json!("hello v"));
    let f = v.next_skip_acks().await;
    assert_eq!(f["type"], "signal", "{f}");
    assert_eq!(f["payload"], "hello v");
    assert_eq!(f["from"], b.peer_id().as_str());
}
