//! HTTP-level refusals: every error body is `{"error":{"code":…,"message":…}}`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use switchboard_tests::{env, http_get, unique_room, upgrade_request};

#[test]
fn health_and_http_errors() {
    let e = env();
    let ok = http_get(&format!("{}/healthz", e.open), &[]);
    assert_eq!(ok.status, 200);

    let cases = [
        ("/v1/rooms/bad%20name", 400, "invalid_room"),
        (
            &*format!("/v1/rooms/{}", "x".repeat(65)),
            400,
            "invalid_room",
        ),
        ("/v1/rooms/lobby", 426, "upgrade_required"),
        ("/v1/nothing-here", 404, "not_found"),
        ("/no-such-file.txt", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let r = http_get(&format!("{}{path}", e.open), &[]);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.error_code(), code, "{path}");
        assert!(r.json()["error"]["message"].is_string(), "{path}");
    }
}

#[test]
fn upgrade_refusals_carry_json_errors() {
    let e = env();
    let room = unique_room("httperr");
    for (query, code) in [
        ("meta=%7Bnot-json", "invalid_meta"),
        (&*format!("meta=%22{}%22", "x".repeat(1100)), "invalid_meta"),
        ("resume=abc&last_seq=minus-one", "bad_request"),
        ("presence=maybe", "bad_request"),
    ] {
        let r = upgrade_request(&e.open, &format!("/v1/rooms/{room}?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.error_code(), code, "{query}");
    }
}
