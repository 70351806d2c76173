//! STUN message framing (RFC 8489 §5, §14): the header, the attribute list, and a builder that
//! appends MESSAGE-INTEGRITY and FINGERPRINT over exactly the bytes the RFC says they cover.

use std::fmt;

use super::attributes::{self as attr, AttributeType, ErrorCode};
use super::integrity::{self, IntegrityKey};
use super::reader::Reader;

/// RFC 8489 §5: the fixed value in bytes 4..8 of every message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the fixed STUN header.
pub const HEADER_LEN: usize = 20;
/// Largest message we accept or build; a UDP datagram cannot be larger anyway.
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// Attributes beyond this count make a message malformed (bounds work per message).
const MAX_ATTRIBUTES: usize = 40;

/// The 96-bit transaction identifier (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A STUN method (12 bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Method(pub u16);

impl Method {
    /// RFC 8489 §18.2.
    pub const BINDING: Self = Self(0x001);
    /// RFC 8656 §17.
    pub const ALLOCATE: Self = Self(0x003);
    /// RFC 8656 §17.
    pub const REFRESH: Self = Self(0x004);
    /// RFC 8656 §17.
    pub const SEND: Self = Self(0x006);
    /// RFC 8656 §17.
    pub const DATA: Self = Self(0x007);
    /// RFC 8656 §17.
    pub const CREATE_PERMISSION: Self = Self(0x008);
    /// RFC 8656 §17.
    pub const CHANNEL_BIND: Self = Self(0x009);
}

/// The message class (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    /// Expects a response.
    Request,
    /// Fire and forget.
    Indication,
    /// Success response.
    Success,
    /// Error response.
    Error,
}

/// Method and class, as packed into the 14-bit message type field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MessageType {
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
}

impl MessageType {
    /// Builds a type from its parts.
    pub const fn new(method: Method, class: Class) -> Self {
        Self { method, class }
    }

    /// RFC 8489 §5 figure 3: class bits C1 (bit 8) and C0 (bit 4) are interleaved with the method.
    pub fn to_u16(self) -> u16 {
        let m = self.method.0;
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        ((m & 0x0F80) << 2)
            | ((m & 0x0070) << 1)
            | (m & 0x000F)
            | ((c & 0b10) << 7)
            | ((c & 0b01) << 4)
    }

    /// Inverse of [`MessageType::to_u16`]; `None` if the two top bits are not zero.
    pub fn from_u16(t: u16) -> Option<Self> {
        if t & 0xC000 != 0 {
            return None;
        }
        let method = ((t >> 2) & 0x0F80) | ((t >> 1) & 0x0070) | (t & 0x000F);
        let class = match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        };
        Some(Self {
            method: Method(method),
            class,
        })
    }
}

/// Why bytes are not a STUN message. These are always the peer's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or shorter than the header's length field says.
    Truncated,
    /// Top bits, magic cookie or length alignment are wrong: not STUN at all.
    NotStun,
    /// Bytes follow the declared message length.
    TrailingBytes,
    /// An attribute runs past the end of the message.
    BadAttribute,
    /// Too many attributes, or an attribute other than FINGERPRINT after FINGERPRINT.
    BadLayout,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Truncated => "truncated STUN message",
            Self::NotStun => "not a STUN message",
            Self::TrailingBytes => "bytes after the STUN message",
            Self::BadAttribute => "malformed STUN attribute",
            Self::BadLayout => "malformed STUN attribute list",
        };
        f.write_str(s)
    }
}

impl std::error::Error for DecodeError {}

/// One attribute as found on the wire, borrowing the message bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: AttributeType,
    /// Value without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    offset: usize,
}

/// A decoded STUN message borrowing the datagram it came from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// Method and class.
    pub typ: MessageType,
    /// Transaction id.
    pub transaction_id: TransactionId,
    raw: &'a [u8],
    attributes: Vec<RawAttribute<'a>>,
}

/// Whether `bytes` look like a STUN message (first two bits zero and the magic cookie), without
/// parsing it; used to demultiplex STUN from ChannelData (RFC 8656 §12).
pub fn is_stun(bytes: &[u8]) -> bool {
    let mut r = Reader::new(bytes);
    matches!((r.u16(), r.u16(), r.u32()), (Some(t), Some(_), Some(MAGIC_COOKIE)) if t & 0xC000 == 0)
}

impl<'a> Message<'a> {
    /// Parses exactly one message occupying all of `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let typ = r.u16().ok_or(DecodeError::Truncated)?;
        let len = usize::from(r.u16().ok_or(DecodeError::Truncated)?);
        let cookie = r.u32().ok_or(DecodeError::Truncated)?;
        let tid = r.array::<12>().ok_or(DecodeError::Truncated)?;
        let typ = MessageType::from_u16(typ).ok_or(DecodeError::NotStun)?;
        if cookie != MAGIC_COOKIE || len % 4 != 0 {
            return Err(DecodeError::NotStun);
        }
        let body = r.take(len).ok_or(DecodeError::Truncated)?;
        if !r.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        let mut attributes = Vec::new();
        let mut body = Reader::new(body);
        let mut seen_fingerprint = false;
        while !body.is_empty() {
            if seen_fingerprint || attributes.len() >= MAX_ATTRIBUTES {
                return Err(DecodeError::BadLayout);
            }
            let offset = HEADER_LEN + body.position();
            let typ = AttributeType(body.u16().ok_or(DecodeError::BadAttribute)?);
            let vlen = usize::from(body.u16().ok_or(DecodeError::BadAttribute)?);
            let value = body.take(vlen).ok_or(DecodeError::BadAttribute)?;
            body.take(padding(vlen)).ok_or(DecodeError::BadAttribute)?;
            seen_fingerprint = typ == attr::FINGERPRINT;
            attributes.push(RawAttribute { typ, value, offset });
        }
        Ok(Self {
            typ,
            transaction_id: TransactionId(tid),
            raw: bytes,
            attributes,
        })
    }

    /// The raw message bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// All attributes in wire order.
    pub fn attributes(&self) -> &[RawAttribute<'a>] {
        &self.attributes
    }

    /// Attributes that are covered by MESSAGE-INTEGRITY (RFC 8489 §14.5: everything after it
    /// except MESSAGE-INTEGRITY-SHA256 and FINGERPRINT is ignored).
    fn significant(&self) -> impl Iterator<Item = &RawAttribute<'a>> {
        let mut done = false;
        self.attributes.iter().take_while(move |a| {
            let keep = !done;
            if a.typ == attr::MESSAGE_INTEGRITY || a.typ == attr::MESSAGE_INTEGRITY_SHA256 {
                done = true;
            }
            keep
        })
    }

    /// The first value of attribute `typ` that precedes any integrity attribute.
    pub fn get(&self, typ: AttributeType) -> Option<&'a [u8]> {
        self.significant().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Every value of attribute `typ` (CreatePermission may carry several XOR-PEER-ADDRESS).
    pub fn get_all(&self, typ: AttributeType) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.significant()
            .filter(move |a| a.typ == typ)
            .map(|a| a.value)
    }

    /// Comprehension-required attributes (type < 0x8000) not in `known` (RFC 8489 §6.3.1).
    pub fn unknown_required(&self, known: &[AttributeType]) -> Vec<AttributeType> {
        self.significant()
            .map(|a| a.typ)
            .filter(|t| t.comprehension_required() && !known.contains(t))
            .collect()
    }

    /// Decodes an XOR-encoded address attribute.
    pub fn xor_address(
        &self,
        typ: AttributeType,
    ) -> Option<Result<std::net::SocketAddr, attr::AttributeError>> {
        self.get(typ)
            .map(|v| attr::decode_xor_address(v, &self.transaction_id))
    }

    /// Whether a FINGERPRINT attribute is present and last.
    pub fn has_fingerprint(&self) -> bool {
        self.attributes
            .last()
            .is_some_and(|a| a.typ == attr::FINGERPRINT)
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7); `false` when absent or wrong.
    pub fn verify_fingerprint(&self) -> bool {
        let Some(a) = self
            .attributes
            .last()
            .filter(|a| a.typ == attr::FINGERPRINT)
        else {
            return false;
        };
        let Some(prefix) = self.raw.get(..a.offset) else {
            return false;
        };
        a.value == integrity::fingerprint(prefix, a.offset + 8 - HEADER_LEN).to_be_bytes()
    }

    /// Which integrity attribute the message carries, preferring SHA-256 when both are present.
    pub fn integrity_kind(&self) -> Option<integrity::IntegrityKind> {
        let sha256 = self
            .attributes
            .iter()
            .any(|a| a.typ == attr::MESSAGE_INTEGRITY_SHA256);
        let sha1 = self
            .attributes
            .iter()
            .any(|a| a.typ == attr::MESSAGE_INTEGRITY);
        match (sha256, sha1) {
            (true, _) => Some(integrity::IntegrityKind::Sha256),
            (false, true) => Some(integrity::IntegrityKind::Sha1),
            _ => None,
        }
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY (RFC 8489 §14.5, §14.6),
    /// computed over the message up to that attribute with the length field adjusted.
    pub fn verify_integrity(&self, key: &IntegrityKey) -> bool {
        let kind = match self.integrity_kind() {
            Some(k) => k,
            None => return false,
        };
        let typ = match kind {
            integrity::IntegrityKind::Sha1 => attr::MESSAGE_INTEGRITY,
            integrity::IntegrityKind::Sha256 => attr::MESSAGE_INTEGRITY_SHA256,
        };
        let Some(a) = self.attributes.iter().find(|a| a.typ == typ) else {
            return false;
        };
        let Some(prefix) = self.raw.get(..a.offset) else {
            return false;
        };
        let adjusted_len = a.offset + 4 + kind.mac_len() - HEADER_LEN;
        integrity::verify(kind, key, prefix, adjusted_len, a.value)
    }
}

/// Padding needed after a value of `len` bytes (RFC 8489 §14: attributes are 32-bit aligned).
pub const fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Builds one STUN message; attributes are appended in call order.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    transaction_id: TransactionId,
}

impl MessageBuilder {
    /// Starts a message with the given type and transaction id.
    pub fn new(typ: MessageType, transaction_id: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&typ.to_u16().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id.0);
        Self {
            buf,
            transaction_id,
        }
    }

    /// The transaction id this message carries.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    fn set_len(&mut self, len: usize) {
        let bytes = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(field) = self.buf.get_mut(2..4) {
            field.copy_from_slice(&bytes);
        }
    }

    /// Appends a raw attribute; values longer than 65535 bytes are truncated to fit the length field.
    pub fn attr(&mut self, typ: AttributeType, value: &[u8]) -> &mut Self {
        let value = value.get(..usize::from(u16::MAX)).unwrap_or(value);
        self.buf.extend_from_slice(&typ.0.to_be_bytes());
        self.buf
            .extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        self.buf.extend_from_slice(value);
        self.buf
            .extend(std::iter::repeat_n(0, padding(value.len())));
        self.set_len(self.buf.len() - HEADER_LEN);
        self
    }

    /// Appends an XOR-encoded address attribute (XOR-MAPPED/PEER/RELAYED-ADDRESS).
    pub fn xor_address(&mut self, typ: AttributeType, addr: std::net::SocketAddr) -> &mut Self {
        let value = attr::encode_xor_address(addr, &self.transaction_id);
        self.attr(typ, &value)
    }

    /// Appends a plain (non-XOR) MAPPED-ADDRESS, for RFC 3489 clients.
    pub fn mapped_address(&mut self, addr: std::net::SocketAddr) -> &mut Self {
        let value = attr::encode_address(addr);
        self.attr(attr::MAPPED_ADDRESS, &value)
    }

    /// Appends a 32-bit attribute (LIFETIME and similar).
    pub fn u32_attr(&mut self, typ: AttributeType, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    /// Appends ERROR-CODE with the standard reason phrase.
    pub fn error_code(&mut self, code: ErrorCode) -> &mut Self {
        let value = attr::encode_error_code(code);
        self.attr(attr::ERROR_CODE, &value)
    }

    /// Appends UNKNOWN-ATTRIBUTES.
    pub fn unknown_attributes(&mut self, types: &[AttributeType]) -> &mut Self {
        let value: Vec<u8> = types.iter().flat_map(|t| t.0.to_be_bytes()).collect();
        self.attr(attr::UNKNOWN_ATTRIBUTES, &value)
    }

    /// Appends MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 computed with `key`.
    pub fn integrity(&mut self, kind: integrity::IntegrityKind, key: &IntegrityKey) -> &mut Self {
        let typ = match kind {
            integrity::IntegrityKind::Sha1 => attr::MESSAGE_INTEGRITY,
            integrity::IntegrityKind::Sha256 => attr::MESSAGE_INTEGRITY_SHA256,
        };
        let adjusted = self.buf.len() + 4 + kind.mac_len() - HEADER_LEN;
        let mac = integrity::compute(kind, key, &self.buf, adjusted);
        self.attr(typ, &mac)
    }

    /// Appends FINGERPRINT; must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let adjusted = self.buf.len() + 8 - HEADER_LEN;
        let crc = integrity::fingerprint(&self.buf, adjusted);
        self.attr(attr::FINGERPRINT, &crc.to_be_bytes())
    }

    /// The finished message.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for m in [
            Method::BINDING,
            Method::ALLOCATE,
            Method::CHANNEL_BIND,
            Method(0xFFF),
        ] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = MessageType::new(m, c);
                assert_eq!(MessageType::from_u16(t.to_u16()), Some(t));
            }
        }
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Success).to_u16(),
            0x0101
        );
        assert_eq!(
            MessageType::new(Method::ALLOCATE, Class::Error).to_u16(),
            0x0113
        );
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).to_u16(),
            0x0016
        );
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let good = MessageBuilder::new(
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([7; 12]),
        )
        .attr(attr::SOFTWARE, b"abc")
        .fingerprint()
        .finish();
        assert!(Message::decode(&good).unwrap().verify_fingerprint());
        for n in 0..good.len() {
            assert!(Message::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            Message::decode(&longer).unwrap_err(),
            DecodeError::TrailingBytes
        );
        let mut bad_cookie = good.clone();
        bad_cookie[4] ^= 1;
        assert_eq!(
            Message::decode(&bad_cookie).unwrap_err(),
            DecodeError::NotStun
        );
        // Attribute length running past the body.
        let mut bad_attr = good;
        bad_attr[22] = 0xFF;
        assert!(Message::decode(&bad_attr).is_err());
    }

    #[test]
    fn attributes_after_fingerprint_are_rejected() {
        let mut b = MessageBuilder::new(
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([1; 12]),
        );
        b.fingerprint().attr(attr::SOFTWARE, b"x");
        assert_eq!(
            Message::decode(&b.finish()).unwrap_err(),
            DecodeError::BadLayout
        );
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let key = IntegrityKey::short_term("pw");
        let msg = MessageBuilder::new(
            MessageType::new(Method::BINDING, Class::Request),
            TransactionId([1; 12]),
        )
        .integrity(integrity::IntegrityKind::Sha1, &key)
        .attr(attr::USERNAME, b"late")
        .finish();
        let m = Message::decode(&msg).unwrap();
        assert_eq!(m.get(attr::USERNAME), None);
    }
}
