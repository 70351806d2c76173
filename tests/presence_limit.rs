//! `PRESENCE_MAX_PEERS` on a running Worker: past it a join with presence gets
//! `presence_full` and close 4002, joins with `presence=off` go on up to
//! `MAX_PEERS`, and the room keeps working for everyone inside.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, WorkerProcess, unique_room};

#[tokio::test]
async fn presence_full_then_presence_off_joins_up_to_max_peers() {
    let dir = std::env::temp_dir().join(unique_room("switchboard-presence"));
    let vars = [("MAX_PEERS", "6"), ("PRESENCE_MAX_PEERS", "2")];
    let worker = WorkerProcess::start(18796, 19296, &dir, &vars).await;
    let room = unique_room("presmax");
    let mut a = Client::join(&worker.base, &room, "").await;
    let _b = Client::join(&worker.base, &room, "").await;
    a.expect("peer-joined").await;
    let mut refused = Client::connect(&worker.base, &room, "").await;
    refused.expect_error("presence_full").await;
    let closed = refused.expect_closed().await;
    assert!(closed.contains("4002"), "{closed}");

    // Four more with presence=off fill the room to MAX_PEERS; a is told of each.
    let mut quiet = Vec::new();
    for _ in 0..4 {
        let q = Client::join(&worker.base, &room, "presence=off").await;
        assert_eq!(q.welcome["presence"], "off");
        let joined = a.expect("peer-joined").await;
        assert_eq!(joined["peer_id"], q.peer_id().as_str());
        quiet.push(q);
    }
    let mut full = Client::connect(&worker.base, &room, "presence=off").await;
    full.expect_error("room_full").await;

    // Everyone inside still works: a quiet peer signals a, a signals it back.
    quiet[3].signal(&a.peer_id(), json!("from the audience"));
    let f = a.expect("signal").await;
    assert_eq!(f["payload"], "from the audience");
    a.signal(&quiet[3].peer_id(), json!("to the audience"));
    let f = quiet[3].next_skip_acks().await;
    assert_eq!(f["type"], "signal", "{f}");
    assert_eq!(f["payload"], "to the audience");
    drop(worker);
}
