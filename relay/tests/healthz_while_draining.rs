//! `/healthz` answers 503 while the relay drains, so load balancers steer new clients to other
//! nodes while the calls in progress finish here.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn healthz_is_503_while_draining() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let addr = relay.metrics.unwrap();
    assert_eq!(common::http_get(addr, "/healthz").0, "HTTP/1.1 200 OK");
    // An allocation keeps the relay draining instead of exiting at once.
    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
    assert!(client.allocate().is_success());

    relay.signal(common::Signal::TERM);
    relay.wait_log("draining", Duration::from_secs(5));
    assert!(relay.is_running());
    assert_eq!(
        common::http_get(addr, "/healthz"),
        (
            "HTTP/1.1 503 Service Unavailable".to_owned(),
            "draining\n".to_owned()
        )
    );
    // The allocation in progress is still served.
    assert!(client.refresh(600).is_success());
    assert!(client.refresh(0).is_success());
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(true));
}
