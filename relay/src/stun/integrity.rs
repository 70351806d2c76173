//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5–§14.7),
//! and long-term credential keys (RFC 8489 §9.2.2).

use std::fmt;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

/// RFC 8489 §14.7: the CRC-32 is XOR'ed with this so STUN can be told apart from other protocols.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Which integrity attribute protects a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY: HMAC-SHA1, 20 bytes.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, 32 bytes (we never truncate it).
    Sha256,
}

impl IntegrityKind {
    /// Length of the MAC on the wire.
    pub const fn mac_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }
}

/// The HMAC key for a message; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrityKey(Vec<u8>);

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl IntegrityKey {
    /// RFC 8489 §9.1.1: short-term key is the password itself (OpaqueString processing is the
    /// identity for the ASCII passwords we hand out).
    pub fn short_term(password: &str) -> Self {
        Self(password.as_bytes().to_vec())
    }

    /// RFC 8489 §9.2.2: key = MD5(username ":" realm ":" password).
    pub fn long_term(username: &str, realm: &str, password: &str) -> Self {
        let mut h = Md5::new();
        h.update(username.as_bytes());
        h.update(b":");
        h.update(realm.as_bytes());
        h.update(b":");
        h.update(password.as_bytes());
        Self(h.finalize().to_vec())
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Feeds `prefix` to `mac` with the header's length field replaced by `adjusted_len`.
fn feed(update: &mut impl FnMut(&[u8]), prefix: &[u8], adjusted_len: usize) {
    let len = u16::try_from(adjusted_len)
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    update(prefix.get(..2).unwrap_or_default());
    update(&len);
    update(prefix.get(4..).unwrap_or_default());
}

/// Computes the MAC over `prefix` (the message up to the integrity attribute).
pub fn compute(
    kind: IntegrityKind,
    key: &IntegrityKey,
    prefix: &[u8],
    adjusted_len: usize,
) -> Vec<u8> {
    match kind {
        IntegrityKind::Sha1 => {
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&key.0) else {
                return Vec::new();
            };
            feed(&mut |b| mac.update(b), prefix, adjusted_len);
            mac.finalize().into_bytes().to_vec()
        }
        IntegrityKind::Sha256 => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.0) else {
                return Vec::new();
            };
            feed(&mut |b| mac.update(b), prefix, adjusted_len);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// Verifies a received MAC; the comparison is constant time (`hmac`'s verify uses `subtle`).
pub fn verify(
    kind: IntegrityKind,
    key: &IntegrityKey,
    prefix: &[u8],
    adjusted_len: usize,
    tag: &[u8],
) -> bool {
    match kind {
        IntegrityKind::Sha1 => {
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&key.0) else {
                return false;
            };
            feed(&mut |b| mac.update(b), prefix, adjusted_len);
            mac.verify_slice(tag).is_ok()
        }
        IntegrityKind::Sha256 => {
            // RFC 8489 §14.6: at most 32 bytes, at least 16, and a multiple of 4.
            if !(16..=32).contains(&tag.len()) || !tag.len().is_multiple_of(4) {
                return false;
            }
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key.0) else {
                return false;
            };
            feed(&mut |b| mac.update(b), prefix, adjusted_len);
            mac.verify_truncated_left(tag).is_ok()
        }
    }
}

/// CRC-32 of the message up to FINGERPRINT, XOR'ed with 0x5354554e (RFC 8489 §14.7).
pub fn fingerprint(prefix: &[u8], adjusted_len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    feed(&mut |b| h.update(b), prefix, adjusted_len);
    h.finalize() ^ FINGERPRINT_XOR
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn sha256_tags_follow_rfc_8489_section_14_6() {
        let key = IntegrityKey::long_term("u", "r", "p");
        let prefix = [0u8; 20];
        let full = compute(IntegrityKind::Sha256, &key, &prefix, 56);
        assert!(verify(IntegrityKind::Sha256, &key, &prefix, 56, &full));
        // Truncated to 16, 20, 28 bytes: accepted.
        for len in [16, 20, 28] {
            assert!(verify(
                IntegrityKind::Sha256,
                &key,
                &prefix,
                56,
                &full[..len]
            ));
        }
        // Shorter than 16, or not a multiple of 4: refused, even though it is a valid prefix.
        for len in [12, 17, 30] {
            assert!(!verify(
                IntegrityKind::Sha256,
                &key,
                &prefix,
                56,
                &full[..len]
            ));
        }
    }
}
