//! RFC 8656 §9: a permission admits one peer IP. A permission for one peer does not let another
//! peer's datagrams through, in either direction.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::message::Message;

fn peer_at(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

#[test]
fn a_permission_for_one_peer_ip_does_not_admit_another() {
    let relay = common::Relay::start();
    let (permitted, other) = (peer_at("127.0.0.2"), peer_at("127.0.0.3"));
    let (permitted_addr, other_addr) =
        (permitted.local_addr().unwrap(), other.local_addr().unwrap());
    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "p", common::unix_now() + 3600);
    let allocated = client.allocate();
    let relayed = allocated.xor(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert!(client.permit(permitted_addr).is_success());

    // Client -> peers: the unpermitted datagram goes first; the relay sends in order, so once the
    // permitted peer has its datagram, the other one would already have had its own.
    client.send(other_addr, b"to other");
    client.send(permitted_addr, b"to permitted");
    let mut buf = [0u8; 1500];
    let (n, from) = permitted.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to permitted"[..], relayed));
    other.set_nonblocking(true).unwrap();
    assert!(
        other.recv_from(&mut buf).is_err(),
        "a datagram reached the peer without a permission"
    );

    // Peers -> client: the unpermitted peer sends first; the first Data indication the client
    // gets must be the permitted peer's.
    other.send_to(b"from other", relayed).unwrap();
    permitted.send_to(b"from permitted", relayed).unwrap();
    let data = client.recv().expect("a Data indication");
    let msg = Message::decode(&data).unwrap();
    assert_eq!(
        msg.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(),
        permitted_addr,
        "the first datagram relayed came from the peer without a permission"
    );
    assert_eq!(msg.get(attr::DATA).unwrap(), b"from permitted");
}
