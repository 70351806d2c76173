//! RFC 5769 test vectors: decoding, MESSAGE-INTEGRITY, FINGERPRINT and XOR-MAPPED-ADDRESS.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "fixed RFC test vectors"
)]

use std::net::SocketAddr;

use super::attributes::{self as attr};
use super::integrity::{IntegrityKey, IntegrityKind};
use super::message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.1 Sample Request (note the 0x20 padding bytes, which receivers must ignore).
fn sample_request() -> Vec<u8> {
    hex("00010058 2112a442 b7e7a701 bc34d686 fa87dfae
         80220010 5354554e 20746573 7420636c 69656e74
         00240004 6e0001ff
         80290008 932ff9b1 51263b36
         00060009 6576746a 3a683676 59202020
         00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
         80280004 e57a3bcf")
}

/// RFC 5769 §2.2 Sample IPv4 Response.
fn sample_ipv4_response() -> Vec<u8> {
    hex("0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
         8022000b 74657374 20766563 746f7220
         00200008 0001a147 e112a643
         00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
         80280004 c07d4c96")
}

/// RFC 5769 §2.3 Sample IPv6 Response.
fn sample_ipv6_response() -> Vec<u8> {
    hex("01010048 2112a442 b7e7a701 bc34d686 fa87dfae
         8022000b 74657374 20766563 746f7220
         00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
         00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
         80280004 c8fb0b4c")
}

/// RFC 5769 §2.4 Sample Request with Long-Term Authentication.
fn sample_long_term_request() -> Vec<u8> {
    hex("00010060 2112a442 78ad3433 c6ad72c0 29da412e
         00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
         0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
         0014000b 6578616d 706c652e 6f726700
         00080014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666")
}

#[test]
fn sample_request_verifies() {
    let bytes = sample_request();
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.typ, MessageType::new(Method::BINDING, Class::Request));
    assert_eq!(m.get(attr::SOFTWARE).unwrap(), b"STUN test client");
    assert_eq!(m.get(attr::USERNAME).unwrap(), b"evtj:h6vY");
    assert_eq!(m.get(attr::PRIORITY).unwrap(), [0x6e, 0x00, 0x01, 0xff]);
    assert!(m.verify_fingerprint());
    assert!(m.verify_integrity(&IntegrityKey::short_term(PASSWORD)));
    assert!(!m.verify_integrity(&IntegrityKey::short_term("wrong")));
}

#[test]
fn sample_request_is_rebuilt_byte_for_byte_but_padding() {
    let bytes = sample_request();
    let m = Message::decode(&bytes).unwrap();
    let built = MessageBuilder::new(m.typ, m.transaction_id)
        .attr(attr::SOFTWARE, b"STUN test client")
        .attr(attr::PRIORITY, &[0x6e, 0x00, 0x01, 0xff])
        .attr(
            attr::ICE_CONTROLLED,
            &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36],
        )
        .attr(attr::USERNAME, b"evtj:h6vY")
        .integrity(IntegrityKind::Sha1, &IntegrityKey::short_term(PASSWORD))
        .fingerprint()
        .finish();
    assert_eq!(built.len(), bytes.len());
    // We pad with zeros where the vector pads with spaces; the MAC covers padding, so only the
    // layout up to the padding is byte-identical. Our own output must verify.
    assert_eq!(built[..73], bytes[..73]);
    let ours = Message::decode(&built).unwrap();
    assert!(ours.verify_integrity(&IntegrityKey::short_term(PASSWORD)));
    assert!(ours.verify_fingerprint());
}

#[test]
fn sample_ipv4_response_verifies_and_rebuilds() {
    let bytes = sample_ipv4_response();
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.typ, MessageType::new(Method::BINDING, Class::Success));
    let expected: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        expected
    );
    assert!(m.verify_integrity(&IntegrityKey::short_term(PASSWORD)));
    assert!(m.verify_fingerprint());
    // The XOR-MAPPED-ADDRESS attribute we build is byte-identical to the vector's.
    let built = MessageBuilder::new(m.typ, m.transaction_id)
        .xor_address(attr::XOR_MAPPED_ADDRESS, expected)
        .finish();
    assert_eq!(built[20..], bytes[36..48]);
}

#[test]
fn sample_ipv6_response_verifies_and_rebuilds() {
    let bytes = sample_ipv6_response();
    let m = Message::decode(&bytes).unwrap();
    let expected: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap(),
        expected
    );
    assert!(m.verify_integrity(&IntegrityKey::short_term(PASSWORD)));
    assert!(m.verify_fingerprint());
    let built = MessageBuilder::new(m.typ, m.transaction_id)
        .xor_address(attr::XOR_MAPPED_ADDRESS, expected)
        .finish();
    assert_eq!(built[20..], bytes[36..60]);
}

#[test]
fn sample_long_term_request_verifies() {
    let bytes = sample_long_term_request();
    let m = Message::decode(&bytes).unwrap();
    let username = attr::decode_text(m.get(attr::USERNAME).unwrap(), attr::USERNAME).unwrap();
    assert_eq!(username, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    assert_eq!(m.get(attr::NONCE).unwrap(), b"f//499k954d6OL34oL9FSTvy64sA");
    assert_eq!(m.get(attr::REALM).unwrap(), b"example.org");
    // "The\u{00AD}M\u{00AA}tr\u{2168}" after SASLprep is "TheMatrIX" (RFC 5769 §2.4).
    let key = IntegrityKey::long_term(username, "example.org", "TheMatrIX");
    assert!(m.verify_integrity(&key));
    assert!(!m.has_fingerprint());
    assert!(!m.verify_integrity(&IntegrityKey::long_term(
        username,
        "example.org",
        "thematrix"
    )));
}

#[test]
fn sha256_integrity_round_trips() {
    let key = IntegrityKey::long_term("u", "r", "p");
    let built = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([3; 12]),
    )
    .attr(attr::USERNAME, b"u")
    .integrity(IntegrityKind::Sha1, &key)
    .integrity(IntegrityKind::Sha256, &key)
    .fingerprint()
    .finish();
    let m = Message::decode(&built).unwrap();
    assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
    assert!(m.verify_integrity(&key));
    assert!(m.verify_fingerprint());
}

#[test]
fn every_prefix_and_bit_flip_of_the_vectors_is_handled() {
    for v in [
        sample_request(),
        sample_ipv4_response(),
        sample_ipv6_response(),
        sample_long_term_request(),
    ] {
        for n in 0..v.len() {
            let _ = Message::decode(&v[..n]);
        }
        for i in 0..v.len() {
            let mut w = v.clone();
            w[i] ^= 0xFF;
            if let Ok(m) = Message::decode(&w) {
                let _ = m.verify_fingerprint();
                let _ = m.verify_integrity(&IntegrityKey::short_term(PASSWORD));
                let _ = m.xor_address(attr::XOR_MAPPED_ADDRESS);
            }
        }
    }
}
