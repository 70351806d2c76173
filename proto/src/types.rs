//! Newtypes for the protocol's ids and units, one name per concept.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Milliseconds since the Unix epoch, as handed in by the caller's clock.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant plus `ms` milliseconds, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whole seconds since the Unix epoch.
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// From whole seconds since the Unix epoch (TURN REST expiries are seconds).
    pub const fn from_secs(s: u64) -> Millis {
        Millis(s.saturating_mul(1000))
    }

    /// This instant plus `d`, saturating (sub-millisecond parts are dropped).
    pub fn saturating_add(self, d: std::time::Duration) -> Millis {
        self.plus(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn duration_since(self, earlier: Millis) -> std::time::Duration {
        std::time::Duration::from_millis(self.since(earlier))
    }
}

/// A per-recipient frame sequence number (`seq` on the wire).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

/// A peer's identity inside a room; stable across resumes. Shared, not copied: a room names a
/// peer in many places (its queue entries' origins, acks, outputs), and a clone is a count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(Arc<str>);

impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| PeerId(Arc::from(s)))
    }
}

impl std::borrow::Borrow<str> for PeerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PeerId {
    /// Length of the random part of a generated peer id, in bytes.
    pub const RANDOM_BYTES: usize = 8;

    /// A peer id made from caller-supplied random bytes (lower-case hex).
    pub fn from_random(bytes: [u8; Self::RANDOM_BYTES]) -> PeerId {
        PeerId(Arc::from(hex(&bytes)))
    }

    /// Accepts a peer id as it appears on the wire; `None` if it cannot be one.
    pub fn parse(s: &str) -> Option<PeerId> {
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(is_name_byte);
        ok.then(|| PeerId(Arc::from(s)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A peer's trace id: 16 lower-case hex characters, random per fresh join,
/// kept across resumes; logged with every event about the peer and carried in
/// its TURN username so one trace spans browser, room and relay.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TraceId(String);

impl TraceId {
    /// Length of the random part, in bytes.
    pub const RANDOM_BYTES: usize = 8;

    /// A trace id made from caller-supplied random bytes.
    pub fn from_random(bytes: [u8; Self::RANDOM_BYTES]) -> TraceId {
        TraceId(hex(&bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The stable user behind a peer: `[A-Za-z0-9_-]{1,64}` (a JWT `sub`, or a
/// per-client id the router derives); the relay's quota key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Accepts a user id that matches the grammar; `None` otherwise.
    pub fn parse(s: &str) -> Option<UserId> {
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(is_name_byte);
        ok.then(|| UserId(s.to_owned()))
    }

    /// A peer id is always a valid user id (same grammar).
    pub fn of_peer(peer: &PeerId) -> UserId {
        UserId(peer.as_str().to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room name: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// Validates a room name from a URL path segment.
    pub fn parse(s: &str) -> Option<RoomName> {
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(is_name_byte);
        ok.then(|| RoomName(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret a client presents to resume its session after a dropped socket.
///
/// Only its SHA-256 digest ([`ResumeToken::digest`]) is kept by the room.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken(String);

impl ResumeToken {
    /// Length of the random part of a generated token, in bytes.
    pub const RANDOM_BYTES: usize = 16;

    /// A token made from caller-supplied random bytes.
    pub fn from_random(bytes: [u8; Self::RANDOM_BYTES]) -> ResumeToken {
        ResumeToken(hex(&bytes))
    }

    /// Wraps a token presented by a client (any text; it is only ever hashed).
    pub fn presented(s: &str) -> ResumeToken {
        ResumeToken(s.to_owned())
    }

    /// The token as text, for the `welcome` frame only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the token: what the room stores and compares.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret itself, not even in debug output.
        f.write_str("ResumeToken(..)")
    }
}

/// One WebSocket connection of a peer. A resumed peer gets a new `ConnId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The id as the tag string the Worker attaches to the socket.
    pub fn tag(self) -> String {
        format!("c{:016x}", self.0)
    }

    /// Parses a tag produced by [`ConnId::tag`].
    pub fn from_tag(s: &str) -> Option<ConnId> {
        let hex = s.strip_prefix('c')?;
        u64::from_str_radix(hex, 16).ok().map(ConnId)
    }
}

/// Application metadata of a peer: a JSON value of at most [`Meta::MAX_BYTES`].
#[derive(Debug, Clone)]
pub struct Meta(Box<RawValue>);

impl PartialEq for Meta {
    fn eq(&self, other: &Meta) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Meta {
    /// Largest accepted serialized meta.
    pub const MAX_BYTES: usize = 1024;

    /// Validates client-supplied JSON text as meta.
    pub fn parse(json: &str) -> Result<Meta, MetaError> {
        if json.len() > Self::MAX_BYTES {
            return Err(MetaError::TooLarge);
        }
        let raw: Box<RawValue> = serde_json::from_str(json).map_err(|_| MetaError::NotJson)?;
        Ok(Meta(raw))
    }

    /// Builds meta from a JSON value, enforcing the size limit.
    pub fn from_value(value: &serde_json::Value) -> Result<Meta, MetaError> {
        let text = serde_json::to_string(value).map_err(|_| MetaError::NotJson)?;
        Meta::parse(&text)
    }

    /// The meta used when a client gives none: `{}`.
    pub fn empty() -> Meta {
        #[allow(clippy::expect_used)] // a constant that is valid JSON
        Meta(RawValue::from_string("{}".to_owned()).expect("'{}' is JSON"))
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The JSON as a raw value, for embedding in frames.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }
}

/// Why a meta value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// Larger than [`Meta::MAX_BYTES`].
    TooLarge,
    /// Not valid JSON.
    NotJson,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_grammar() {
        assert!(RoomName::parse("lobby_1-A").is_some());
        assert!(RoomName::parse(&"a".repeat(64)).is_some());
        assert!(RoomName::parse(&"a".repeat(65)).is_none());
        assert!(RoomName::parse("").is_none());
        assert!(RoomName::parse("a b").is_none());
        assert!(RoomName::parse("a/b").is_none());
        assert!(RoomName::parse("é").is_none());
    }

    #[test]
    fn conn_tags_round_trip() {
        let c = ConnId(0xdead_beef_0000_0001);
        assert_eq!(ConnId::from_tag(&c.tag()), Some(c));
        assert_eq!(ConnId::from_tag("x12"), None);
    }

    #[test]
    fn resume_token_is_hashed_and_hidden() {
        let t = ResumeToken::from_random([7; 16]);
        assert_eq!(t.expose().len(), 32);
        assert_eq!(t.digest().len(), 64);
        assert_ne!(t.digest(), ResumeToken::presented("other").digest());
        assert_eq!(format!("{t:?}"), "ResumeToken(..)");
    }

    #[test]
    fn meta_is_bounded_json() {
        assert!(Meta::parse(r#"{"name":"ann"}"#).is_ok());
        assert_eq!(Meta::parse("{nope"), Err(MetaError::NotJson));
        let big = format!(r#""{}""#, "x".repeat(1100));
        assert_eq!(Meta::parse(&big), Err(MetaError::TooLarge));
        assert_eq!(Meta::empty().as_json(), "{}");
    }
}
