//! `/v1/ice-servers` and `welcome.ice_servers` hand out TURN REST credentials
//! that the relay can verify: `username = "<expiry>:<user>"`,
//! `credential = base64(HMAC-SHA1(TURN_SECRET, username))`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use switchboard_tests::{Client, env, http_get, unique_room};

fn expected_credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn check_list(list: &Value, user_suffix: Option<&str>) {
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let stun = &list[0];
    assert!(stun["urls"][0].as_str().unwrap().starts_with("stun:"));
    assert!(stun.get("username").is_none());
    let turn = &list[1];
    assert!(
        turn["urls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.as_str().unwrap().starts_with("turn"))
    );
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    // TURN_TTL_S is 3600 in the harness; allow for clock skew between processes.
    assert!(
        (now + 3500..=now + 3700).contains(&expiry),
        "expiry {expiry} vs now {now}"
    );
    if let Some(suffix) = user_suffix {
        assert_eq!(user, suffix);
    }
    let credential = turn["credential"].as_str().unwrap();
    assert_eq!(
        credential,
        expected_credential(&env().turn_secret, username)
    );
    assert_ne!(
        credential,
        expected_credential("some-other-secret", username)
    );
}

#[test]
fn http_endpoint_issues_verifiable_turn_credentials() {
    let e = env();
    let r = http_get(&format!("{}/v1/ice-servers", e.open), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    check_list(&r.json()["iceServers"], None);
}

#[tokio::test]
async fn welcome_carries_the_same_list_bound_to_the_peer() {
    let e = env();
    let c = Client::join(&e.open, &unique_room("ice"), "").await;
    // v1.1: `<user>.<trace_id>`, the user being the stable user the router names for this
    // client: the same one `/v1/ice-servers` gives it.
    let minted = http_get(&format!("{}/v1/ice-servers", e.open), &[]).json();
    let stable = minted["iceServers"][1]["username"]
        .as_str()
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .to_owned();
    assert!(stable.starts_with("ip-"), "{stable}");
    let user = format!("{stable}.{}", c.welcome["trace_id"].as_str().unwrap());
    check_list(&c.welcome["ice_servers"], Some(&user));
}
