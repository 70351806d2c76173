//! ICE servers for `RTCPeerConnection`: STUN URLs and TURN REST credentials.
//!
//! TURN credentials follow the TURN REST convention shared with the relay:
//! `username = "<unix expiry>:<user>"`, `credential = base64(HMAC-SHA1(secret, username))`.

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

/// The `iceServers` list for `user` at time `now`.
pub fn ice_servers(cfg: &IceConfig, user: &str, now: Millis) -> Vec<IceServer> {
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
        let username = format!("{}:{}", now.as_secs().saturating_add(cfg.ttl_s), user);
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
