//! Protocol v1.1 acked client frames: `cseq` frames are acknowledged
//! cumulatively, a frame resent after a resume is delivered once, refusals
//! carry the frame's `cseq` and are part of the resumable stream, and a gap
//! is answered `out_of_order` with the `cseq` expected; and (v1.2) acks ride
//! on the frames each way.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, joined_pair, unique_room};

#[tokio::test]
async fn acked_then_a_duplicate_after_resume_is_delivered_once() {
    let e = env();
    let (room, mut a, mut b) = joined_pair(&e.open, "acked").await;
    assert_eq!(a.welcome["rev"], 2);
    assert_eq!(a.welcome["cseq"], 0);
    for n in 1..=3 {
        a.signal_cseq(&b.peer_id(), json!({"n": n}), n);
    }
    for n in 1..=3 {
        let f = b.expect("signal").await;
        assert_eq!(f["cseq"], n, "delivered frames carry the sender's cseq");
        assert_eq!(f["from"], a.peer_id().as_str());
    }
    // b acknowledges what it read; a's frames are then settled and acked.
    b.send(json!({"type":"ack","seq": b.last_seq}));
    assert!(a.wait_ack(3).await.is_empty());
    // a drops and resumes: the room says 3 is settled.
    let (token, last) = (a.resume_token(), a.last_seq);
    a.drop_connection();
    let mut a = Client::join(&e.open, &room, &format!("resume={token}&last_seq={last}")).await;
    a.last_seq = last;
    assert_eq!(a.welcome["resumed"], true);
    assert_eq!(a.welcome["cseq"], 3);
    // A client that resends anyway (its ack was lost) gets the ack again and
    // b gets nothing new: the next thing b reads is cseq 4.
    a.signal_cseq(&b.peer_id(), json!({"n": 3}), 3);
    assert!(a.wait_ack(3).await.is_empty());
    a.signal_cseq(&b.peer_id(), json!({"n": 4}), 4);
    let f = b.expect("signal").await;
    assert_eq!(f["cseq"], 4, "the duplicate was not delivered: {f}");
}

#[tokio::test]
async fn refusals_carry_cseq_and_are_replayed_on_resume() {
    let e = env();
    let (room, mut a, b) = joined_pair(&e.open, "refused").await;
    a.signal_cseq("nobody", json!(1), 1);
    let err = a.expect("error").await;
    assert_eq!(err["code"], "unknown_peer");
    assert_eq!(err["cseq"], 1);
    let seq = err["seq"]
        .as_u64()
        .expect("a refusal of a cseq frame is sequenced");
    // An invalid frame whose cseq can be read is refused the same way.
    a.send_text(r#"{"type":"relay","to":"a b","data":1,"cseq":2}"#);
    let err2 = a.next_skip_acks().await;
    assert_eq!(
        (err2["code"].as_str(), err2["cseq"].as_u64()),
        (Some("invalid_frame"), Some(2))
    );
    // A gap is refused without a seq and says where to resume.
    a.signal_cseq(&b.peer_id(), json!(9), 9);
    let gap = a.next_skip_acks().await;
    assert_eq!(gap["code"], "out_of_order", "{gap}");
    assert_eq!(
        (gap["cseq"].as_u64(), gap["expected"].as_u64()),
        (Some(9), Some(3))
    );
    assert!(gap.get("seq").is_none());
    // The refusals were written with the stream: a resume from before them replays them.
    let token = a.resume_token();
    a.drop_connection();
    let mut a = Client::join(
        &e.open,
        &room,
        &format!("resume={token}&last_seq={}", seq - 1),
    )
    .await;
    a.last_seq = seq - 1;
    assert_eq!(a.welcome["cseq"], 2);
    let r1 = a.expect("error").await;
    assert_eq!(
        (r1["code"].as_str(), r1["cseq"].as_u64()),
        (Some("unknown_peer"), Some(1))
    );
    let r2 = a.expect("error").await;
    assert_eq!(
        (r2["code"].as_str(), r2["cseq"].as_u64()),
        (Some("invalid_frame"), Some(2))
    );
}

#[tokio::test]
async fn frames_sent_while_the_recipient_socket_dies_arrive_after_its_resume() {
    let e = env();
    let (room, a, b) = joined_pair(&e.open, "dying").await;
    let mut a = a;
    let (b_id, token, last) = (b.peer_id(), b.resume_token(), b.last_seq);
    // b's TCP connection goes away without a close; a sends into the window
    // in which the room may still think b is connected.
    b.drop_connection();
    for n in 1..=5 {
        a.signal_cseq(&b_id, json!({"n": n}), n);
    }
    // a only hears its ack once the frames are durable or acknowledged.
    assert!(a.wait_ack(5).await.is_empty());
    let mut b = Client::join(&e.open, &room, &format!("resume={token}&last_seq={last}")).await;
    b.last_seq = last;
    for n in 1..=5 {
        let f = b.expect("signal").await;
        assert_eq!(f["cseq"], n, "in order, none lost, none twice");
    }
}

#[tokio::test]
async fn acks_ride_on_frames_both_ways_with_caps_acks() {
    let e = env();
    let room = unique_room("ride");
    let mut a = Client::join(&e.open, &room, "caps=acks").await;
    let mut b = Client::join(&e.open, &room, "caps=relays,acks").await;
    a.expect("peer-joined").await;
    a.signal_cseq(&b.peer_id(), json!("offer"), 1);
    let offer = b.expect("signal").await;
    assert_eq!(offer["cseq"], 1);
    // b answers and acknowledges, in the same frame, what it read.
    b.send(json!({"type":"signal","to":a.peer_id(),"payload":"answer","cseq":1,"ack":b.last_seq}));
    let answer = a.expect("signal").await;
    assert_eq!(answer["payload"], "answer");
    assert_eq!(
        answer["acked"], 1,
        "the room's ack of a's offer rode on b's answer: {answer}"
    );
    // a acknowledges the answer inside its next frame; b's ack rides on that one.
    a.send(
        json!({"type":"signal","to":b.peer_id(),"payload":"candidate","cseq":2,"ack":a.last_seq}),
    );
    let candidate = b.expect("signal").await;
    assert_eq!(candidate["acked"], 1, "{candidate}");
    // A client without `caps=acks` is sent its acks as frames of their own.
    let mut c = Client::join(&e.open, &room, "").await;
    c.signal_cseq(&b.peer_id(), json!("hello"), 1);
    let hello = loop {
        let f = b.next().await;
        if f["type"] == "signal" {
            break f;
        }
    };
    b.send(json!({"type":"signal","to":c.peer_id(),"payload":"hi","cseq":2,"ack":hello["seq"]}));
    let seen = c.wait_ack(1).await;
    assert!(
        seen.iter().all(|f| f.get("acked").is_none()),
        "no acked without caps=acks: {seen:?}"
    );
}
