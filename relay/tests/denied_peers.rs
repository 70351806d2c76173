//! Without `--allow-loopback-peers` the relay refuses loopback peers with 403 (and other private
//! ranges unless `--allow-peer` lists them).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::net::SocketAddr;

#[test]
fn loopback_and_private_peers_are_forbidden_by_default() {
    let relay =
        common::Relay::start_with(&["--secret", common::SECRET, "--allow-peer", "10.1.0.0/16"]);
    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
    assert!(client.allocate().is_success());
    for peer in [
        "127.0.0.1:9",
        "192.168.0.1:9",
        "10.2.0.1:9",
        "169.254.169.254:80",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(client.permit(peer).code(), Some(403), "{peer}");
    }
    assert!(
        client.permit("10.1.2.3:9".parse().unwrap()).is_success(),
        "explicitly allowed prefix"
    );
}

#[test]
fn uclient_cannot_relay_to_loopback_by_default() {
    let relay = common::Relay::start_with(&["--secret", common::SECRET]);
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &[], 5, 1);
    assert_ne!(
        report.received,
        Some(5),
        "nothing may be relayed to a loopback peer:\n{}",
        report.text
    );
}
