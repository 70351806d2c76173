//! Every frame-level error is a typed `error` frame, and the same socket keeps working.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, joined_pair};

async fn pair() -> (Client, Client) {
    let (_, a, b) = joined_pair(&env().open, "errors").await;
    (a, b)
}

/// Sends a signal from `a` to `b` and checks it arrives: the socket still works.
async fn still_works(a: &Client, b: &mut Client, n: u32) {
    a.signal(&b.peer_id(), json!({"n": n}));
    let got = b.expect("signal").await;
    assert_eq!(got["payload"]["n"], n);
}

#[tokio::test]
async fn each_error_then_a_working_signal() {
    let (mut a, mut b) = pair().await;
    let big = format!(
        r#"{{"type":"broadcast","payload":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let cases = [
        ("{this is not json".to_owned(), "bad_json"),
        (r#"{"type":"teleport"}"#.to_owned(), "unknown_type"),
        (
            r#"{"type":"signal","payload":{}}"#.to_owned(),
            "invalid_frame",
        ),
        (
            r#"{"type":"signal","to":"nobody","payload":{}}"#.to_owned(),
            "unknown_peer",
        ),
        (big, "payload_too_large"),
    ];
    for (n, (text, code)) in (1..).zip(cases) {
        a.send_text(&text);
        let err = a.expect_error(code).await;
        assert!(!err["message"].as_str().unwrap().is_empty());
        still_works(&a, &mut b, n).await;
    }
    a.send_binary(vec![0, 159, 146, 150]);
    a.expect_error("unsupported_frame").await;
    still_works(&a, &mut b, 99).await;
}
