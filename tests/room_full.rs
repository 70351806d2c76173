//! A room holds `MAX_PEERS` (64) peers; the next gets `room_full` and is closed,
//! while the room keeps working for those inside.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, unique_room};

#[tokio::test]
async fn sixty_four_peers_then_room_full() {
    let e = env();
    let room = unique_room("full");
    let mut peers = Vec::new();
    for i in 0..64 {
        let c = Client::join(&e.open, &room, "").await;
        assert_eq!(c.welcome["peers"].as_array().unwrap().len(), i);
        peers.push(c);
    }
    let mut extra = Client::connect(&e.open, &room, "").await;
    extra.expect_error("room_full").await;
    let closed = extra.expect_closed().await;
    assert!(closed.contains("4002"), "{closed}");

    // Everyone inside still works: the last peer signals the first.
    let first = peers[0].peer_id();
    let last_id = peers[63].peer_id();
    peers[63].signal(&first, json!("still here"));
    let p0 = &mut peers[0];
    loop {
        let f = p0.next().await;
        if f["type"] == "signal" {
            assert_eq!(f["from"], last_id.as_str());
            assert_eq!(f["payload"], "still here");
            break;
        }
        assert_eq!(f["type"], "peer-joined", "{f}");
    }
}
