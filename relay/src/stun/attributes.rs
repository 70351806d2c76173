//! Attribute types and typed value codecs (RFC 8489 §14, RFC 8656 §18).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::message::{MAGIC_COOKIE, TransactionId};
use super::reader::Reader;

/// A STUN attribute type.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttributeType(pub u16);

impl AttributeType {
    /// RFC 8489 §14: types below 0x8000 must be understood or the request rejected with 420.
    pub const fn comprehension_required(self) -> bool {
        self.0 < 0x8000
    }
}

impl fmt::Debug for AttributeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttributeType({:#06x})", self.0)
    }
}

/// RFC 8489 §14.1.
pub const MAPPED_ADDRESS: AttributeType = AttributeType(0x0001);
/// RFC 8489 §14.3.
pub const USERNAME: AttributeType = AttributeType(0x0006);
/// RFC 8489 §14.5.
pub const MESSAGE_INTEGRITY: AttributeType = AttributeType(0x0008);
/// RFC 8489 §14.8.
pub const ERROR_CODE: AttributeType = AttributeType(0x0009);
/// RFC 8489 §14.13.
pub const UNKNOWN_ATTRIBUTES: AttributeType = AttributeType(0x000A);
/// RFC 8656 §18.1.
pub const CHANNEL_NUMBER: AttributeType = AttributeType(0x000C);
/// RFC 8656 §18.2.
pub const LIFETIME: AttributeType = AttributeType(0x000D);
/// RFC 8656 §18.3.
pub const XOR_PEER_ADDRESS: AttributeType = AttributeType(0x0012);
/// RFC 8656 §18.4.
pub const DATA: AttributeType = AttributeType(0x0013);
/// RFC 8489 §14.9.
pub const REALM: AttributeType = AttributeType(0x0014);
/// RFC 8489 §14.10.
pub const NONCE: AttributeType = AttributeType(0x0015);
/// RFC 8656 §18.5.
pub const XOR_RELAYED_ADDRESS: AttributeType = AttributeType(0x0016);
/// RFC 8656 §18.6.
pub const REQUESTED_ADDRESS_FAMILY: AttributeType = AttributeType(0x0017);
/// RFC 8656 §18.7.
pub const EVEN_PORT: AttributeType = AttributeType(0x0018);
/// RFC 8656 §18.8.
pub const REQUESTED_TRANSPORT: AttributeType = AttributeType(0x0019);
/// RFC 8656 §18.9.
pub const DONT_FRAGMENT: AttributeType = AttributeType(0x001A);
/// RFC 8489 §14.6.
pub const MESSAGE_INTEGRITY_SHA256: AttributeType = AttributeType(0x001C);
/// RFC 8489 §14.11.
pub const PASSWORD_ALGORITHM: AttributeType = AttributeType(0x001D);
/// RFC 8489 §14.4.
pub const USERHASH: AttributeType = AttributeType(0x001E);
/// RFC 8489 §14.2.
pub const XOR_MAPPED_ADDRESS: AttributeType = AttributeType(0x0020);
/// RFC 8656 §18.10.
pub const RESERVATION_TOKEN: AttributeType = AttributeType(0x0022);
/// RFC 8445 §16.1 (ICE; seen in Binding requests).
pub const PRIORITY: AttributeType = AttributeType(0x0024);
/// RFC 8445 §16.1.
pub const USE_CANDIDATE: AttributeType = AttributeType(0x0025);
/// RFC 8656 §18.11 (comprehension-optional).
pub const ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType(0x8000);
/// RFC 8489 §14.14.
pub const SOFTWARE: AttributeType = AttributeType(0x8022);
/// RFC 8489 §14.7.
pub const FINGERPRINT: AttributeType = AttributeType(0x8028);
/// RFC 8445 §16.1.
pub const ICE_CONTROLLED: AttributeType = AttributeType(0x8029);
/// RFC 8445 §16.1.
pub const ICE_CONTROLLING: AttributeType = AttributeType(0x802A);

/// A malformed attribute value: the peer's fault, answered with 400 Bad Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttributeError(pub AttributeType);

impl fmt::Display for AttributeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed attribute {:?}", self.0)
    }
}

impl std::error::Error for AttributeError {}

/// A STUN/TURN error code (RFC 8489 §14.8, RFC 8656 §19).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// RFC 8489: malformed request.
    pub const BAD_REQUEST: Self = Self(400);
    /// RFC 8489: missing or wrong credentials.
    pub const UNAUTHENTICATED: Self = Self(401);
    /// RFC 8656: peer address not allowed by policy.
    pub const FORBIDDEN: Self = Self(403);
    /// RFC 8489: comprehension-required attribute not understood.
    pub const UNKNOWN_ATTRIBUTE: Self = Self(420);
    /// RFC 8656: the 5-tuple's allocation state does not fit the request.
    pub const ALLOCATION_MISMATCH: Self = Self(437);
    /// RFC 8489: the NONCE is no longer valid.
    pub const STALE_NONCE: Self = Self(438);
    /// RFC 8656: requested address family not supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: Self = Self(440);
    /// RFC 8656: credentials differ from those that created the allocation.
    pub const WRONG_CREDENTIALS: Self = Self(441);
    /// RFC 8656: only UDP relaying is offered.
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: Self = Self(442);
    /// RFC 8656: peer address family differs from the relayed address family.
    pub const PEER_ADDRESS_FAMILY_MISMATCH: Self = Self(443);
    /// RFC 8656: per-user or total allocation quota reached.
    pub const ALLOCATION_QUOTA_REACHED: Self = Self(486);
    /// RFC 8489: our fault.
    pub const SERVER_ERROR: Self = Self(500);
    /// RFC 8656: no relay port (or reserved port) available.
    pub const INSUFFICIENT_CAPACITY: Self = Self(508);

    /// The reason phrase the RFCs suggest.
    pub const fn reason(self) -> &'static str {
        match self.0 {
            400 => "Bad Request",
            401 => "Unauthenticated",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "Error",
        }
    }
}

/// ERROR-CODE value: 21 reserved bits, class (hundreds), number, then the reason phrase.
pub fn encode_error_code(code: ErrorCode) -> Vec<u8> {
    encode_error_code_with_reason(code, code.reason())
}

/// ERROR-CODE value with a reason phrase of our own (RFC 8489 §14.8: the phrase is free text
/// for humans, at most 127 characters).
pub fn encode_error_code_with_reason(code: ErrorCode, reason: &str) -> Vec<u8> {
    let mut v = vec![
        0,
        0,
        u8::try_from(code.0 / 100).unwrap_or(0),
        u8::try_from(code.0 % 100).unwrap_or(0),
    ];
    v.extend_from_slice(reason.as_bytes());
    v
}

/// Decodes ERROR-CODE into the numeric code (the phrase is informational).
pub fn decode_error_code(v: &[u8]) -> Result<ErrorCode, AttributeError> {
    let mut r = Reader::new(v);
    let (_, class, number) = (r.u16(), r.u8(), r.u8());
    match (class, number) {
        (Some(c), Some(n)) if (3..=6).contains(&(c & 0x07)) && n < 100 => {
            Ok(ErrorCode(u16::from(c & 0x07) * 100 + u16::from(n)))
        }
        _ => Err(AttributeError(ERROR_CODE)),
    }
}

/// RFC 8489 §14.1 address families.
const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Encodes a plain MAPPED-ADDRESS value.
pub fn encode_address(addr: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, FAMILY_V4]);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, FAMILY_V6]);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

/// Decodes a plain MAPPED-ADDRESS value.
pub fn decode_address(v: &[u8], typ: AttributeType) -> Result<SocketAddr, AttributeError> {
    let err = AttributeError(typ);
    let mut r = Reader::new(v);
    let _reserved = r.u8().ok_or(err)?;
    let family = r.u8().ok_or(err)?;
    let port = r.u16().ok_or(err)?;
    let ip = match family {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok_or(err)?)),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok_or(err)?)),
        _ => return Err(err),
    };
    if !r.is_empty() {
        return Err(err);
    }
    Ok(SocketAddr::new(ip, port))
}

/// The 16-byte XOR mask: magic cookie then transaction id (RFC 8489 §14.2).
fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, rest) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    rest.copy_from_slice(&tid.0);
    mask
}

fn xor_ip(ip: IpAddr, tid: &TransactionId) -> IpAddr {
    let mask = xor_mask(tid);
    match ip {
        IpAddr::V4(ip) => {
            let mut o = ip.octets();
            o.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            o.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

/// The port is XOR'ed with the cookie's top 16 bits (RFC 8489 §14.2).
const PORT_MASK: u16 = (MAGIC_COOKIE >> 16) as u16;

/// Encodes an XOR-MAPPED/PEER/RELAYED-ADDRESS value.
pub fn encode_xor_address(addr: SocketAddr, tid: &TransactionId) -> Vec<u8> {
    encode_address(SocketAddr::new(
        xor_ip(addr.ip(), tid),
        addr.port() ^ PORT_MASK,
    ))
}

/// Decodes an XOR-MAPPED/PEER/RELAYED-ADDRESS value.
pub fn decode_xor_address(v: &[u8], tid: &TransactionId) -> Result<SocketAddr, AttributeError> {
    let a = decode_address(v, XOR_PEER_ADDRESS)?;
    Ok(SocketAddr::new(xor_ip(a.ip(), tid), a.port() ^ PORT_MASK))
}

/// Decodes a 4-byte attribute (LIFETIME).
pub fn decode_u32(v: &[u8], typ: AttributeType) -> Result<u32, AttributeError> {
    let arr: [u8; 4] = v.try_into().map_err(|_| AttributeError(typ))?;
    Ok(u32::from_be_bytes(arr))
}

/// RFC 8656 §18.8: protocol number 17 is UDP.
pub const TRANSPORT_UDP: u8 = 17;

/// REQUESTED-TRANSPORT: the IP protocol number in the first byte, then 3 reserved bytes.
pub fn decode_requested_transport(v: &[u8]) -> Result<u8, AttributeError> {
    match v {
        [proto, _, _, _] => Ok(*proto),
        _ => Err(AttributeError(REQUESTED_TRANSPORT)),
    }
}

/// REQUESTED-TRANSPORT value for `proto`.
pub fn encode_requested_transport(proto: u8) -> [u8; 4] {
    [proto, 0, 0, 0]
}

/// EVEN-PORT: whether the R bit (reserve the next port too) is set.
pub fn decode_even_port(v: &[u8]) -> Result<bool, AttributeError> {
    match v {
        [flags] => Ok(flags & 0x80 != 0),
        _ => Err(AttributeError(EVEN_PORT)),
    }
}

/// RFC 8656 §18.6 family values for REQUESTED-ADDRESS-FAMILY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl AddressFamily {
    /// Family of an address.
    pub fn of(addr: SocketAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

/// REQUESTED-ADDRESS-FAMILY: family byte then 3 reserved bytes.
pub fn decode_address_family(
    v: &[u8],
    typ: AttributeType,
) -> Result<AddressFamily, AttributeError> {
    match v {
        [FAMILY_V4, _, _, _] => Ok(AddressFamily::V4),
        [FAMILY_V6, _, _, _] => Ok(AddressFamily::V6),
        _ => Err(AttributeError(typ)),
    }
}

/// CHANNEL-NUMBER: the number then 2 reserved bytes.
pub fn decode_channel_number(v: &[u8]) -> Result<u16, AttributeError> {
    match v {
        [a, b, _, _] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(AttributeError(CHANNEL_NUMBER)),
    }
}

/// CHANNEL-NUMBER value.
pub fn encode_channel_number(n: u16) -> [u8; 4] {
    let [a, b] = n.to_be_bytes();
    [a, b, 0, 0]
}

/// RESERVATION-TOKEN: exactly 8 opaque bytes.
pub fn decode_reservation_token(v: &[u8]) -> Result<[u8; 8], AttributeError> {
    v.try_into().map_err(|_| AttributeError(RESERVATION_TOKEN))
}

/// UNKNOWN-ATTRIBUTES: a list of 16-bit types.
pub fn decode_unknown_attributes(v: &[u8]) -> Result<Vec<AttributeType>, AttributeError> {
    if !v.len().is_multiple_of(2) {
        return Err(AttributeError(UNKNOWN_ATTRIBUTES));
    }
    let mut r = Reader::new(v);
    let mut out = Vec::with_capacity(v.len() / 2);
    while let Some(t) = r.u16() {
        out.push(AttributeType(t));
    }
    Ok(out)
}

/// RFC 8489 §14.3/§14.9/§14.10: USERNAME < 513 bytes, REALM and NONCE < 128 characters (we
/// bound bytes at 763 per the RFC's note on UTF-8). Returns the value as UTF-8.
pub fn decode_text(v: &[u8], typ: AttributeType) -> Result<&str, AttributeError> {
    let max = if typ == USERNAME { 512 } else { 763 };
    if v.len() > max {
        return Err(AttributeError(typ));
    }
    std::str::from_utf8(v).map_err(|_| AttributeError(typ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests use fixed, known-good inputs")]
mod tests {
    use super::*;

    #[test]
    fn error_code_round_trips() {
        for code in [
            ErrorCode::BAD_REQUEST,
            ErrorCode::STALE_NONCE,
            ErrorCode::INSUFFICIENT_CAPACITY,
        ] {
            assert_eq!(decode_error_code(&encode_error_code(code)).unwrap(), code);
        }
        assert!(decode_error_code(&[0, 0, 9, 0]).is_err());
        assert!(decode_error_code(&[0, 0]).is_err());
    }

    #[test]
    fn xor_addresses_round_trip_both_families() {
        let tid = TransactionId([0xAB; 12]);
        for a in ["192.0.2.1:32853", "[2001:db8::1]:3478"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(
                decode_xor_address(&encode_xor_address(a, &tid), &tid).unwrap(),
                a
            );
        }
        assert!(decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid).is_err());
        assert!(decode_xor_address(&[0, 1, 0, 0, 1, 2, 3], &tid).is_err());
    }

    #[test]
    fn small_attributes() {
        assert_eq!(decode_requested_transport(&[17, 0, 0, 0]).unwrap(), 17);
        assert!(decode_requested_transport(&[17]).is_err());
        assert!(decode_even_port(&[0x80]).unwrap());
        assert!(!decode_even_port(&[0]).unwrap());
        assert!(decode_even_port(&[]).is_err());
        assert_eq!(
            decode_channel_number(&encode_channel_number(0x4001)).unwrap(),
            0x4001
        );
        assert_eq!(
            decode_unknown_attributes(&[0, 1, 0x80, 0]).unwrap(),
            vec![AttributeType(1), AttributeType(0x8000)]
        );
        assert!(decode_unknown_attributes(&[0]).is_err());
        assert!(decode_text(&[0xFF], USERNAME).is_err());
        assert!(decode_text(&[b'a'; 600], USERNAME).is_err());
    }
}
