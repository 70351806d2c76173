//! TURN credentials name a stable user, so the relay's per-user quota applies: the JWT `sub`
//! (sanitized) with auth, else `ip-<keyed hash of CF-Connecting-IP>` (never the address). A
//! `trace_id` asked for on `/v1/ice-servers` rides in the username: `<expiry>:<user>.<trace_id>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use switchboard_proto::auth::sign_jwt;
use switchboard_tests::{env, http_get};

/// The `<user>[.<trace>]` part of the TURN username `/v1/ice-servers` hands out.
fn turn_user(base: &str, query: &str, headers: &[(&str, &str)]) -> String {
    let r = http_get(&format!("{base}/v1/ice-servers{query}"), headers);
    assert_eq!(r.status, 200, "{}", r.body);
    let list = r.json()["iceServers"].as_array().unwrap().clone();
    let turn = list
        .iter()
        .find(|s| s.get("username").is_some())
        .unwrap_or_else(|| panic!("no TURN entry: {list:?}"));
    let username = turn["username"].as_str().unwrap();
    username.split_once(':').unwrap().1.to_owned()
}

/// A client address no other test uses.
fn fresh_ip() -> String {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    format!("198.18.{}.{}", b[0], b[1])
}

#[test]
fn open_mode_users_are_stable_per_client_address_and_hide_it() {
    let e = env();
    let (ip_a, ip_b) = (fresh_ip(), fresh_ip());
    let a1 = turn_user(&e.open, "", &[("cf-connecting-ip", &ip_a)]);
    let a2 = turn_user(&e.open, "", &[("cf-connecting-ip", &ip_a)]);
    let b = turn_user(&e.open, "", &[("cf-connecting-ip", &ip_b)]);
    assert_eq!(a1, a2, "same address, same user");
    if ip_a != ip_b {
        assert_ne!(a1, b, "another address, another user");
    }
    assert!(a1.starts_with("ip-") && a1.len() == 3 + 16, "{a1}");
    assert!(a1[3..].bytes().all(|c| c.is_ascii_hexdigit()), "{a1}");
    assert!(!a1.contains("198"), "the address never appears: {a1}");
}

#[test]
fn jwt_users_are_the_sanitized_sub() {
    let e = env();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = sign_jwt(
        &json!({"room":"*","sub":"alice@example.com","exp":exp}),
        e.jwt_secret.as_bytes(),
    );
    let bearer = format!("Bearer {token}");
    let ip = fresh_ip();
    let headers = [
        ("authorization", bearer.as_str()),
        ("cf-connecting-ip", &ip),
    ];
    assert_eq!(turn_user(&e.auth, "", &headers), "aliceexamplecom");
    assert_eq!(turn_user(&e.auth, "", &headers), "aliceexamplecom");
}

#[test]
fn a_requested_trace_rides_in_the_username() {
    let e = env();
    let ip = fresh_ip();
    let plain = turn_user(&e.open, "", &[("cf-connecting-ip", &ip)]);
    let traced = turn_user(
        &e.open,
        "?trace_id=0123456789abcdef",
        &[("cf-connecting-ip", &ip)],
    );
    assert_eq!(traced, format!("{plain}.0123456789abcdef"));
    for bad in ["0123456789ABCDEF", "0123", "0123456789abcdef0", "..%3A%3A"] {
        let r = http_get(
            &format!("{}/v1/ice-servers?trace_id={bad}", e.open),
            &[("cf-connecting-ip", &ip)],
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{bad}"
        );
    }
}
