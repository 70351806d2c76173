//! ICE servers for `RTCPeerConnection`: STUN URLs and TURN REST credentials.
//!
//! TURN credentials follow the TURN REST convention shared with the relay:
//! `username = "<unix expiry>:<user>"` or, when a trace is known,
//! `"<unix expiry>:<user>.<trace_id>"`; `credential = base64(HMAC-SHA1(secret, username))`.
//! `<user>` is a [`TurnUser`]: a stable id the relay counts its per-user quota against.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;

use crate::types::Millis;

/// Where and how to issue ICE servers (`STUN_URLS`, `TURN_URLS`, `TURN_SECRET`, `TURN_TTL_S`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    /// `stun:` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs.
    pub turn_urls: Vec<String>,
    /// Shared secret with the relay; without it no TURN entry is issued.
    pub turn_secret: Option<String>,
    /// Credential lifetime in seconds.
    pub ttl_s: u64,
}

/// One entry of `iceServers`, in the shape browsers (and Cloudflare's TURN API) use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// Server URLs.
    pub urls: Vec<String>,
    /// TURN username, absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password, absent for STUN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Splits a comma- or whitespace-separated URL list.
pub fn split_urls(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The TURN REST password for `username` under `secret`.
pub fn turn_password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail; fall back to an
    // empty credential (which the relay refuses) rather than panic.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Longest [`TurnUser`], in bytes.
pub const MAX_TURN_USER_BYTES: usize = 64;

/// The stable user a TURN credential is issued to: `[A-Za-z0-9_-]{1,64}`, never containing `:` or
/// `.`, so the relay can split `<expiry>:<user>.<trace_id>` unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUser(String);

impl TurnUser {
    /// The user named by a JWT `sub`: its characters outside `[A-Za-z0-9_-]` dropped, cut to 64.
    /// `None` when nothing is left.
    pub fn from_sub(sub: &str) -> Option<TurnUser> {
        let clean: String = sub
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(MAX_TURN_USER_BYTES)
            .collect();
        (!clean.is_empty()).then_some(TurnUser(clean))
    }

    /// The per-client id for open mode: `ip-<16 hex of HMAC-SHA256(key, client_ip)>`. Stable for
    /// one address under one key; the address cannot be read back from it without the key.
    pub fn from_client_ip(key: &[u8], client_ip: &str) -> TurnUser {
        let digest = match Hmac::<sha2::Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(client_ip.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; an empty digest still yields a valid (constant) id.
            Err(_) => Vec::new(),
        };
        let mut id = String::with_capacity(3 + 16);
        id.push_str("ip-");
        for b in digest.iter().take(8) {
            id.push(hex_digit(b >> 4));
            id.push(hex_digit(b & 0x0f));
        }
        TurnUser(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TurnUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

/// Whether `s` has the shape of a trace id: exactly 16 lowercase hex characters.
pub fn is_trace_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The TURN REST username: `<expiry>:<user>`, or `<expiry>:<user>.<trace_id>` with a trace.
pub fn turn_username(expiry_s: u64, user: &str, trace_id: Option<&str>) -> String {
    match trace_id {
        Some(t) => format!("{expiry_s}:{user}.{t}"),
        None => format!("{expiry_s}:{user}"),
    }
}

/// The `iceServers` list for `user` at time `now`.
pub fn ice_servers(cfg: &IceConfig, user: &str, now: Millis) -> Vec<IceServer> {
    ice_servers_traced(cfg, user, None, now)
}

/// The `iceServers` list for `user` at time `now`, its TURN username carrying `trace_id` when
/// given (the caller validates it with [`is_trace_id`]).
pub fn ice_servers_traced(
    cfg: &IceConfig,
    user: &str,
    trace_id: Option<&str>,
    now: Millis,
) -> Vec<IceServer> {
    let mut out = Vec::new();
    if !cfg.stun_urls.is_empty() {
        out.push(IceServer {
            urls: cfg.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let Some(secret) = cfg.turn_secret.as_deref().filter(|s| !s.is_empty())
        && !cfg.turn_urls.is_empty()
    {
        let username = turn_username(now.as_secs().saturating_add(cfg.ttl_s), user, trace_id);
        let credential = turn_password(secret, &username);
        out.push(IceServer {
            urls: cfg.turn_urls.clone(),
            username: Some(username),
            credential: Some(credential),
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests fail loudly on purpose
mod tests {
    use super::*;

    #[test]
    fn turn_rest_password_matches_known_value() {
        // Computed independently: printf '1700000000:alice' | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(
            turn_password("s3cret", "1700000000:alice"),
            "TtElzSjT0GdnTQ9xdcRNxx96yQs="
        );
    }

    #[test]
    fn issues_stun_and_expiring_turn() {
        let cfg = IceConfig {
            stun_urls: split_urls("stun:127.0.0.1:3478"),
            turn_urls: split_urls(
                "turn:127.0.0.1:3478?transport=udp, turn:127.0.0.1:3478?transport=tcp",
            ),
            turn_secret: Some("s3cret".into()),
            ttl_s: 3600,
        };
        let list = ice_servers(&cfg, "peer1", Millis(1_700_000_000_123));
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].username, None);
        assert_eq!(list[1].urls.len(), 2);
        let user = list[1].username.as_deref().unwrap();
        assert_eq!(user, "1700003600:peer1");
        assert_eq!(
            list[1].credential.as_deref().unwrap(),
            turn_password("s3cret", user)
        );
        let json = serde_json::to_string(&list[0]).unwrap();
        assert_eq!(json, r#"{"urls":["stun:127.0.0.1:3478"]}"#);
    }

    #[test]
    fn usernames_carry_the_user_and_the_trace() {
        let cfg = IceConfig {
            stun_urls: vec![],
            turn_urls: vec!["turn:a".into()],
            turn_secret: Some("s".into()),
            ttl_s: 60,
        };
        let list = ice_servers_traced(&cfg, "alice", Some("0123456789abcdef"), Millis(1_000_000));
        let username = list[0].username.as_deref().unwrap();
        assert_eq!(username, "1060:alice.0123456789abcdef");
        assert_eq!(
            list[0].credential.as_deref().unwrap(),
            turn_password("s", username)
        );
        assert_eq!(turn_username(5, "bob", None), "5:bob");
    }

    #[test]
    fn trace_ids_are_16_lowercase_hex() {
        assert!(is_trace_id("0123456789abcdef"));
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            "01234567.9abcdef",
        ] {
            assert!(!is_trace_id(bad), "{bad}");
        }
    }

    #[test]
    fn users_from_subs_are_sanitized() {
        assert_eq!(
            TurnUser::from_sub("alice@example.com:1.x")
                .unwrap()
                .as_str(),
            "aliceexamplecom1x"
        );
        assert_eq!(
            TurnUser::from_sub(&"a".repeat(100)).unwrap().as_str().len(),
            64
        );
        assert_eq!(TurnUser::from_sub("..::@@"), None);
        assert_eq!(TurnUser::from_sub("ü"), None);
    }

    #[test]
    fn users_from_addresses_are_keyed_hashes() {
        let a = TurnUser::from_client_ip(b"k", "203.0.113.7");
        // printf '203.0.113.7' | openssl dgst -sha256 -hmac k | cut -c1-16
        assert_eq!(a.as_str(), "ip-024f38e394d6c69d");
        assert_eq!(a, TurnUser::from_client_ip(b"k", "203.0.113.7"));
        assert_ne!(a, TurnUser::from_client_ip(b"k", "203.0.113.8"));
        assert_ne!(a, TurnUser::from_client_ip(b"other", "203.0.113.7"));
        assert!(!a.as_str().contains("203"));
    }

    #[test]
    fn no_secret_means_stun_only() {
        let cfg = IceConfig {
            stun_urls: vec!["stun:a".into()],
            turn_urls: vec!["turn:a".into()],
            turn_secret: None,
            ttl_s: 60,
        };
        assert_eq!(ice_servers(&cfg, "p", Millis(0)).len(), 1);
    }
}
