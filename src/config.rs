//! Configuration from `[vars]` and secrets, with the documented defaults.

use switchboard_proto::auth::AllowedOrigins;
use switchboard_proto::ice::{IceConfig, split_urls};
use switchboard_proto::limits::Limits;
use switchboard_proto::sfu_token::{self, SfuConfig};
use worker::Env;

/// Reads a var or secret; empty counts as unset.
pub fn string(env: &Env, name: &str) -> Option<String> {
    let v = env
        .var(name)
        .map(|v| v.to_string())
        .or_else(|_| env.secret(name).map(|s| s.to_string()))
        .ok()?;
    let v = v.trim().to_owned();
    (!v.is_empty()).then_some(v)
}

fn number<T: std::str::FromStr + Copy>(env: &Env, name: &str, default: T) -> T {
    match string(env, name) {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|_| {
            worker::console_error!(
                "{{\"level\":\"error\",\"event\":\"config\",\"detail\":\"{name} is not a number; using the default\"}}"
            );
            default
        }),
    }
}

/// Room limits (`HEARTBEAT_MS`, `RESUME_WINDOW_MS`, `MAX_PEERS`, …).
pub fn limits(env: &Env) -> Limits {
    let d = Limits::default();
    Limits {
        heartbeat_ms: number(env, "HEARTBEAT_MS", d.heartbeat_ms).max(100),
        resume_window_ms: number(env, "RESUME_WINDOW_MS", d.resume_window_ms),
        max_peers: number(env, "MAX_PEERS", d.max_peers).clamp(1, 32_000),
        presence_max_peers: number(env, "PRESENCE_MAX_PEERS", d.presence_max_peers)
            .clamp(1, 32_000),
        max_frame_bytes: number(env, "MAX_FRAME_BYTES", d.max_frame_bytes),
        rate_per_s: number(env, "RATE_PER_S", d.rate_per_s),
        rate_burst: number(env, "RATE_BURST", d.rate_burst),
        queue_max_frames: number(env, "QUEUE_MAX_FRAMES", d.queue_max_frames),
        queue_max_bytes: number(env, "QUEUE_MAX_BYTES", d.queue_max_bytes),
        room_queue_max_bytes: number(env, "ROOM_QUEUE_MAX_BYTES", d.room_queue_max_bytes),
        flush_after_ms: number(env, "FLUSH_AFTER_MS", d.flush_after_ms),
        ack_delay_ms: number(env, "ACK_DELAY_MS", d.ack_delay_ms).clamp(10, 60_000),
    }
    .normalized()
}

/// ICE servers (`STUN_URLS`, `TURN_URLS`, `TURN_SECRET`, `TURN_TTL_S`).
pub fn ice(env: &Env) -> IceConfig {
    IceConfig {
        stun_urls: string(env, "STUN_URLS")
            .map(|s| split_urls(&s))
            .unwrap_or_default(),
        turn_urls: string(env, "TURN_URLS")
            .map(|s| split_urls(&s))
            .unwrap_or_default(),
        turn_secret: string(env, "TURN_SECRET"),
        ttl_s: number(env, "TURN_TTL_S", 3600),
    }
}

/// The relays' session endpoints (`SFU_URLS`, `TURN_SECRET`, `SFU_TOKEN_TTL_S`); `None` unless
/// both `SFU_URLS` (with an `http(s)://` entry) and `TURN_SECRET` are set.
pub fn sfu(env: &Env) -> Option<SfuConfig> {
    let urls = split_urls(&string(env, "SFU_URLS")?);
    SfuConfig::new(
        &urls,
        string(env, "TURN_SECRET").as_deref(),
        sfu_token_ttl_s(env),
    )
}

/// `SFU_TOKEN_TTL_S`: relay session token lifetime.
pub fn sfu_token_ttl_s(env: &Env) -> u64 {
    number(env, "SFU_TOKEN_TTL_S", sfu_token::DEFAULT_TTL_S)
}

/// `JWT_SECRET`: when set, joining and ICE servers need a token.
pub fn jwt_secret(env: &Env) -> Option<String> {
    string(env, "JWT_SECRET")
}

/// `ADMIN_TOKEN`: bearer token for the stats endpoint.
pub fn admin_token(env: &Env) -> Option<String> {
    string(env, "ADMIN_TOKEN")
}

/// `ALLOWED_ORIGINS`: browser origins that may call the API and join rooms. Unset: none but the
/// Worker's own origin; `*`: every origin (the dev default in wrangler.toml).
pub fn allowed_origins(env: &Env) -> AllowedOrigins {
    AllowedOrigins::parse(&string(env, "ALLOWED_ORIGINS").unwrap_or_default())
}

/// The key for open-mode user ids (`ip-<HMAC-SHA256(key, client IP)>`): `USER_ID_SECRET`, else
/// `TURN_SECRET`, else a random key drawn once per isolate (ids are then stable only within one
/// isolate, and still never reveal the address).
pub fn user_id_key(env: &Env) -> Vec<u8> {
    if let Some(k) = string(env, "USER_ID_SECRET").or_else(|| string(env, "TURN_SECRET")) {
        return k.into_bytes();
    }
    static ISOLATE_KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    ISOLATE_KEY
        .get_or_init(|| crate::http::random().unwrap_or([0u8; 32]))
        .to_vec()
}

/// Binding name of the Workers rate limiter for TURN credential minting (`[[ratelimits]]`).
pub const ICE_RATE_LIMITER: &str = "ICE_RATE_LIMITER";

/// `ICE_RATE_LIMIT_PERIOD_S`: the `period` of the `ICE_RATE_LIMITER` binding (10 or 60), told
/// to refused clients as their retry delay.
pub fn ice_rate_limit_period_s(env: &Env) -> u64 {
    number(env, "ICE_RATE_LIMIT_PERIOD_S", 60)
}

/// `REGISTRY_SECRET`: signs relay heartbeats; without it the relay registry is off and
/// ICE servers come from `STUN_URLS`/`TURN_URLS` only.
pub fn registry_secret(env: &Env) -> Option<String> {
    string(env, "REGISTRY_SECRET")
}

/// `RELAY_LEASE_MS`: how long one heartbeat keeps a relay node listed (default
/// [`DEFAULT_LEASE_MS`](switchboard_proto::registry::DEFAULT_LEASE_MS), 5000).
pub fn relay_lease_ms(env: &Env) -> u64 {
    number(
        env,
        "RELAY_LEASE_MS",
        switchboard_proto::registry::DEFAULT_LEASE_MS,
    )
    .max(1_000)
}

/// `TRUST_REGION_HEADER`: take the client's region from `X-Switchboard-Region` (local
/// development and tests, where `request.cf` is absent). Off by default.
pub fn trust_region_header(env: &Env) -> bool {
    string(env, "TRUST_REGION_HEADER").is_some_and(|v| v == "true" || v == "1")
}
