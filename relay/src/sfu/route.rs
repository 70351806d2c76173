//! Which session a datagram on the shared socket belongs to, before str0m sees it.
//!
//! The first packets of a session are STUN binding requests whose USERNAME is
//! `<our ufrag>:<their ufrag>` (RFC 8445 §7.2.2); the ufrag names the session. Every later packet
//! (DTLS, SRTP, SCTP, consent checks) comes from an address that a check has already mapped.

/// RFC 8489 §5: the magic cookie in every STUN header.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// RFC 8489 §14.3.
const USERNAME: u16 = 0x0006;

/// Our ufrag from a STUN message's USERNAME, if `packet` is STUN and has one.
pub fn local_ufrag(packet: &[u8]) -> Option<&str> {
    // RFC 7983: STUN starts with 0b00 in the first byte.
    let first = *packet.first()?;
    if first > 3 || packet.get(4..8)? != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let mut attrs = packet.get(20..20 + len)?;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([*attrs.first()?, *attrs.get(1)?]);
        let alen = usize::from(u16::from_be_bytes([*attrs.get(2)?, *attrs.get(3)?]));
        let value = attrs.get(4..4 + alen)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to 4 bytes.
        let padded = (alen + 3) & !3;
        attrs = attrs.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[7; 12]);
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn finds_the_local_ufrag_after_other_attributes() {
        let p = binding_request(&[(0x8029, b"12345678"), (USERNAME, b"abc:remote")]);
        assert_eq!(local_ufrag(&p), Some("abc"));
        let p = binding_request(&[(0x0024, b"\0\0\0\x01"), (USERNAME, b"x1y")]);
        assert_eq!(local_ufrag(&p), Some("x1y"));
    }

    #[test]
    fn non_stun_and_truncated_input_is_none() {
        assert_eq!(local_ufrag(b""), None);
        assert_eq!(local_ufrag(&[0x16; 40]), None); // DTLS
        let p = binding_request(&[(USERNAME, b"abc:remote")]);
        for cut in 0..p.len() {
            assert_eq!(local_ufrag(p.get(..cut).unwrap()), None, "cut at {cut}");
        }
        assert_eq!(local_ufrag(&binding_request(&[])), None);
    }
}
