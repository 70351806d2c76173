//! A flooding client gets one `rate_limited` error per window, carrying the
//! first refused `cseq` and `retry_after_ms`; the rest of the window's frames
//! (binary ones too) are dropped without an answer, and resending from that
//! `cseq` after the delay works.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::Duration;

use serde_json::json;
use switchboard_tests::{Client, WorkerProcess, unique_room};

#[tokio::test]
async fn one_rate_limited_error_per_window() {
    let dir = std::env::temp_dir().join(unique_room("switchboard-rate"));
    // 2 frames/s, burst 5: a window of 500 ms, long enough that the whole
    // flood below lands inside it.
    let vars = [("RATE_PER_S", "2"), ("RATE_BURST", "5")];
    let worker = WorkerProcess::start(18792, 19292, &dir, &vars).await;
    let room = unique_room("rate");
    let mut a = Client::join(&worker.base, &room, "").await;
    let mut b = Client::join(&worker.base, &room, "").await;
    a.expect("peer-joined").await;
    assert_eq!(
        a.welcome["limits"],
        json!({"rate_per_s":2,"rate_burst":5,"max_frame_bytes":65536,"ack_delay_ms":2000})
    );
    for n in 1..=10 {
        a.signal_cseq(&b.peer_id(), json!({"n": n}), n);
        if n == 8 {
            a.send_binary(vec![1, 2, 3]);
        }
    }
    // The burst passes.
    for n in 1..=5 {
        let f = b.expect("signal").await;
        assert_eq!(
            (f["payload"]["n"].as_u64(), f["cseq"].as_u64()),
            (Some(n), Some(n))
        );
    }
    let err = a.expect_error("rate_limited").await;
    assert_eq!(err["cseq"], 6, "the first refused cseq: {err}");
    let retry = err["retry_after_ms"].as_u64().unwrap();
    assert!((1..=500).contains(&retry), "{err}");
    // Honour the delay, then resend from the refused cseq.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    a.signal_cseq(&b.peer_id(), json!({"n": 6}), 6);
    let f = b.expect("signal").await;
    assert_eq!(f["cseq"], 6);
    // Everything a heard before the ack of 6 (which follows the processing of
    // 7..10 and the binary frame): acks only, no second error.
    let others = a.wait_ack(6).await;
    assert!(
        others.is_empty(),
        "more than one answer in the window: {others:?}"
    );
    worker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
