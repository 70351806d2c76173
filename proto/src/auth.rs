//! HS256 JWT verification for room joins and `/v1/ice-servers`.
//!
//! Only what Switchboard needs: `alg` must be `HS256`; `exp` is required and
//! must be in the future; `nbf`, when present, must have passed; the `room`
//! claim names the room or `*`. `sub` and `meta` become the peer's meta.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;

use crate::types::{Meta, Millis};

/// The verified claims Switchboard uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// The room the token admits to, or `*` for any.
    pub room: String,
    /// The subject, usually the app's user id.
    pub sub: Option<String>,
    /// The app-supplied `meta` claim.
    pub meta: Option<serde_json::Value>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

impl Claims {
    /// Whether the token admits to `room`.
    pub fn admits(&self, room: &str) -> bool {
        self.room == "*" || self.room == room
    }

    /// The peer meta this token grants: the `meta` claim (an object) with `sub` set.
    pub fn peer_meta(&self) -> Result<Meta, AuthError> {
        let mut obj = match &self.meta {
            None => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(_) => return Err(AuthError::Malformed("`meta` claim must be an object")),
        };
        if let Some(sub) = &self.sub {
            obj.insert("sub".into(), serde_json::Value::String(sub.clone()));
        }
        Meta::from_value(&serde_json::Value::Object(obj))
            .map_err(|_| AuthError::Malformed("`meta` claim exceeds 1 KiB"))
    }
}

/// Why a token was refused. Messages never include the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented.
    Missing,
    /// The token is not a well-formed HS256 JWT.
    Malformed(&'static str),
    /// The signature does not verify under the secret.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// The `room` claim does not admit to this room.
    WrongRoom,
}

impl AuthError {
    /// A human-readable reason.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "a token is required (?token= or Authorization: Bearer)",
            AuthError::Malformed(why) => why,
            AuthError::BadSignature => "token signature is invalid",
            AuthError::Expired => "token has expired",
            AuthError::NotYetValid => "token is not valid yet",
            AuthError::WrongRoom => "token does not admit to this room",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct RawClaims {
    exp: Option<f64>,
    nbf: Option<f64>,
    room: Option<String>,
    sub: Option<String>,
    meta: Option<serde_json::Value>,
}

/// Longest token accepted, to bound work on hostile input.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verifies an HS256 `token` under `secret` at time `now`.
pub fn verify_jwt(token: &str, secret: &[u8], now: Millis) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "token must have three dot-separated parts",
        ));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Header = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed("token header is not base64url JSON"))?;
    if header.alg != "HS256" {
        return Err(AuthError::Malformed("token alg must be HS256"));
    }
    let sig = b64
        .decode(s)
        .map_err(|_| AuthError::Malformed("token signature is not base64url"))?;
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| AuthError::BadSignature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&sig)
        .map_err(|_| AuthError::BadSignature)?;
    let claims: RawClaims = b64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Malformed("token claims are not base64url JSON"))?;
    let now_s = now.0 as f64 / 1000.0;
    let exp = claims
        .exp
        .ok_or(AuthError::Malformed("token has no `exp` claim"))?;
    if exp <= now_s {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now_s) {
        return Err(AuthError::NotYetValid);
    }
    let room = claims
        .room
        .ok_or(AuthError::Malformed("token has no `room` claim"))?;
    Ok(Claims {
        room,
        sub: claims.sub,
        meta: claims.meta,
        exp: exp as u64,
    })
}

/// Signs `claims` as an HS256 JWT. Used by tests and tooling; the Worker only verifies.
pub fn sign_jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = b64.encode(claims.to_string());
    let signing_input = format!("{h}.{p}");
    let sig = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            b64.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{signing_input}.{sig}")
}

/// Which browser origins may call the HTTP API and join rooms (`ALLOWED_ORIGINS`).
///
/// Requests without an `Origin` header (native clients, servers) are not governed by it; a request
/// whose `Origin` is the Worker's own origin is always allowed (the demo page it serves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: every origin.
    Any,
    /// Exactly these origins (`scheme://host[:port]`, compared case-insensitively).
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parses a comma- or whitespace-separated list; `*` anywhere allows every origin. Unset or
    /// empty allows none (besides the Worker's own origin).
    pub fn parse(list: &str) -> AllowedOrigins {
        let mut out = Vec::new();
        for entry in list.split(|c: char| c == ',' || c.is_whitespace()) {
            let entry = entry.trim().trim_end_matches('/');
            if entry == "*" {
                return AllowedOrigins::Any;
            }
            if !entry.is_empty() {
                out.push(entry.to_ascii_lowercase());
            }
        }
        AllowedOrigins::List(out)
    }

    /// Whether `origin` (an `Origin` header value) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests fail loudly on purpose
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn allowed_origins_parse_and_match() {
        assert_eq!(AllowedOrigins::parse("*"), AllowedOrigins::Any);
        assert!(AllowedOrigins::parse("https://a.example, *").allows("https://evil.example"));
        let list = AllowedOrigins::parse(" https://App.example/ ,http://localhost:5173");
        assert!(list.allows("https://app.example"));
        assert!(list.allows("http://localhost:5173"));
        assert!(!list.allows("http://localhost:5174"));
        assert!(!list.allows("https://app.example.evil.com"));
        assert!(!list.allows("null"));
        assert!(!AllowedOrigins::parse("").allows("https://app.example"));
    }

    const NOW: Millis = Millis(1_700_000_000_000);

    #[test]
    fn accepts_a_valid_token() {
        let t = sign_jwt(
            &json!({"room":"lobby","sub":"u1","exp":1_700_000_100,"meta":{"name":"Ann"}}),
            b"k",
        );
        let c = verify_jwt(&t, b"k", NOW).unwrap();
        assert!(c.admits("lobby"));
        assert!(!c.admits("other"));
        assert_eq!(
            c.peer_meta().unwrap().as_json(),
            r#"{"name":"Ann","sub":"u1"}"#
        );
    }

    #[test]
    fn matches_an_independent_implementation() {
        // Made with Python's hmac/hashlib/base64 modules from {"room":"*","exp":1700000100}, key "k".
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoiKiIsImV4cCI6MTcwMDAwMDEwMH0.YDwBZCRe39_qDQSHeelBYzYZ2NLv1b2HgUasMNNbvBc";
        let c = verify_jwt(t, b"k", NOW).unwrap();
        assert!(c.admits("anything"));
    }

    #[test]
    fn refuses_bad_tokens() {
        let good = json!({"room":"*","exp":1_700_000_100});
        let t = sign_jwt(&good, b"k");
        assert_eq!(verify_jwt(&t, b"other", NOW), Err(AuthError::BadSignature));
        let expired = sign_jwt(&json!({"room":"*","exp":1_699_999_999}), b"k");
        assert_eq!(verify_jwt(&expired, b"k", NOW), Err(AuthError::Expired));
        let early = sign_jwt(
            &json!({"room":"*","exp":1_700_000_100,"nbf":1_700_000_050}),
            b"k",
        );
        assert_eq!(verify_jwt(&early, b"k", NOW), Err(AuthError::NotYetValid));
        let no_exp = sign_jwt(&json!({"room":"*"}), b"k");
        assert!(matches!(
            verify_jwt(&no_exp, b"k", NOW),
            Err(AuthError::Malformed(_))
        ));
        let no_room = sign_jwt(&json!({"exp":1_700_000_100}), b"k");
        assert!(matches!(
            verify_jwt(&no_room, b"k", NOW),
            Err(AuthError::Malformed(_))
        ));
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(9000)] {
            assert!(
                matches!(verify_jwt(junk, b"k", NOW), Err(AuthError::Malformed(_))),
                "{junk}"
            );
        }
        // alg=none is refused even with an empty signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(good.to_string())
        );
        assert!(matches!(
            verify_jwt(&none, b"k", NOW),
            Err(AuthError::Malformed(_))
        ));
        // Tampered claims fail the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = b64.encode(json!({"room":"*","exp":9_999_999_999u64}).to_string());
        parts[1] = &forged;
        assert_eq!(
            verify_jwt(&parts.join("."), b"k", NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn meta_claim_must_be_a_small_object() {
        let t = sign_jwt(&json!({"room":"*","exp":1_700_000_100,"meta":[1]}), b"k");
        assert!(verify_jwt(&t, b"k", NOW).unwrap().peer_meta().is_err());
        let t = sign_jwt(
            &json!({"room":"*","exp":1_700_000_100,"meta":{"x":"y".repeat(2000)}}),
            b"k",
        );
        assert!(verify_jwt(&t, b"k", NOW).unwrap().peer_meta().is_err());
    }
}
