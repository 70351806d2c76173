//! The room object is evicted from memory while one client is silent (the
//! other only pings, which the runtime answers without waking it). At the
//! death deadline the alarm wakes a fresh object whose socket cache is empty:
//! it must reap the zombie, tell the room, and close the zombie's socket,
//! which it finds by tag (the only way to reach a socket not in its cache).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::Duration;

use switchboard_tests::{Client, WorkerProcess, unique_room};

#[tokio::test]
async fn evicted_room_reaps_and_closes_a_socket_it_has_not_cached() {
    let dir = std::env::temp_dir().join(unique_room("switchboard-hibernate"));
    // Dead after 3 x 8 s = 24 s; wrangler dev evicts an object that has only
    // hibernatable sockets and no pending work after about 10 s idle.
    let vars = [("HEARTBEAT_MS", "8000")];
    let worker = WorkerProcess::start(18793, 19293, &dir, &vars).await;
    let room = unique_room("hibernate");
    let mut a = Client::join(&worker.base, &room, "").await;
    let mut z = Client::join(&worker.base, &room, "").await;
    a.expect("peer-joined").await;
    z.stop_pinging();
    let starts_before = worker.log().matches("\"object_start\"").count();
    let left = a.next_within(Duration::from_secs(45)).await;
    assert_eq!(left["type"], "peer-left", "{left}");
    assert_eq!(left["peer_id"], z.peer_id().as_str());
    let closed = z.expect_closed().await;
    assert!(
        closed.starts_with("close 4000"),
        "zombie closed with {closed}"
    );
    let log = worker.log();
    let starts = log.matches("\"object_start\"").count();
    assert!(
        starts > starts_before,
        "the object was never evicted and rebuilt, so this test did not reach the \
         uncached path ({starts} starts); log:\n{log}"
    );
    worker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
