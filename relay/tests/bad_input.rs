//! Truncated, garbage and oversized datagrams (and a garbage TCP stream) do not disturb the
//! relay: a normal allocation and relaying still work afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::message::{Class, MessageBuilder, MessageType, Method, TransactionId};

#[test]
fn garbage_then_a_normal_allocation_works() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let valid = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([3; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .attr(attr::USERNAME, b"1:x")
    .fingerprint()
    .finish();
    let mut seed = 0x9E37_79B9_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sent = 0;
    for i in 0..3000 {
        let datagram: Vec<u8> = match i % 6 {
            0 => valid[..(rand() as usize % valid.len())].to_vec(),
            1 => (0..(rand() % 200)).map(|_| rand() as u8).collect(),
            2 => {
                let mut v = valid.clone();
                let at = rand() as usize % v.len();
                v[at] ^= 1 << (rand() % 8);
                v
            }
            3 => vec![0x40, 0x00, 0xFF, 0xFF, 1, 2, 3],
            4 => {
                // A header claiming more than the datagram holds.
                let mut v = valid.clone();
                v[2] = 0xFF;
                v
            }
            _ => vec![0u8; 65_507],
        };
        if attacker.send_to(&datagram, relay.addr).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 2900);

    // Garbage on TCP gets the connection closed, not the server.
    let mut tcp = std::net::TcpStream::connect(relay.addr).unwrap();
    let _ = tcp.write_all(b"\xFF\xFF\xFF\xFFGET / HTTP/1.1\r\n\r\n");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(std::io::Read::read(&mut tcp, &mut buf), Ok(0) | Err(_)),
        "connection closed"
    );

    let (_peer, port) = common::echo_peer();
    let mut client = common::TurnClient::rest(
        relay.addr,
        common::SECRET,
        "after-garbage",
        common::unix_now() + 3600,
    );
    let reply = client.allocate();
    assert!(
        reply.is_success(),
        "allocation after garbage: {:?}",
        reply.code()
    );
    let peer: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(client.permit(peer).is_success());
    client.send(peer, b"still alive");
    let Some(echoed) = client.recv() else {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        panic!(
            "no Data indication; metrics:\n{}",
            common::http_get(relay.metrics.unwrap(), "/metrics").1
        );
    };
    let msg = switchboard_relay::stun::Message::decode(&echoed).unwrap();
    assert_eq!(msg.get(attr::DATA).unwrap(), b"still alive");
    assert!(relay.log_text().contains("relay ready"));
}
