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
}
