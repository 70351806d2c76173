//! coturn's `turnutils_uclient -t` relays through us with TURN over TCP (stream framing, padded
//! ChannelData) and loses nothing.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

#[test]
fn uclient_over_tcp_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-t"], 100, 10);
    assert!(report.success, "uclient failed:\n{}", report.text);
    assert_eq!(report.lost, Some(0), "lost packets:\n{}", report.text);
    assert_eq!(report.received, Some(1000), "received:\n{}", report.text);
}

#[test]
fn uclient_over_tcp_with_mandatory_padding_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-t", "-D"], 50, 4);
    assert!(report.success, "uclient failed:\n{}", report.text);
    assert_eq!(report.lost, Some(0), "lost packets:\n{}", report.text);
    assert_eq!(report.received, Some(200), "received:\n{}", report.text);
}
