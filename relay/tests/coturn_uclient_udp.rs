//! coturn's `turnutils_uclient` relays through us over UDP with TURN REST credentials and loses
//! nothing, using channels, Send indications, and client-to-client relaying.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

fn assert_clean(report: &common::UclientReport, expected: u64) {
    assert!(report.success, "uclient failed:\n{}", report.text);
    assert_eq!(report.lost, Some(0), "lost packets:\n{}", report.text);
    assert_eq!(
        report.received,
        Some(expected),
        "received:\n{}",
        report.text
    );
    assert_eq!(report.sent, Some(expected), "sent:\n{}", report.text);
}

#[test]
fn uclient_over_udp_with_channels_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &[], 100, 10);
    assert_clean(&report, 1000);
}

#[test]
fn uclient_over_udp_with_send_indications_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-s"], 50, 4);
    assert_clean(&report, 200);
}

#[test]
fn uclient_client_to_client_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-y"], 50, 4);
    assert_clean(&report, 200);
}

#[test]
fn uclient_with_dont_fragment_loses_nothing() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-g"], 50, 4);
    assert_clean(&report, 200);
}
