//! The token that admits one peer of one room to a relay's SFU session endpoint.
//!
//! The Worker signs it (in `welcome.sfu.token` and `GET /v1/sfu-token`) with the secret it shares
//! with the relay (the TURN REST secret); the relay verifies it on `POST /v1/sessions`. Format:
//!
//! ```text
//! sfu1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "sfu1." + base64url(JSON claims)))>
//! ```
//!
//! with claims `{"room": RoomName, "peer_id": PeerId, "exp": unix seconds}`. The `sfu1.` prefix is
//! part of the signed input, so no other HMAC the shared secret produces (TURN passwords are
//! HMAC-SHA1 of a username) can pass as a session token.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::types::{Millis, PeerId, RoomName};

/// Version prefix of every token; part of the signed input.
const PREFIX: &str = "sfu1.";

/// Longest token accepted, to bound work on hostile input.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// What a session token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room whose peers the session may reach.
    pub room: RoomName,
    /// The peer this session speaks for (the sender id others see).
    pub peer_id: PeerId,
    /// Expiry, seconds since the Unix epoch; the token is refused from this second on.
    pub exp: u64,
}

/// Why a token was refused. Messages never include the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the `sfu1.<claims>.<signature>` form, or the claims are not valid JSON.
    Malformed,
    /// The signature does not verify under any given secret.
    BadSignature,
    /// `exp` has passed.
    Expired,
}

impl TokenError {
    /// A stable, machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
        }
    }

    /// A human-readable reason.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is not an sfu1 session token",
            TokenError::BadSignature => "the token signature is invalid",
            TokenError::Expired => "the token has expired",
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TokenError {}

fn mac(secret: &[u8], signed: &str) -> Option<Hmac<sha2::Sha256>> {
    // HMAC takes keys of any length; `None` cannot happen but is not a panic either.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).ok()?;
    mac.update(signed.as_bytes());
    Some(mac)
}

/// Signs `claims` under `secret`.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Serializing three plain fields cannot fail; an empty object would fail verification.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{PREFIX}{}", b64.encode(json));
    let sig = mac(secret, &signed)
        .map(|m| b64.encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{signed}.{sig}")
}

/// Verifies `token` under `secret` at time `now`; the caller checks the room it serves.
pub fn verify(secret: &[u8], token: &str, now: Millis) -> Result<Claims, TokenError> {
    verify_any(&[secret], token, now)
}

/// Like [`verify`], accepting a signature by any of `secrets` (the relay's rotation window).
pub fn verify_any(secrets: &[&[u8]], token: &str, now: Millis) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES || !token.starts_with(PREFIX) {
        return Err(TokenError::Malformed);
    }
    let Some((signed, sig)) = token.rsplit_once('.') else {
        return Err(TokenError::Malformed);
    };
    let Some(payload) = signed.strip_prefix(PREFIX) else {
        return Err(TokenError::Malformed);
    };
    if payload.is_empty() || payload.contains('.') {
        return Err(TokenError::Malformed);
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(sig).map_err(|_| TokenError::Malformed)?;
    // Constant-time comparison per secret.
    let signed_ok = secrets
        .iter()
        .any(|s| mac(s, signed).is_some_and(|m| m.verify_slice(&sig).is_ok()));
    if !signed_ok {
        return Err(TokenError::BadSignature);
    }
    let claims: Claims = b64
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    // Deserializing through the newtypes' serde(transparent) skips their checks; redo them.
    if RoomName::parse(claims.room.as_str()).is_none()
        || PeerId::parse(claims.peer_id.as_str()).is_none()
    {
        return Err(TokenError::Malformed);
    }
    if now.as_secs() >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Where and how the Worker issues session tokens (`SFU_URLS`, `TURN_SECRET`, `SFU_TOKEN_TTL_S`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuConfig {
    /// Base URLs of the relays' session endpoints (`http://` or `https://`, no trailing `/`).
    pub urls: Vec<String>,
    /// The secret shared with the relays (the TURN REST secret).
    pub secret: String,
    /// Token lifetime in seconds.
    pub ttl_s: u64,
}

/// Default token lifetime (`SFU_TOKEN_TTL_S`), seconds.
pub const DEFAULT_TTL_S: u64 = 600;

impl SfuConfig {
    /// A config from the Worker's settings: `None` without a secret or without a usable URL.
    /// URLs that are not `http://`/`https://` are dropped; a trailing `/` is removed.
    pub fn new(urls: &[String], secret: Option<&str>, ttl_s: u64) -> Option<SfuConfig> {
        let secret = secret.filter(|s| !s.is_empty())?;
        let urls: Vec<String> = urls
            .iter()
            .filter(|u| {
                u.strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"))
                    .is_some_and(|host| !host.trim_end_matches('/').is_empty())
            })
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        if urls.is_empty() {
            return None;
        }
        Some(SfuConfig {
            urls,
            secret: secret.to_owned(),
            ttl_s: ttl_s.max(1),
        })
    }

    /// The room's node: a stable hash (FNV-1a, 64 bit) of the room name picks one of `urls`, so
    /// every peer of a room meets on one node for as long as `SFU_URLS` does not change.
    pub fn node_for(&self, room: &RoomName) -> &str {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in room.as_str().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let n = self.urls.len() as u64;
        let i = if n == 0 { 0 } else { (h % n) as usize };
        self.urls.get(i).map_or("", String::as_str)
    }

    /// The grant for `peer_id` of `room` at `now`: the room's session endpoint and a fresh token.
    pub fn grant(&self, room: &RoomName, peer_id: &PeerId, now: Millis) -> SfuGrant {
        let expires = now.as_secs().saturating_add(self.ttl_s);
        let claims = Claims {
            room: room.clone(),
            peer_id: peer_id.clone(),
            exp: expires,
        };
        SfuGrant {
            url: format!("{}/v1/sessions", self.node_for(room)),
            token: sign(self.secret.as_bytes(), &claims),
            expires,
        }
    }
}

/// `welcome.sfu` and the body of `GET /v1/sfu-token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SfuGrant {
    /// The session endpoint to `POST` the offer to (`<node>/v1/sessions`).
    pub url: String,
    /// The bearer token.
    pub token: String,
    /// When the token stops being accepted, seconds since the Unix epoch (the token's `exp`).
    pub expires: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    const NOW: Millis = Millis(1_700_000_000_000);

    fn claims(exp: u64) -> Claims {
        Claims {
            room: RoomName::parse("lobby").unwrap(),
            peer_id: PeerId::parse("p1").unwrap(),
            exp,
        }
    }

    #[test]
    fn round_trip() {
        let c = claims(NOW.as_secs() + 60);
        let t = sign(b"secret", &c);
        assert!(t.starts_with("sfu1."));
        assert_eq!(verify(b"secret", &t, NOW), Ok(c));
    }

    #[test]
    fn wrong_secret_and_rotation() {
        let t = sign(b"old", &claims(NOW.as_secs() + 60));
        assert_eq!(verify(b"new", &t, NOW), Err(TokenError::BadSignature));
        assert!(verify_any(&[b"new", b"old"], &t, NOW).is_ok());
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = sign(b"s", &claims(NOW.as_secs()));
        assert_eq!(verify(b"s", &t, NOW), Err(TokenError::Expired));
        let t = sign(b"s", &claims(NOW.as_secs() + 1));
        assert!(verify(b"s", &t, NOW).is_ok());
    }

    #[test]
    fn tampered_claims_fail_the_signature() {
        let t = sign(b"s", &claims(NOW.as_secs() + 60));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = b64.encode(br#"{"room":"other","peer_id":"p1","exp":9999999999}"#);
        let sig = t.rsplit_once('.').unwrap().1;
        let bad = format!("sfu1.{forged}.{sig}");
        assert_eq!(verify(b"s", &bad, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for t in [
            "",
            "sfu1.",
            "sfu1..",
            "sfu1.a.b.c",
            "jwt.a.b",
            "sfu1.!!!.???",
            &"sfu1.".repeat(400),
        ] {
            assert_eq!(verify(b"s", t, NOW), Err(TokenError::Malformed), "{t}");
        }
        // Well signed but not our claims, or claims that break the id rules.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for json in [
            r#"{"room":"a"}"#,
            r#"{"room":"a b","peer_id":"p","exp":9999999999}"#,
            r#"{"room":"a","peer_id":"","exp":9999999999}"#,
        ] {
            let signed = format!("sfu1.{}", b64.encode(json));
            let sig = b64.encode(mac(b"s", &signed).unwrap().finalize().into_bytes());
            let t = format!("{signed}.{sig}");
            assert_eq!(verify(b"s", &t, NOW), Err(TokenError::Malformed), "{json}");
        }
    }
    fn sfu_config(urls: &[&str]) -> SfuConfig {
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        SfuConfig::new(&urls, Some("s"), 600).unwrap()
    }

    #[test]
    fn config_needs_a_secret_and_an_http_url() {
        let urls = vec!["https://a.example:8443/".to_owned(), "turn:x".to_owned()];
        assert_eq!(SfuConfig::new(&urls, None, 600), None);
        assert_eq!(SfuConfig::new(&urls, Some(""), 600), None);
        assert_eq!(
            SfuConfig::new(&["ftp://x".to_owned()], Some("s"), 600),
            None
        );
        let c = SfuConfig::new(&urls, Some("s"), 600).unwrap();
        assert_eq!(c.urls, vec!["https://a.example:8443".to_owned()]);
    }

    #[test]
    fn grant_verifies_for_the_room_and_peer_until_it_expires() {
        let c = sfu_config(&["http://127.0.0.1:7000"]);
        let room = RoomName::parse("lobby").unwrap();
        let peer = PeerId::parse("p1").unwrap();
        let g = c.grant(&room, &peer, NOW);
        assert_eq!(g.url, "http://127.0.0.1:7000/v1/sessions");
        assert_eq!(g.expires, NOW.as_secs() + 600);
        let claims = verify(b"s", &g.token, NOW).unwrap();
        assert_eq!(
            (claims.room, claims.peer_id, claims.exp),
            (room, peer, g.expires)
        );
        let later = Millis(NOW.0 + 600_000);
        assert_eq!(verify(b"s", &g.token, later), Err(TokenError::Expired));
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json.get("expires"), Some(&serde_json::json!(g.expires)));
    }

    #[test]
    fn a_room_always_lands_on_one_node_and_rooms_spread() {
        let c = sfu_config(&["http://a", "http://b", "http://c"]);
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let room = RoomName::parse(&format!("room-{i}")).unwrap();
            let node = c.node_for(&room).to_owned();
            assert_eq!(c.node_for(&room), node, "stable");
            // A second config with the same list agrees (no per-process seed).
            assert_eq!(
                sfu_config(&["http://a", "http://b", "http://c"]).node_for(&room),
                node
            );
            seen.insert(node);
        }
        assert_eq!(seen.len(), 3, "64 rooms use every node");
    }
}
