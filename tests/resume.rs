//! Resume: a peer whose TCP connection drops comes back with its token and
//! receives exactly the frames it missed, in order, then live traffic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, joined_pair, unique_room};

#[tokio::test]
async fn abrupt_drop_then_resume_loses_and_duplicates_nothing() {
    let e = env();
    let (room, mut a, mut b) = joined_pair(&e.open, "resume").await;
    for n in 0..3 {
        a.signal(&b.peer_id(), json!({"n": n}));
        assert_eq!(b.expect("signal").await["payload"]["n"], n);
    }
    let (peer_id, token, last_seq) = (b.peer_id(), b.resume_token(), b.last_seq);
    b.drop_connection();
    // Sent while b is gone (the server may not even have noticed yet).
    for n in 3..8 {
        a.signal(&peer_id, json!({"n": n}));
    }
    let query = format!("resume={token}&last_seq={last_seq}");
    let mut b = Client::join(&e.open, &room, &query).await;
    assert_eq!(b.welcome["resumed"], true);
    assert_eq!(b.peer_id(), peer_id);
    assert_eq!(b.welcome["peers"][0]["peer_id"], a.peer_id().as_str());
    // The harness asserts every seq is exactly one more than the last.
    b.last_seq = last_seq;
    for n in 3..8 {
        let f = b.expect("signal").await;
        assert_eq!(f["payload"]["n"], n, "replayed in order");
    }
    a.signal(&peer_id, json!({"n": "live"}));
    assert_eq!(b.expect("signal").await["payload"]["n"], "live");
    // a saw no presence change: its next frame is b's message.
    b.signal(&a.peer_id(), json!("back"));
    assert_eq!(a.expect("signal").await["payload"], "back");
}

#[tokio::test]
async fn ack_releases_frames_for_good() {
    let e = env();
    let (room, mut a, mut b) = joined_pair(&e.open, "resume-ack").await;
    for n in 0..4 {
        a.signal(&b.peer_id(), json!({"n": n}));
        b.expect("signal").await;
    }
    b.send(json!({"type":"ack","seq": b.last_seq}));
    // The ack is processed before anything b sends after it.
    b.signal(&a.peer_id(), json!("acked"));
    a.expect("signal").await;
    let (token, last_seq) = (b.resume_token(), b.last_seq);
    b.drop_connection();
    // Resuming from before the acknowledged frames is refused, loudly.
    let mut c = Client::connect(
        &e.open,
        &room,
        &format!("resume={token}&last_seq={}", last_seq - 2),
    )
    .await;
    c.expect_error("resume_failed").await;
    let c_id = c.expect("welcome").await["peer_id"].clone();
    // From the acknowledged point it works, with nothing replayed.
    let mut b = Client::join(
        &e.open,
        &room,
        &format!("resume={token}&last_seq={last_seq}"),
    )
    .await;
    assert_eq!(b.welcome["resumed"], true);
    b.last_seq = last_seq;
    a.signal(&b.peer_id(), json!("first after resume"));
    // c's fresh join announced a new peer to b first.
    assert_eq!(b.expect("peer-joined").await["peer_id"], c_id);
    assert_eq!(b.expect("signal").await["payload"], "first after resume");
}

#[tokio::test]
async fn wrong_token_gets_resume_failed_then_a_fresh_join() {
    let e = env();
    let room = unique_room("resume-bad");
    let mut c = Client::connect(
        &e.open,
        &room,
        "resume=00112233445566778899aabbccddeeff&last_seq=0",
    )
    .await;
    let err = c.expect_error("resume_failed").await;
    assert!(err["message"].is_string());
    let w = c.expect("welcome").await;
    assert_eq!(w["resumed"], false);
}

#[tokio::test]
async fn window_expiry_tells_the_room_and_voids_the_token() {
    let e = env();
    let (room, mut a, b) = joined_pair(&e.open, "resume-expire").await;
    let (peer_id, token) = (b.peer_id(), b.resume_token());
    b.drop_connection();
    // Nothing is announced until RESUME_WINDOW_MS has passed; then peer-left timeout.
    let left = a.expect("peer-left").await;
    assert_eq!(left["peer_id"], peer_id.as_str());
    assert_eq!(left["reason"], "timeout");
    let mut c = Client::connect(&e.open, &room, &format!("resume={token}&last_seq=0")).await;
    c.expect_error("resume_failed").await;
    let w = c.expect("welcome").await;
    assert_ne!(w["peer_id"], peer_id.as_str());
}
