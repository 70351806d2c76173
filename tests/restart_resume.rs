//! The Worker restarts (as on a deploy or a Durable Object reset): every
//! socket closes, and the peers resume from the room's SQLite storage with
//! nothing lost, including frames queued for a peer that was already away.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, WorkerProcess, unique_room};

#[tokio::test]
async fn peers_resume_after_the_worker_restarts() {
    let dir = std::env::temp_dir().join(unique_room("switchboard-restart"));
    let vars = [("RESUME_WINDOW_MS", "60000")];
    let worker = WorkerProcess::start(18791, 19291, &dir, &vars).await;
    let room = unique_room("restart");
    let mut a = Client::join(&worker.base, &room, "").await;
    let mut b = Client::join(&worker.base, &room, "").await;
    a.expect("peer-joined").await;
    a.signal(&b.peer_id(), json!({"n": 0}));
    assert_eq!(b.expect("signal").await["payload"]["n"], 0);
    let (b_id, b_token, b_seq) = (b.peer_id(), b.resume_token(), b.last_seq);
    b.drop_connection();
    // Queued for b while it is away, then the whole Worker goes down.
    for n in 1..4 {
        a.signal(&b_id, json!({"n": n}));
    }
    // a's own signal back to itself proves the three were processed before the kill.
    a.signal(&a.peer_id(), json!("processed"));
    assert_eq!(a.expect("signal").await["payload"], "processed");
    let (a_id, a_token, a_seq) = (a.peer_id(), a.resume_token(), a.last_seq);
    worker.stop();
    a.expect_closed().await;

    let worker = WorkerProcess::start(18791, 19291, &dir, &vars).await;
    let mut a = Client::join(
        &worker.base,
        &room,
        &format!("resume={a_token}&last_seq={a_seq}"),
    )
    .await;
    assert_eq!(a.welcome["resumed"], true);
    assert_eq!(a.peer_id(), a_id);
    let mut b = Client::join(
        &worker.base,
        &room,
        &format!("resume={b_token}&last_seq={b_seq}"),
    )
    .await;
    assert_eq!(b.welcome["resumed"], true);
    assert_eq!(b.peer_id(), b_id);
    b.last_seq = b_seq;
    for n in 1..4 {
        assert_eq!(
            b.expect("signal").await["payload"]["n"],
            n,
            "replayed in order after the restart"
        );
    }
    a.last_seq = a_seq;
    b.signal(&a_id, json!("after restart"));
    assert_eq!(a.expect("signal").await["payload"], "after restart");
    worker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A v1.1 sender (`cseq`) keeps every frame until the room acknowledges it,
/// and the room acknowledges only what is durable or acknowledged by its
/// recipient. Frames sent right before the Worker dies are therefore either
/// kept by the room or resent by the sender: the recipient gets every one,
/// exactly once by `(from, cseq)`, with contiguous `seq`s.
#[tokio::test]
async fn cseq_frames_sent_right_before_a_restart_all_arrive() {
    const N: u64 = 30;
    let dir = std::env::temp_dir().join(unique_room("switchboard-restart-cseq"));
    let vars = [("RESUME_WINDOW_MS", "60000")];
    let worker = WorkerProcess::start(18794, 19294, &dir, &vars).await;
    let room = unique_room("restart-cseq");
    let mut a = Client::join(&worker.base, &room, "").await;
    let mut b = Client::join(&worker.base, &room, "").await;
    a.expect("peer-joined").await;
    for n in 1..=N {
        a.signal_cseq(&b.peer_id(), json!({"n": n}), n);
    }
    // b reads a few, then the Worker dies with the rest in flight.
    let mut got = std::collections::BTreeMap::<u64, u32>::new();
    for _ in 0..3 {
        let f = b.expect("signal").await;
        *got.entry(f["cseq"].as_u64().unwrap()).or_default() += 1;
    }
    worker.stop();
    let (frames, _) = b.frames_until_closed().await;
    for f in frames.iter().filter(|f| f["type"] == "signal") {
        *got.entry(f["cseq"].as_u64().unwrap()).or_default() += 1;
    }
    let (_, _) = a.frames_until_closed().await;
    let (a_token, a_seq, b_token, b_seq) =
        (a.resume_token(), a.last_seq, b.resume_token(), b.last_seq);

    let worker = WorkerProcess::start(18794, 19294, &dir, &vars).await;
    let a = Client::join(
        &worker.base,
        &room,
        &format!("resume={a_token}&last_seq={a_seq}"),
    )
    .await;
    assert_eq!(a.welcome["resumed"], true);
    let settled = a.welcome["cseq"].as_u64().unwrap();
    assert!(settled <= N);
    let mut b = Client::join(
        &worker.base,
        &room,
        &format!("resume={b_token}&last_seq={b_seq}"),
    )
    .await;
    assert_eq!(b.welcome["resumed"], true);
    b.last_seq = b_seq;
    // The sender resends everything after what the room settled, as the SDK does.
    for n in settled + 1..=N {
        a.signal_cseq(&b.peer_id(), json!({"n": n}), n);
    }
    let mut unique: std::collections::BTreeSet<u64> = got.keys().copied().collect();
    while unique.len() < N as usize {
        let f = b.expect("signal").await;
        let c = f["cseq"].as_u64().unwrap();
        assert_eq!(f["payload"]["n"], c);
        unique.insert(c);
    }
    assert_eq!(unique, (1..=N).collect(), "every frame arrived");
    assert!(
        got.values().all(|n| *n == 1),
        "no duplicate before the restart: {got:?}"
    );
    worker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
