//! `welcome.sfu` and `GET /v1/sfu-token`: the room's relay session endpoint (one node per room,
//! chosen from `SFU_URLS`) and a session token the relay's own verification accepts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use switchboard_proto::sfu_token;
use switchboard_proto::{Millis, PeerId, RoomName};
use switchboard_tests::{Client, env, http_get, unique_room};

fn now() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

fn sfu_urls() -> Vec<String> {
    std::env::var("SWITCHBOARD_SFU_URLS")
        .expect("SWITCHBOARD_SFU_URLS is set by scripts/e2e.sh")
        .split(',')
        .map(|u| format!("{u}/v1/sessions"))
        .collect()
}

/// Checks a grant the way the relay would (proto's `verify` with the shared secret).
fn check_grant(grant: &Value, room: &str, peer: &str) -> String {
    let url = grant["url"].as_str().unwrap();
    assert!(
        sfu_urls().iter().any(|u| u == url),
        "{url} not from SFU_URLS"
    );
    let token = grant["token"].as_str().unwrap();
    let t = now();
    let claims = sfu_token::verify(env().turn_secret.as_bytes(), token, t).unwrap();
    assert_eq!(claims.room, RoomName::parse(room).unwrap());
    assert_eq!(claims.peer_id, PeerId::parse(peer).unwrap());
    let expires = grant["expires"].as_u64().unwrap();
    assert_eq!(claims.exp, expires);
    // SFU_TOKEN_TTL_S defaults to 600; allow for clock skew between processes.
    assert!(
        (t.as_secs() + 500..=t.as_secs() + 700).contains(&expires),
        "expires {expires} vs now {}",
        t.as_secs()
    );
    // Another secret does not verify it: the relay would refuse a forgery.
    assert!(sfu_token::verify(b"some-other-secret", token, t).is_err());
    token.to_owned()
}

#[tokio::test]
async fn welcome_grants_each_peer_a_token_for_the_rooms_one_node() {
    let e = env();
    let room = unique_room("sfu");
    let a = Client::join(&e.open, &room, "").await;
    let b = Client::join(&e.open, &room, "").await;
    check_grant(&a.welcome["sfu"], &room, &a.peer_id());
    check_grant(&b.welcome["sfu"], &room, &b.peer_id());
    assert_eq!(
        a.welcome["sfu"]["url"], b.welcome["sfu"]["url"],
        "every peer of a room meets on one node"
    );
    // Rooms spread over the nodes (a stable hash of the name): some of 32 rooms use each.
    let mut urls = std::collections::HashSet::new();
    for i in 0..32 {
        let c = Client::join(&e.open, &format!("{room}-{i}"), "").await;
        urls.insert(c.welcome["sfu"]["url"].as_str().unwrap().to_owned());
    }
    assert_eq!(urls.len(), sfu_urls().len(), "{urls:?}");
}

#[tokio::test]
async fn the_refresh_endpoint_renews_the_token_of_the_peer_that_presents_one() {
    let e = env();
    let room = unique_room("sfu-refresh");
    let a = Client::join(&e.open, &room, "").await;
    let current = check_grant(&a.welcome["sfu"], &room, &a.peer_id());
    let r = http_get(
        &format!("{}/v1/sfu-token?room={room}&sfu_token={current}", e.open),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let grant = r.json();
    check_grant(&grant, &room, &a.peer_id());
    assert_eq!(grant["url"], a.welcome["sfu"]["url"]);

    // Refused: no token, a token for another room, a forged or garbage token, no room, POST.
    let r = http_get(&format!("{}/v1/sfu-token?room={room}", e.open), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "unauthorized"),
        "{}",
        r.body
    );
    let r = http_get(
        &format!(
            "{}/v1/sfu-token?room=other-{room}&sfu_token={current}",
            e.open
        ),
        &[],
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let forged = sfu_token::sign(
        b"not-the-secret",
        &sfu_token::Claims {
            room: RoomName::parse(&room).unwrap(),
            peer_id: PeerId::parse(&a.peer_id()).unwrap(),
            exp: now().as_secs() + 60,
        },
    );
    for bad in [forged.as_str(), "garbage", "sfu1.x.y"] {
        let r = http_get(
            &format!("{}/v1/sfu-token?room={room}&sfu_token={bad}", e.open),
            &[],
        );
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
    }
    let r = http_get(&format!("{}/v1/sfu-token?sfu_token={current}", e.open), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = switchboard_tests::http_post(
        &format!("{}/v1/sfu-token?room={room}&sfu_token={current}", e.open),
        &[],
        b"",
    );
    assert_eq!(r.status, 405, "{}", r.body);
}

#[test]
fn the_refresh_endpoint_answers_cors_like_the_others() {
    let e = env();
    let r = http_get(
        &format!("{}/v1/sfu-token?room=lobby", e.open),
        &[("origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn an_instance_without_sfu_urls_offers_no_sfu() {
    let fleet = std::env::var("SWITCHBOARD_FLEET_URL").unwrap();
    let room = unique_room("no-sfu");
    let a = Client::join(&fleet, &room, "").await;
    assert!(a.welcome.get("sfu").is_none(), "{}", a.welcome);
    let r = http_get(
        &format!("{fleet}/v1/sfu-token?room={room}&sfu_token=x"),
        &[],
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "not_found"),
        "{}",
        r.body
    );
}
