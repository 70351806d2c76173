//! The DataChannel envelope: who a message is for (client to relay) or from (relay to client).
//!
//! On a channel opened with protocol [`ENVELOPE_PROTOCOL`], every message starts with an ASCII
//! header line: `<peer>\n<payload>`. From a client, `<peer>` is the addressee's peer id or `*`
//! for every other peer of the room; the relay rewrites it to the sender's peer id before
//! delivery. Peer ids are `[A-Za-z0-9_-]{1,64}`, so the header never contains `\n` and a text
//! message stays valid UTF-8. The payload is passed through byte for byte.

use switchboard_proto::PeerId;

/// `RTCDataChannelInit.protocol` that marks an enveloped channel.
pub const ENVELOPE_PROTOCOL: &str = "switchboard-envelope";

/// Longest header: a 64-byte peer id and the newline.
pub const MAX_HEADER_BYTES: usize = 65;

/// The addressee of an incoming enveloped message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// Every other peer of the room.
    All,
    /// One peer.
    Peer(PeerId),
}

/// Splits an incoming enveloped message; `None` if it has no valid header.
pub fn parse(message: &[u8]) -> Option<(To, &[u8])> {
    let head_len = message
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')?;
    let head = message.get(..head_len)?;
    let payload = message.get(head_len + 1..)?;
    let head = std::str::from_utf8(head).ok()?;
    let to = if head == "*" {
        To::All
    } else {
        To::Peer(PeerId::parse(head)?)
    };
    Some((to, payload))
}

/// The message delivered to an addressee: the sender's id, a newline, the payload.
pub fn encode(from: &PeerId, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(from.as_str().len() + 1 + payload.len());
    out.extend_from_slice(from.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_addressee_and_keeps_payload_bytes() {
        assert_eq!(parse(b"*\nhi"), Some((To::All, &b"hi"[..])));
        let (to, payload) = parse(b"bob\n\x00\n\xff").unwrap();
        assert_eq!(to, To::Peer(PeerId::parse("bob").unwrap()));
        assert_eq!(payload, b"\x00\n\xff");
        assert_eq!(parse(b"*\n"), Some((To::All, &b""[..])));
    }

    #[test]
    fn refuses_bad_headers() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"no newline"), None);
        assert_eq!(parse(b"\npayload"), None);
        assert_eq!(parse(b"a b\npayload"), None);
        let long = format!("{}\nx", "a".repeat(65));
        assert_eq!(parse(long.as_bytes()), None);
        let max = format!("{}\nx", "a".repeat(64));
        assert!(parse(max.as_bytes()).is_some());
    }

    #[test]
    fn encode_round_trips() {
        let from = PeerId::parse("alice").unwrap();
        let m = encode(&from, b"payload");
        assert_eq!(m, b"alice\npayload");
        assert_eq!(parse(&m), Some((To::Peer(from), &b"payload"[..])));
    }
}
