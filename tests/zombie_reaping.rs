//! A client that stops pinging is reaped after three missed heartbeats; the
//! room sees `peer-left` `timeout` at once, and the zombie's socket is closed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use switchboard_tests::{Client, env, joined_pair};

#[tokio::test]
async fn silent_client_is_reaped() {
    let e = env();
    let (_, mut a, mut z) = joined_pair(&e.open, "zombie").await;
    z.stop_pinging();
    // a keeps pinging (auto-answered by the runtime) and must stay.
    let left = a.expect("peer-left").await;
    assert_eq!(left["peer_id"], z.peer_id().as_str());
    assert_eq!(left["reason"], "timeout");
    let closed = z.expect_closed().await;
    assert!(closed.contains("4000"), "zombie closed with {closed}");
}

#[tokio::test]
async fn reaped_zombie_resumes_and_reappears() {
    let e = env();
    let (room, mut a, mut z) = joined_pair(&e.open, "zombie-back").await;
    z.stop_pinging();
    a.expect("peer-left").await;
    z.expect_closed().await;
    let query = format!("resume={}&last_seq={}", z.resume_token(), z.last_seq);
    let back = Client::join(&e.open, &room, &query).await;
    assert_eq!(back.welcome["resumed"], true);
    assert_eq!(back.peer_id(), z.peer_id());
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["peer_id"], z.peer_id().as_str());
}
