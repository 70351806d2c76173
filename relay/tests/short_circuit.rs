//! Two allocations on one relay talking to each other (two browsers relayed through the same
//! node): the relay forwards in memory instead of sending out of one relayed socket and reading
//! it back on the other. Permissions are still checked on both sides, and what the receiving
//! client gets is exactly what the kernel path delivers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::message::{Class, Message, MessageType, Method};
use switchboard_relay::stun::{ChannelData, ChannelNumber};

fn short_circuited(metrics: SocketAddr) -> u64 {
    let (_, body) = common::http_get(metrics, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("switchboard_relay_short_circuited_packets_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counter in:\n{body}"))
}

/// Polls until the published counter reaches `at_least` (published once a second).
fn wait_short_circuited(metrics: SocketAddr, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = short_circuited(metrics);
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn allocations_of_one_relay_talk_in_memory_with_permissions_on_both_sides() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    // One loop, so both allocations are on it.
    let relay = common::Relay::start_with(&[
        "--threads",
        "1",
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let metrics = relay.metrics.unwrap();
    let expires = common::unix_now() + 3600;
    let mut alice = common::TurnClient::rest(relay.addr, common::SECRET, "alice", expires);
    let mut bob = common::TurnClient::rest(relay.addr, common::SECRET, "bob", expires);
    let a_relay = alice.allocate().xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    let b_relay = bob.allocate().xor(attr::XOR_RELAYED_ADDRESS).unwrap();

    // Sender side: without a permission for Bob's relayed address, Alice's data is dropped.
    alice.send(b_relay, b"no permission at alice");
    // Receiver side: Alice may send, but Bob has no permission for Alice: dropped too.
    assert!(alice.permit(b_relay).is_success());
    alice.send(b_relay, b"no permission at bob");
    // With both permissions, data flows; Bob's first datagram must be this one.
    assert!(bob.permit(a_relay).is_success());
    alice.send(b_relay, b"hello bob");
    let got = bob.recv().expect("a Data indication");
    let msg = Message::decode(&got).unwrap();
    assert_eq!(msg.typ, MessageType::new(Method::DATA, Class::Indication));
    assert_eq!(
        msg.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        a_relay,
        "from Alice's relayed address, as through the kernel"
    );
    assert_eq!(msg.get(attr::DATA).unwrap(), b"hello bob");

    // Channels both ways: ChannelData arrives as ChannelData.
    assert!(alice.bind_channel(0x4000, b_relay).is_success());
    assert!(bob.bind_channel(0x4001, a_relay).is_success());
    alice.raw(&ChannelData::encode(ChannelNumber(0x4000), b"ping", false));
    let got = bob.recv().unwrap();
    let cd = ChannelData::decode(&got).unwrap();
    assert_eq!((cd.channel, cd.data), (ChannelNumber(0x4001), &b"ping"[..]));
    bob.raw(&ChannelData::encode(ChannelNumber(0x4001), b"pong", false));
    let got = alice.recv().unwrap();
    let cd = ChannelData::decode(&got).unwrap();
    assert_eq!((cd.channel, cd.data), (ChannelNumber(0x4000), &b"pong"[..]));

    // Four datagrams took the in-memory path (one of them dropped there by Bob's permission
    // check; the first never passed Alice's).
    assert_eq!(wait_short_circuited(metrics, 4), 4);
}

#[test]
fn uclient_client_to_client_through_one_loop_loses_nothing() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let relay = common::Relay::start_with(&[
        "--threads",
        "1",
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-y"], 50, 4);
    assert!(report.success, "{}", report.text);
    assert_eq!(report.lost, Some(0), "{}", report.text);
    assert_eq!(report.received, Some(200), "{}", report.text);
    // Every message crossed the relay in memory, in both directions of its pair.
    assert!(wait_short_circuited(relay.metrics.unwrap(), 200) >= 200);
}
