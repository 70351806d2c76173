//! HTTP helpers: JSON bodies, error responses, CORS headers, the clock and random ids.

use switchboard_proto::auth::AllowedOrigins;
use switchboard_proto::{ErrorCode, Millis, wire};
use worker::{Headers, Response, Result, Url};

/// A JSON response with `status`.
pub fn json(status: u16, body: &str) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}

/// `{"error":{"code":…,"message":…}}` with the code's HTTP status.
pub fn error(code: ErrorCode, message: &str) -> Result<Response> {
    json(code.http_status(), &wire::http_error_body(code, message))
}

/// An error answer that tells the client when to retry (HTTP 429/503): a `Retry-After` header in
/// whole seconds, rounded up, and `retry_after_ms` in the JSON error body.
pub fn error_retry(code: ErrorCode, message: &str, retry_after_ms: u64) -> Result<Response> {
    let body = serde_json::json!({
        "error": { "code": code.as_str(), "message": message, "retry_after_ms": retry_after_ms }
    })
    .to_string();
    let resp = json(code.http_status(), &body)?;
    resp.headers()
        .set("retry-after", &retry_after_ms.div_ceil(1000).to_string())?;
    Ok(resp)
}

/// Methods the API serves, announced to CORS preflights.
const CORS_METHODS: &str = "GET, POST, OPTIONS";
/// Request headers browsers may send: `Authorization` carries the JWT.
const CORS_HEADERS: &str = "Authorization, Content-Type";
/// How long (seconds) a browser may cache a preflight answer.
const CORS_MAX_AGE_S: &str = "86400";

/// How one request stands against `ALLOWED_ORIGINS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` header: not a cross-origin browser request; no CORS headers needed.
    NoOrigin,
    /// An allowed origin; the value is the `Access-Control-Allow-Origin` to send.
    Allowed(String),
    /// An origin outside the list.
    Forbidden,
}

impl Cors {
    /// Classifies `origin` for a request to `url` under `allowed`. The Worker's own origin (the
    /// demo page it serves) is always allowed.
    pub fn classify(origin: Option<&str>, url: &Url, allowed: &AllowedOrigins) -> Cors {
        let Some(origin) = origin else {
            return Cors::NoOrigin;
        };
        if *allowed == AllowedOrigins::Any {
            return Cors::Allowed("*".to_owned());
        }
        if origin.eq_ignore_ascii_case(&url.origin().ascii_serialization())
            || allowed.allows(origin)
        {
            return Cors::Allowed(origin.to_owned());
        }
        Cors::Forbidden
    }

    /// Adds `Vary: Origin` and, for an allowed origin, the CORS headers that let the page read
    /// the response (errors included). WebSocket upgrades (101) are returned as they are.
    pub fn apply(&self, resp: Response) -> Result<Response> {
        if resp.status_code() == 101 {
            return Ok(resp);
        }
        // Headers of a response fetched from the room object are immutable: copy them.
        let headers = Headers::new();
        for (k, v) in resp.headers().entries() {
            headers.append(&k, &v)?;
        }
        headers.append("vary", "Origin")?;
        if let Cors::Allowed(value) = self {
            headers.set("access-control-allow-origin", value)?;
            headers.set("access-control-expose-headers", "Retry-After")?;
        }
        Ok(resp.with_headers(headers))
    }

    /// The answer to a CORS preflight (`OPTIONS` with `Origin`): 204 with the allowed methods and
    /// headers for an allowed origin, 403 `forbidden_origin` otherwise.
    pub fn preflight(&self) -> Result<Response> {
        let resp = match self {
            Cors::Forbidden => return forbidden_origin(),
            _ => Response::empty()?.with_status(204),
        };
        let headers = Headers::new();
        headers.set("allow", CORS_METHODS)?;
        if let Cors::Allowed(_) = self {
            headers.set("access-control-allow-methods", CORS_METHODS)?;
            headers.set("access-control-allow-headers", CORS_HEADERS)?;
            headers.set("access-control-max-age", CORS_MAX_AGE_S)?;
        }
        self.apply(resp.with_headers(headers))
    }
}

/// 403 `forbidden_origin`, with `Vary: Origin` and no `Access-Control-Allow-Origin`.
pub fn forbidden_origin() -> Result<Response> {
    let resp = error(
        ErrorCode::ForbiddenOrigin,
        "this Origin is not in ALLOWED_ORIGINS",
    )?;
    resp.headers().append("vary", "Origin")?;
    Ok(resp)
}

/// The first value of query parameter `key`, percent-decoded.
pub fn query_param(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Wall-clock time from the runtime.
pub fn now() -> Millis {
    // `Date.now()`: one call, no `Date` object (worker::Date::now() makes one).
    Millis(js_sys::Date::now() as u64)
}

/// `N` random bytes from the platform CSPRNG.
pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| worker::Error::RustError(format!("getrandom: {e}")))?;
    Ok(buf)
}

/// Constant-time equality for secrets of possibly different lengths.
pub fn secret_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// One structured JSON log line. Never pass tokens, secrets or addresses.
pub fn log_line(
    event: &str,
    room: Option<&str>,
    peer: Option<&str>,
    detail: Option<&str>,
) -> String {
    serde_json::json!({
        "ts": now().0,
        "event": event,
        "room": room,
        "peer_id": peer,
        "detail": detail,
    })
    .to_string()
}
