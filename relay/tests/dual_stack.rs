//! The relay listens on IPv4 and IPv6 at the same port; each client sees its own address family
//! in XOR-MAPPED-ADDRESS (IPv6 listeners are v6-only, so no v4-mapped addresses).
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::message::{
    Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};

fn reflexive(local: &str, server: SocketAddr) -> SocketAddr {
    let socket = UdpSocket::bind(local).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let req = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([4; 12]),
    )
    .finish();
    socket.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let msg = Message::decode(&buf[..n]).unwrap();
    assert_eq!(msg.typ.class, Class::Success);
    msg.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap()
}

#[test]
fn ipv4_and_ipv6_listeners_on_one_port() {
    let port = common::free_port();
    // The harness adds `--listen 127.0.0.1:<its own port>`; add both families on another port.
    let v4 = format!("127.0.0.1:{port}");
    let v6 = format!("[::1]:{port}");
    let _relay =
        common::Relay::start_with(&["--secret", common::SECRET, "--listen", &v4, "--listen", &v6]);
    let from_v4 = reflexive("127.0.0.1:0", v4.parse().unwrap());
    assert!(from_v4.is_ipv4(), "{from_v4}");
    let from_v6 = reflexive("[::1]:0", v6.parse().unwrap());
    assert_eq!(from_v6.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
}
