//! SIGTERM drains the relay: new allocations get 508 and new TCP connections are refused, while
//! existing allocations keep refreshing and relaying; the relay exits 0 as soon as the last
//! allocation is released.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::{ChannelData, ChannelNumber};

#[test]
fn sigterm_drains_then_exits_when_the_last_allocation_is_released() {
    let mut relay = common::Relay::start();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
    let allocated = client.allocate();
    assert!(allocated.is_success());
    let relayed = allocated.xor(attr::XOR_RELAYED_ADDRESS).unwrap();

    relay.signal(common::Signal::TERM);
    relay.wait_log("draining", Duration::from_secs(5));
    assert!(relay.is_running(), "still serving while draining");

    let mut late =
        common::TurnClient::rest(relay.addr, common::SECRET, "v", common::unix_now() + 3600);
    assert_eq!(late.allocate().code(), Some(508), "no new allocations");
    assert!(
        TcpStream::connect(relay.addr).is_err(),
        "the TCP listener is closed"
    );

    // The call in progress continues.
    assert!(client.refresh(600).is_success());
    assert!(client.permit(peer_addr).is_success());
    let mut buf = [0u8; 1500];
    client.send(peer_addr, b"still here");
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"still here"[..], relayed));
    assert!(client.bind_channel(0x4000, peer_addr).is_success());
    client.raw(&ChannelData::encode(
        ChannelNumber(0x4000),
        b"channel",
        false,
    ));
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"channel"[..], relayed));

    assert!(client.refresh(0).is_success());
    assert_eq!(
        relay.wait_exit(Duration::from_secs(10)),
        Some(true),
        "log:\n{}",
        relay.log_text()
    );
    assert!(relay.log_text().contains("drain complete"));
}
