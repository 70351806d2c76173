//! Configuration from `[vars]` and secrets, with the documented defaults.

use switchboard_proto::ice::{IceConfig, split_urls};
use switchboard_proto::limits::Limits;
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
        max_frame_bytes: number(env, "MAX_FRAME_BYTES", d.max_frame_bytes),
        rate_per_s: number(env, "RATE_PER_S", d.rate_per_s),
        rate_burst: number(env, "RATE_BURST", d.rate_burst),
        queue_max_frames: number(env, "QUEUE_MAX_FRAMES", d.queue_max_frames),
        queue_max_bytes: number(env, "QUEUE_MAX_BYTES", d.queue_max_bytes),
        room_queue_max_bytes: number(env, "ROOM_QUEUE_MAX_BYTES", d.room_queue_max_bytes),
        checkpoint_ms: number(env, "CHECKPOINT_MS", d.checkpoint_ms).clamp(10, 60_000),
        flush_after_ms: number(env, "FLUSH_AFTER_MS", d.flush_after_ms),
    }
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

/// `JWT_SECRET`: when set, joining and ICE servers need a token.
pub fn jwt_secret(env: &Env) -> Option<String> {
    string(env, "JWT_SECRET")
}

/// `ADMIN_TOKEN`: bearer token for the stats endpoint.
pub fn admin_token(env: &Env) -> Option<String> {
    string(env, "ADMIN_TOKEN")
}
