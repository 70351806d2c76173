//! `GET /v1/rooms/{room}/stats` with the admin token reports the room's state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, http_get, unique_room};

#[tokio::test]
async fn admin_sees_peers_frames_and_errors() {
    let e = env();
    let room = unique_room("stats");
    let url = format!("{}/v1/rooms/{room}/stats", e.open);
    assert_eq!(http_get(&url, &[]).status, 401);
    assert_eq!(
        http_get(&url, &[("authorization", "Bearer wrong")]).status,
        401
    );

    let mut a = Client::join(&e.open, &room, "").await;
    let mut b = Client::join(&e.open, &room, "").await;
    a.expect("peer-joined").await;
    a.send_text("{nope");
    a.expect_error("bad_json").await;
    a.signal(&b.peer_id(), json!(1));
    b.expect("signal").await;
    let c = Client::join(&e.open, &room, "").await;
    a.expect("peer-joined").await;
    c.drop_connection();
    // A drop is silent to the other peers, so poll the stats until the room
    // has processed it, bounded by the deadline.
    let auth = format!("Bearer {}", e.admin_token);
    let started = std::time::Instant::now();
    let stats = loop {
        let r = http_get(&url, &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{}", r.body);
        let s = r.json();
        if s["peers_away"] == 1 {
            break s;
        }
        assert!(
            started.elapsed() < switchboard_tests::DEADLINE,
            "drop never seen: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(stats["room"], room.as_str());
    assert_eq!(stats["peers_connected"], 2);
    assert_eq!(stats["errors"], json!({"bad_json": 1}));
    assert!(stats["frames_in"].as_u64().unwrap() >= 2);
    assert!(stats["frames_out"].as_u64().unwrap() >= 6);
}
