//! Routing: a targeted `signal` reaches only its target; `broadcast` reaches
//! everyone else; `relay` carries data over the WebSocket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use serde_json::json;
use switchboard_tests::{Client, env, joined_pair};

#[tokio::test]
async fn targeted_broadcast_and_relay() {
    let e = env();
    let (room, mut a, mut b) = joined_pair(&e.open, "routing").await;
    let mut c = Client::join(&e.open, &room, "").await;
    a.expect("peer-joined").await;
    b.expect("peer-joined").await;

    let sdp = json!({"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    a.signal(&b.peer_id(), sdp.clone());
    let got = b.expect("signal").await;
    assert_eq!(got["from"], a.peer_id().as_str());
    assert_eq!(got["payload"], sdp, "payload passes through untouched");

    // c's next frame is the broadcast, which proves the targeted signal skipped it.
    a.send(json!({"type":"broadcast","payload":{"chat":"hello all"}}));
    for peer in [&mut b, &mut c] {
        let got = peer.expect("signal").await;
        assert_eq!(got["from"], a.peer_id().as_str());
        assert_eq!(got["payload"]["chat"], "hello all");
    }

    c.send(json!({"type":"relay","to":a.peer_id(),"data":{"bytes":"aGk="}}));
    let got = a.expect("relay").await;
    assert_eq!(got["from"], c.peer_id().as_str());
    assert_eq!(got["data"], json!({"bytes":"aGk="}));
    // The sender of a broadcast does not get it back: a's next frame is b's reply.
    b.signal(&a.peer_id(), json!("reply"));
    assert_eq!(a.expect("signal").await["payload"], "reply");
}
