//! TURN over TCP reassembles messages split across reads and splits messages coalesced into one
//! read (RFC 8656 §12.5 framing), and closing the connection ends its allocation.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::channel_data::{Frame, next_frame};
use switchboard_relay::stun::message::{
    Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use switchboard_relay::stun::{IntegrityKey, IntegrityKind};
use switchboard_relay::turn::auth::rest_password;

fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some(frame) = next_frame(buf).unwrap() {
            let n = match frame {
                Frame::Stun(n) => n,
                Frame::ChannelData { consumed, .. } => consumed,
            };
            return buf.drain(..n).collect();
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn request(
    method: Method,
    tid: u8,
    auth: Option<(&str, &str, &str)>,
    f: impl Fn(&mut MessageBuilder),
) -> Vec<u8> {
    let mut b = MessageBuilder::new(
        MessageType::new(method, Class::Request),
        TransactionId([tid; 12]),
    );
    f(&mut b);
    if let Some((username, password, nonce)) = auth {
        b.attr(attr::USERNAME, username.as_bytes())
            .attr(attr::REALM, common::REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(
                IntegrityKind::Sha1,
                &IntegrityKey::long_term(username, common::REALM, password),
            );
    }
    b.finish()
}

#[test]
fn split_and_coalesced_messages_over_tcp() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let mut stream = TcpStream::connect(relay.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();

    // An unauthenticated Allocate written one byte at a time.
    let transport = |b: &mut MessageBuilder| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    for byte in request(Method::ALLOCATE, 1, None, transport) {
        stream.write_all(&[byte]).unwrap();
    }
    let challenge = read_frame(&mut stream, &mut buf);
    let challenge = Message::decode(&challenge).unwrap();
    let nonce = String::from_utf8(challenge.get(attr::NONCE).unwrap().to_vec()).unwrap();

    // Binding + authenticated Allocate coalesced into one write: two responses, in order.
    let username = format!("{}:tcp", common::unix_now() + 3600);
    let password = rest_password(common::SECRET, &username);
    let mut both = request(Method::BINDING, 2, None, |_| {});
    both.extend(request(
        Method::ALLOCATE,
        3,
        Some((&username, &password, &nonce)),
        transport,
    ));
    stream.write_all(&both).unwrap();
    let first = read_frame(&mut stream, &mut buf);
    let second = read_frame(&mut stream, &mut buf);
    let (first, second) = (
        Message::decode(&first).unwrap(),
        Message::decode(&second).unwrap(),
    );
    assert_eq!(first.transaction_id, TransactionId([2; 12]));
    assert_eq!(first.typ.class, Class::Success);
    assert_eq!(second.transaction_id, TransactionId([3; 12]));
    assert_eq!(second.typ.class, Class::Success, "allocate over TCP");

    // Closing the connection ends the allocation.
    let addr = relay.metrics.unwrap();
    let gauge = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("switchboard_relay_allocations "))
            .map(str::to_owned)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&common::http_get(addr, "/metrics").1).as_deref()
        != Some("switchboard_relay_allocations 1")
    {
        assert!(Instant::now() < deadline, "allocation never showed up");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&common::http_get(addr, "/metrics").1).as_deref()
        != Some("switchboard_relay_allocations 0")
    {
        assert!(
            Instant::now() < deadline,
            "allocation outlived its TCP connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
