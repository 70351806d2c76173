//! HTTP helpers: JSON bodies, error responses, the clock and random ids.

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

/// The first value of query parameter `key`, percent-decoded.
pub fn query_param(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Wall-clock time from the runtime.
pub fn now() -> Millis {
    Millis(worker::Date::now().as_millis())
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
