//! Minting TURN credentials is rate-limited per stable user (the `ICE_RATE_LIMITER` binding,
//! 30 per 60 s in wrangler.toml): past the limit `/v1/ice-servers` answers 429 `rate_limited` with
//! `Retry-After` and `retry_after_ms`, while other clients keep getting credentials.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use switchboard_tests::{env, http_get};

/// `limit` in wrangler.toml's `[[ratelimits]]`.
const LIMIT: usize = 30;

#[test]
fn minting_past_the_limit_gets_429_with_retry_after() {
    let e = env();
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    let ip = format!("198.19.{}.{}", b[0], b[1]);
    let url = format!("{}/v1/ice-servers", e.open);
    // The limiter counts in fixed windows: at most LIMIT pass per window, 2 × LIMIT if a window
    // boundary falls inside the loop. Either way a refusal comes within 2 × LIMIT + 1 calls.
    let mut granted = 0;
    let refusal = loop {
        let r = ureq::get(&url)
            .header("cf-connecting-ip", &ip)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        if r.status().as_u16() == 200 {
            granted += 1;
            assert!(granted <= 2 * LIMIT, "never limited after {granted} mints");
            continue;
        }
        break r;
    };
    // A fresh client gets at least the whole limit before the first refusal.
    assert!(granted >= LIMIT, "refused after only {granted} mints");
    let mut refusal = refusal;
    assert_eq!(refusal.status().as_u16(), 429);
    let retry_after: u64 = refusal
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&refusal.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let ms = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(ms > 0 && ms <= 60_000, "{body}");
    assert_eq!(retry_after, ms.div_ceil(1000));

    // Another client is unaffected.
    let other = http_get(&url, &[("cf-connecting-ip", "198.19.255.255")]);
    assert_eq!(other.status, 200, "{}", other.body);
}
