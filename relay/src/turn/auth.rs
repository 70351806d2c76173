//! Long-term credentials (RFC 8489 §9.2) with TURN REST usernames (`"<unix expiry>:<id>"`, password
//! = base64(HMAC-SHA1(secret, username))) and static users, plus stateless nonces.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;

use super::types::Millis;
use crate::stun::IntegrityKey;

/// Identifies which configured secret or static user produced a key, without holding it; used to
/// revoke allocations when that credential leaves the accepted set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CredentialTag(u64);

/// The quota subject: the id part of a REST username, or a static user's name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UserId(pub Box<str>);

/// The accepted credentials; replaceable at run time for secret rotation.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Shared secrets for TURN REST usernames; any of them is accepted (rotation).
    pub secrets: Vec<String>,
    /// Static `name -> password` users.
    pub users: HashMap<String, String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secrets", &self.secrets.len())
            .field("users", &self.users.len())
            .finish()
    }
}

/// A key that may authenticate a message, and where it came from.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The long-term key.
    pub key: IntegrityKey,
    /// Which credential produced it.
    pub tag: CredentialTag,
}

/// Result of looking a username up.
#[derive(Debug)]
pub enum Lookup {
    /// Keys to try, in order.
    Keys {
        /// Candidate keys.
        candidates: Vec<Candidate>,
        /// Quota subject.
        user: UserId,
        /// REST expiry, if this is a REST username.
        expires: Option<Millis>,
    },
    /// A REST username whose expiry has passed.
    Expired,
    /// Nobody by that name.
    Unknown,
}

fn tag(kind: &str, value: &str) -> CredentialTag {
    let mut h = DefaultHasher::new();
    kind.hash(&mut h);
    value.hash(&mut h);
    CredentialTag(h.finish())
}

/// base64(HMAC-SHA1(secret, username)): the TURN REST password. The Worker issues
/// credentials with this same function, so issuer and verifier cannot drift apart.
pub use switchboard_proto::ice::turn_password as rest_password;

/// The Switchboard trace id a TURN REST username carries, as its 64-bit value.
pub fn trace_id_of(username: &str) -> Option<u64> {
    parse_rest_username(username)
        .and_then(|u| u.trace)
        .and_then(|t| u64::from_str_radix(t, 16).ok())
}

/// A TURN REST username, `<unix expiry>[:<user>[.<trace_id>]]`, split into its parts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RestUsername<'a> {
    /// Unix seconds after which the credential is refused.
    pub expiry: u64,
    /// The quota subject: the part between `:` and the first `.`; the whole username when that
    /// part is empty, so every REST username has one.
    pub user: &'a str,
    /// The Switchboard trace after the first `.`, when it has a trace id's shape (16 lowercase
    /// hex); anything else there is not echoed into logs.
    pub trace: Option<&'a str>,
}

/// Parses a TURN REST username; `None` when it does not start with decimal expiry seconds.
pub fn parse_rest_username(username: &str) -> Option<RestUsername<'_>> {
    let (ts, id) = username.split_once(':').unwrap_or((username, ""));
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (user, trace) = match id.split_once('.') {
        Some((user, trace)) => (user, Some(trace)),
        None => (id, None),
    };
    Some(RestUsername {
        expiry: ts.parse().ok()?,
        user: if user.is_empty() { username } else { user },
        trace: trace.filter(|t| switchboard_proto::ice::is_trace_id(t)),
    })
}

impl Credentials {
    /// Whether no credential at all is configured (the server then refuses every Allocate).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.users.is_empty()
    }

    /// Keys that could have produced a message from `username` at `now`.
    pub fn lookup(&self, username: &str, realm: &str, now: Millis) -> Lookup {
        if let Some(password) = self.users.get(username) {
            return Lookup::Keys {
                candidates: vec![Candidate {
                    key: IntegrityKey::long_term(username, realm, password),
                    tag: tag("user", username),
                }],
                user: UserId(username.into()),
                expires: None,
            };
        }
        if self.secrets.is_empty() {
            return Lookup::Unknown;
        }
        let Some(RestUsername {
            expiry, user: id, ..
        }) = parse_rest_username(username)
        else {
            return Lookup::Unknown;
        };
        if expiry <= now.as_secs() {
            return Lookup::Expired;
        }
        let candidates = self
            .secrets
            .iter()
            .map(|s| Candidate {
                key: IntegrityKey::long_term(username, realm, &rest_password(s, username)),
                tag: tag("secret", s),
            })
            .collect();
        Lookup::Keys {
            candidates,
            user: UserId(id.into()),
            expires: Some(Millis::from_secs(expiry)),
        }
    }

    /// Whether the credential identified by `t` is still accepted.
    pub fn accepts(&self, t: CredentialTag) -> bool {
        self.secrets.iter().any(|s| tag("secret", s) == t)
            || self.users.keys().any(|u| tag("user", u) == t)
    }
}

/// Outcome of checking a NONCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by us to this client and not yet expired.
    Valid,
    /// Expired, forged, or issued to another client address: answer 438 with a fresh one.
    Stale,
}

/// Mints stateless nonces: expiry (hex seconds) plus a MAC binding it to the client address, so
/// no per-client state is kept before authentication.
#[derive(Clone)]
pub struct NonceIssuer {
    key: [u8; 32],
    lifetime: Duration,
}

impl fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl NonceIssuer {
    /// A nonce issuer with a server-private key.
    pub fn new(key: [u8; 32], lifetime: Duration) -> Self {
        Self { key, lifetime }
    }

    fn mac(&self, expiry: u64, client: SocketAddr) -> String {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(&expiry.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        let out = mac.finalize().into_bytes();
        out.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// A fresh nonce for `client`.
    pub fn mint(&self, client: SocketAddr, now: Millis) -> String {
        let expiry = now.saturating_add(self.lifetime).as_secs();
        format!("{expiry:010x}{}", self.mac(expiry, client))
    }

    /// Checks a nonce presented by `client`.
    pub fn check(&self, nonce: &[u8], client: SocketAddr, now: Millis) -> NonceCheck {
        let Ok(nonce) = std::str::from_utf8(nonce) else {
            return NonceCheck::Stale;
        };
        let Some((hex_expiry, mac)) = nonce.split_at_checked(10) else {
            return NonceCheck::Stale;
        };
        let Ok(expiry) = u64::from_str_radix(hex_expiry, 16) else {
            return NonceCheck::Stale;
        };
        let expected = self.mac(expiry, client);
        // Constant time in the MAC's content (its length is public).
        let same: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        if same && expiry > now.as_secs() {
            NonceCheck::Valid
        } else {
            NonceCheck::Stale
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn rest_lookup_and_expiry() {
        let c = Credentials {
            secrets: vec!["s1".into(), "s2".into()],
            users: HashMap::new(),
        };
        let now = Millis::from_secs(1_000);
        match c.lookup("2000:alice", "r", now) {
            Lookup::Keys {
                candidates,
                user,
                expires,
            } => {
                assert_eq!(candidates.len(), 2);
                assert_eq!(user, UserId("alice".into()));
                assert_eq!(expires, Some(Millis::from_secs(2000)));
                assert_eq!(
                    candidates[0].key,
                    IntegrityKey::long_term("2000:alice", "r", &rest_password("s1", "2000:alice"))
                );
                assert!(c.accepts(candidates[1].tag));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(c.lookup("1000:alice", "r", now), Lookup::Expired));
        assert!(matches!(c.lookup("alice", "r", now), Lookup::Unknown));
        assert!(matches!(c.lookup("x1000:alice", "r", now), Lookup::Unknown));
    }

    #[test]
    fn rest_usernames_split_into_expiry_user_and_trace() {
        let p = |u| parse_rest_username(u);
        let parts = |expiry, user, trace| {
            Some(RestUsername {
                expiry,
                user,
                trace,
            })
        };
        assert_eq!(p("2000:alice"), parts(2000, "alice", None));
        assert_eq!(
            p("2000:alice.0123456789abcdef"),
            parts(2000, "alice", Some("0123456789abcdef"))
        );
        // The quota subject stops at the first dot; a malformed trace is not logged.
        assert_eq!(p("2000:ip-00ff.1.2"), parts(2000, "ip-00ff", None));
        assert_eq!(p("2000:bob.NOT-HEX\nx"), parts(2000, "bob", None));
        // Without a user part the whole username is the subject (as before traces existed).
        assert_eq!(p("2000"), parts(2000, "2000", None));
        assert_eq!(
            p("2000:.0123456789abcdef"),
            parts(2000, "2000:.0123456789abcdef", Some("0123456789abcdef"))
        );
        assert_eq!(p("x2000:alice"), None);
        assert_eq!(p(":alice"), None);
        assert_eq!(p("99999999999999999999999:alice"), None);
    }

    #[test]
    fn traced_usernames_share_one_quota_subject() {
        let c = Credentials {
            secrets: vec!["s".into()],
            users: HashMap::new(),
        };
        let now = Millis::from_secs(1_000);
        let user_of = |name| match c.lookup(name, "r", now) {
            Lookup::Keys { user, .. } => user,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            user_of("2000:alice.0123456789abcdef"),
            UserId("alice".into())
        );
        assert_eq!(
            user_of("3000:alice.fedcba9876543210"),
            UserId("alice".into())
        );
        assert_eq!(user_of("3000:alice"), UserId("alice".into()));
    }

    #[test]
    fn rest_password_matches_coturn_formula() {
        // base64(HMAC-SHA1("secret", "1:u")) computed independently with openssl.
        assert_eq!(
            rest_password("secret", "1:u"),
            "KUHD1CkWw8p55pIgHmyFn2XyOzY="
        );
    }

    #[test]
    fn nonces_expire_and_bind_to_the_client() {
        let n = NonceIssuer::new([9; 32], Duration::from_secs(60));
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let t0 = Millis::from_secs(100);
        let nonce = n.mint(a, t0);
        assert_eq!(n.check(nonce.as_bytes(), a, t0), NonceCheck::Valid);
        assert_eq!(n.check(nonce.as_bytes(), b, t0), NonceCheck::Stale);
        assert_eq!(
            n.check(nonce.as_bytes(), a, Millis::from_secs(160)),
            NonceCheck::Stale
        );
        assert_eq!(n.check(b"garbage", a, t0), NonceCheck::Stale);
        assert_eq!(n.check(&[0xFF; 40], a, t0), NonceCheck::Stale);
    }
}
