//! `POST /v1/rooms/{room}/drain` (admin) closes every socket of the room with
//! 4003 and reason `retry_after_ms=<n>`; the peers stay and resume.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, joined_pair};

fn post(url: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = ureq::post(url).config().http_status_as_error(false).build();
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let mut resp = req.send_empty().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

#[tokio::test]
async fn drain_closes_with_4003_and_peers_resume() {
    let e = env();
    let (room, mut a, mut b) = joined_pair(&e.open, "drain").await;
    let url = format!("{}/v1/rooms/{room}/drain?retry_after_ms=1500", e.open);
    assert_eq!(post(&url, None).0, 401);
    assert_eq!(post(&url, Some("Bearer wrong")).0, 401);
    let auth = format!("Bearer {}", e.admin_token);
    let (status, body) = post(&url, Some(&auth));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["closed"],
        2
    );
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_closed().await, "close 4003 retry_after_ms=1500");
    }
    // Both come back as themselves; nobody was told anyone left.
    let mut a2 = Client::join(
        &e.open,
        &room,
        &format!("resume={}&last_seq={}", a.resume_token(), a.last_seq),
    )
    .await;
    a2.last_seq = a.last_seq;
    let b2 = Client::join(
        &e.open,
        &room,
        &format!("resume={}&last_seq={}", b.resume_token(), b.last_seq),
    )
    .await;
    assert_eq!(a2.welcome["resumed"], true);
    assert_eq!(b2.welcome["resumed"], true);
    b2.signal(&a.peer_id(), json!("back"));
    assert_eq!(a2.expect("signal").await["payload"], "back");
    // The cap and the method.
    let capped = format!("{}/v1/rooms/{room}/drain?retry_after_ms=999999", e.open);
    assert_eq!(post(&capped, Some(&auth)).0, 200);
    let mut a2 = a2;
    assert_eq!(a2.expect_closed().await, "close 4003 retry_after_ms=60000");
    let r = switchboard_tests::http_get(&url, &[("authorization", &auth)]);
    assert_eq!(r.status, 405);
}
