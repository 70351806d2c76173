//! Browsers on other origins: CORS on the HTTP API (preflight, headers on success and on errors so
//! pages can read the JSON error), and joins from an `Origin` outside `ALLOWED_ORIGINS` refused
//! with 403 `forbidden_origin` (cross-site WebSocket hijacking). `scripts/e2e.sh` starts the
//! open instance with `ALLOWED_ORIGINS` = `$SWITCHBOARD_ALLOWED_ORIGIN`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use futures_util::StreamExt as _;
use serde_json::Value;
use switchboard_tests::{DEADLINE, env, unique_room, ws_url};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const FOREIGN: &str = "https://evil.example";

fn allowed_origin() -> String {
    std::env::var("SWITCHBOARD_ALLOWED_ORIGIN").expect("run through scripts/e2e.sh")
}

/// Status, headers (lowercase names) and body of one request.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let v: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        v["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = match method {
        "OPTIONS" => ureq::options(url),
        _ => ureq::get(url),
    }
    .config()
    .http_status_as_error(false)
    .build();
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

fn upgrade(path: &str, origin: &str) -> Answer {
    request(
        "GET",
        &format!("{}{path}", env().open),
        &[
            ("origin", origin),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
}

#[test]
fn preflight_names_methods_headers_and_max_age() {
    let origin = allowed_origin();
    let a = request(
        "OPTIONS",
        &format!("{}/v1/ice-servers", env().open),
        &[
            ("origin", &origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(a.header("access-control-allow-origin"), Some(&*origin));
    assert!(
        a.header("access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
    assert!(
        a.header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase()
            .contains("authorization")
    );
    assert_eq!(a.header("access-control-max-age"), Some("86400"));
    assert!(a.header("vary").unwrap().contains("Origin"));

    let foreign = request(
        "OPTIONS",
        &format!("{}/v1/ice-servers", env().open),
        &[
            ("origin", FOREIGN),
            ("access-control-request-method", "GET"),
        ],
    );
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
}

#[test]
fn answers_and_errors_carry_cors_headers() {
    let origin = allowed_origin();
    let base = env().open;
    for (path, status, code) in [
        ("/v1/ice-servers", 200, ""),
        ("/v1/ice-servers?trace_id=NOT-A-TRACE", 400, "bad_request"),
        ("/v1/rooms/lobby", 426, "upgrade_required"),
        ("/v1/nothing-here", 404, "not_found"),
    ] {
        let a = request("GET", &format!("{base}{path}"), &[("origin", &origin)]);
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_eq!(a.error_code(), code, "{path}");
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some(&*origin),
            "{path}"
        );
        assert!(a.header("vary").unwrap().contains("Origin"), "{path}");
        assert!(
            a.header("access-control-expose-headers")
                .unwrap()
                .contains("Retry-After"),
            "{path}"
        );
    }
    // An answer that comes from the room object (its headers are immutable) gets them too.
    let bearer = format!("Bearer {}", env().admin_token);
    let stats = request(
        "GET",
        &format!("{base}/v1/rooms/{}/stats", unique_room("cors")),
        &[("origin", &origin), ("authorization", &bearer)],
    );
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert_eq!(stats.header("access-control-allow-origin"), Some(&*origin));
    assert!(stats.header("vary").unwrap().contains("Origin"));
    assert_eq!(stats.header("content-type"), Some("application/json"));
    // Without Origin (a native client) nothing changes but Vary.
    let a = request("GET", &format!("{base}/v1/ice-servers"), &[]);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), None);
    // A foreign page may not mint credentials either.
    let a = request(
        "GET",
        &format!("{base}/v1/ice-servers"),
        &[("origin", FOREIGN)],
    );
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (403, "forbidden_origin")
    );
    assert_eq!(a.header("access-control-allow-origin"), None);
}

#[test]
fn joins_from_a_foreign_origin_are_refused() {
    let room = unique_room("origin");
    let a = upgrade(&format!("/v1/rooms/{room}"), FOREIGN);
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.error_code(), "forbidden_origin");
    // Case and trailing details of the allowed origin matter: a look-alike is foreign.
    let lookalike = format!("{}.evil.example", allowed_origin());
    assert_eq!(
        upgrade(&format!("/v1/rooms/{room}"), &lookalike).error_code(),
        "forbidden_origin"
    );
}

#[tokio::test]
async fn joins_from_an_allowed_origin_or_without_origin_are_welcomed() {
    let room = unique_room("origin");
    let url = ws_url(&env().open, &format!("/v1/rooms/{room}"));
    for origin in [Some(allowed_origin()), None] {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(o) = &origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(o).unwrap());
        }
        let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("join with origin {origin:?} refused: {e}"));
        let first = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no welcome")
            .unwrap()
            .unwrap();
        let Message::Text(text) = first else {
            panic!("expected text, got {first:?}")
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["type"], "welcome", "{v}");
    }
}
