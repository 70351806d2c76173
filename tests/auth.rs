//! Authentication: with `JWT_SECRET` set, joining and `/v1/ice-servers` need a
//! valid HS256 token; without it, rooms are open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_proto::auth::sign_jwt;
use switchboard_tests::{Client, env, http_get, unique_room, upgrade_request};

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value) -> String {
    sign_jwt(&claims, env().jwt_secret.as_bytes())
}

fn refused(path_and_query: &str) -> (u16, Value) {
    let r = upgrade_request(&env().auth, path_and_query);
    (r.status, r.json())
}

#[tokio::test]
async fn joining_needs_a_valid_token_for_the_room() {
    let e = env();
    let room = unique_room("auth");
    let exp = now_s() + 600;
    let cases = [
        (String::new(), "no token"),
        (
            format!(
                "token={}",
                sign_jwt(&json!({"room":room,"exp":exp}), b"wrong-secret")
            ),
            "bad signature",
        ),
        (
            format!("token={}", token(json!({"room":room,"exp":now_s() - 10}))),
            "expired",
        ),
        (
            format!("token={}", token(json!({"room":"elsewhere","exp":exp}))),
            "wrong room",
        ),
        ("token=not.a.jwt".to_owned(), "garbage"),
    ];
    for (query, what) in cases {
        let (status, body) = refused(&format!("/v1/rooms/{room}?{query}"));
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        assert!(body["error"]["message"].is_string(), "{what}");
    }

    let t1 = token(json!({"room":room,"exp":exp,"sub":"alice","meta":{"name":"Alice"}}));
    let mut a = Client::join(&e.auth, &room, &format!("token={t1}")).await;
    let t2 = token(json!({"room":"*","exp":exp,"sub":"bob"}));
    let b = Client::join(&e.auth, &room, &format!("token={t2}")).await;
    assert_eq!(
        b.welcome["peers"][0]["meta"],
        json!({"name":"Alice","sub":"alice"})
    );
    let joined = a.expect("peer-joined").await;
    assert_eq!(joined["meta"], json!({"sub":"bob"}));
}

#[test]
fn ice_servers_need_a_token_when_auth_is_on() {
    let e = env();
    let url = format!("{}/v1/ice-servers", e.auth);
    let r = http_get(&url, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");
    let bad = http_get(&url, &[("authorization", "Bearer nope")]);
    assert_eq!(bad.status, 401);
    let t = token(json!({"room":"*","exp":now_s() + 600,"sub":"carol"}));
    let by_header = http_get(&url, &[("authorization", &format!("Bearer {t}"))]);
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let turn = &by_header.json()["iceServers"][1];
    assert!(
        turn["username"].as_str().unwrap().ends_with(":carol"),
        "{turn}"
    );
    let by_query = http_get(&format!("{url}?token={t}"), &[]);
    assert_eq!(by_query.status, 200);
}

#[test]
fn open_instance_needs_no_token() {
    let e = env();
    let r = http_get(&format!("{}/v1/ice-servers", e.open), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
}
