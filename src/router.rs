//! The Worker's HTTP surface: routing, CORS and `Origin` checks, authentication, ICE servers,
//! and the hand-off of room requests to the room's Durable Object.

use switchboard_proto::auth::{self, AuthError, Claims};
use switchboard_proto::ice::TurnUser;
use switchboard_proto::{ErrorCode, Meta, RoomName, ice, sfu_token};
use worker::{Env, Headers, Method, Request, RequestInit, Response, Result, Url};

use crate::config;
use crate::http::{self, Cors, error, json, now, query_param};
use crate::registry;
use crate::room::{
    Q_CAPS, Q_LAST_SEQ, Q_META, Q_PRESENCE, Q_REGION, Q_RESUME, Q_RETRY_AFTER_MS, Q_ROOM, Q_USER,
};
use switchboard_proto::registry as registry_core;

/// Routes one request. Every answer but a WebSocket upgrade carries `Vary: Origin`, and the CORS
/// headers when the request's `Origin` is allowed, errors included.
pub async fn handle(req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    let origin = req.headers().get("origin")?;
    let cors = Cors::classify(origin.as_deref(), &url, &config::allowed_origins(env));
    let path = url.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let known = matches!(
        segments.as_slice(),
        ["healthz"]
            | ["v1", "ice-servers"]
            | ["v1", "sfu-token"]
            | ["v1", "rooms", _]
            | ["v1", "rooms", _, _]
    );
    if req.method() == Method::Options && known {
        return cors.preflight();
    }
    // A page on a foreign origin may neither join (cross-site WebSocket hijacking) nor mint
    // credentials; requests without Origin (native clients) are not browser requests.
    if cors == Cors::Forbidden && segments.first() == Some(&"v1") {
        return http::forbidden_origin();
    }
    let resp = match route(req, &url, &segments, env).await {
        Ok(resp) => resp,
        // Answered here rather than in `fetch` so that the page can read this error too.
        Err(e) => {
            worker::console_error!(
                "{}",
                http::log_line("error", None, None, Some(&e.to_string()))
            );
            error(ErrorCode::Internal, "internal error")?
        }
    };
    cors.apply(resp)
}

async fn route(req: Request, url: &Url, segments: &[&str], env: &Env) -> Result<Response> {
    match segments {
        ["healthz"] => json(200, r#"{"ok":true}"#),
        ["v1", "ice-servers"] => {
            if req.method() != Method::Get {
                return error(ErrorCode::MethodNotAllowed, "use GET");
            }
            ice_servers(&req, url, env).await
        }
        ["v1", "sfu-token"] => {
            if req.method() != Method::Get {
                return error(ErrorCode::MethodNotAllowed, "use GET");
            }
            refresh_sfu_token(&req, url, env).await
        }
        ["v1", "relays", "heartbeat"] => relay_heartbeat(req, env).await,
        ["v1", "relays", "ws"] => relay_socket(&req, env).await,
        ["v1", "relays"] => {
            if !is_admin(&req, env)? {
                return error(
                    ErrorCode::Unauthorized,
                    "the relay list needs Authorization: Bearer <ADMIN_TOKEN>",
                );
            }
            registry::list_for_admin(env).await
        }
        ["v1", "rooms", room] => {
            let Some(room) = RoomName::parse(room) else {
                return invalid_room();
            };
            if req.method() != Method::Get {
                return error(
                    ErrorCode::MethodNotAllowed,
                    "use GET with Upgrade: websocket",
                );
            }
            join(req, url, env, room).await
        }
        ["v1", "rooms", room, "stats"] => {
            let Some(room) = RoomName::parse(room) else {
                return invalid_room();
            };
            stats(req, env, room).await
        }
        ["v1", "rooms", room, "drain"] => {
            let Some(room) = RoomName::parse(room) else {
                return invalid_room();
            };
            drain(req, url, env, room).await
        }
        _ => error(ErrorCode::NotFound, "no such endpoint"),
    }
}

fn invalid_room() -> Result<Response> {
    error(
        ErrorCode::InvalidRoom,
        "room names match [A-Za-z0-9_-]{1,64}",
    )
}

/// The token from `?token=` or `Authorization: Bearer`.
fn presented_token(req: &Request, url: &Url) -> Result<Option<String>> {
    if let Some(t) = query_param(url, "token") {
        return Ok(Some(t));
    }
    Ok(req
        .headers()
        .get("authorization")?
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_owned())))
}

/// Verifies the caller when `JWT_SECRET` is set. `Ok(None)`: rooms are open.
fn authenticate(
    req: &Request,
    url: &Url,
    env: &Env,
    room: Option<&RoomName>,
) -> Result<std::result::Result<Option<Claims>, AuthError>> {
    let Some(secret) = config::jwt_secret(env) else {
        return Ok(Ok(None));
    };
    let Some(token) = presented_token(req, url)? else {
        return Ok(Err(AuthError::Missing));
    };
    let verified = auth::verify_jwt(&token, secret.as_bytes(), now()).and_then(|c| match room {
        Some(r) if !c.admits(r.as_str()) => Err(AuthError::WrongRoom),
        _ => Ok(c),
    });
    Ok(verified.map(Some))
}

fn unauthorized(e: AuthError, room: Option<&RoomName>) -> Result<Response> {
    worker::console_log!(
        "{}",
        http::log_line(
            "unauthorized",
            room.map(RoomName::as_str),
            None,
            Some(e.message())
        )
    );
    error(ErrorCode::Unauthorized, e.message())
}

/// The stable user a request acts for: the JWT's `sub` (sanitized) when there is one, else the
/// per-client id derived from `CF-Connecting-IP` (never the address itself).
fn stable_user(req: &Request, env: &Env, claims: Option<&Claims>) -> Result<TurnUser> {
    if let Some(user) = claims
        .and_then(|c| c.sub.as_deref())
        .and_then(TurnUser::from_sub)
    {
        return Ok(user);
    }
    let ip = req.headers().get("cf-connecting-ip")?.unwrap_or_default();
    Ok(TurnUser::from_client_ip(
        &config::user_id_key(env),
        ip.trim(),
    ))
}

/// Counts one credential mint for `user` against the `ICE_RATE_LIMITER` binding. `Some(ms)`:
/// over the limit, retry after `ms`. A missing or failing binding is logged and lets the request
/// through: the limiter protects the relay's quota, it is not the authentication.
async fn mint_limited(env: &Env, user: &TurnUser) -> Option<u64> {
    let outcome = match env.rate_limiter(config::ICE_RATE_LIMITER) {
        Ok(limiter) => limiter.limit(user.as_str().to_owned()).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(o) if o.success => None,
        Ok(_) => Some(config::ice_rate_limit_period_s(env).saturating_mul(1000)),
        Err(e) => {
            worker::console_error!(
                "{}",
                http::log_line("rate_limiter_unavailable", None, None, Some(&e.to_string()))
            );
            None
        }
    }
}

async fn ice_servers(req: &Request, url: &Url, env: &Env) -> Result<Response> {
    let claims = match authenticate(req, url, env, None)? {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    let trace_id = match query_param(url, "trace_id") {
        None => None,
        Some(t) if ice::is_trace_id(&t) => Some(t),
        Some(_) => {
            return error(
                ErrorCode::BadRequest,
                "trace_id must be 16 lowercase hex characters",
            );
        }
    };
    let user = stable_user(req, env, claims.as_ref())?;
    let cfg = registry::ice_config(env, req).await;
    let mints_turn = cfg.turn_secret.is_some() && !cfg.turn_urls.is_empty();
    if mints_turn && let Some(retry_after_ms) = mint_limited(env, &user).await {
        return http::error_retry(
            ErrorCode::RateLimited,
            "too many TURN credential requests from this client; retry later",
            retry_after_ms,
        );
    }
    let list = ice::ice_servers_traced(&cfg, user.as_str(), trace_id.as_deref(), now());
    let body = serde_json::json!({ "iceServers": list }).to_string();
    json(200, &body)
}

/// `GET /v1/sfu-token?room=R&sfu_token=<current>`: a fresh session token for the peer the
/// current (unexpired) token names, in the same room. The current token proves which peer asks
/// (anyone could name a peer id, and a session for a peer id replaces that peer's session on the
/// relay); the JWT, when `JWT_SECRET` is set, is checked as for joining the room.
async fn refresh_sfu_token(req: &Request, url: &Url, env: &Env) -> Result<Response> {
    let Some(room) = query_param(url, "room").and_then(|r| RoomName::parse(&r)) else {
        return invalid_room();
    };
    if let Err(e) = authenticate(req, url, env, Some(&room))? {
        return unauthorized(e, Some(&room));
    }
    let Some(cfg) = sfu_config_for(env, &room).await? else {
        return error(ErrorCode::NotFound, "no SFU is configured (SFU_URLS)");
    };
    let Some(current) = query_param(url, "sfu_token") else {
        return error(
            ErrorCode::Unauthorized,
            "sfu_token (the current session token) is required",
        );
    };
    let t = now();
    let claims = match sfu_token::verify(cfg.secret.as_bytes(), &current, t) {
        Ok(c) => c,
        Err(e) => return error(ErrorCode::Unauthorized, e.message()),
    };
    if claims.room != room {
        return error(
            ErrorCode::Unauthorized,
            "the session token is for another room",
        );
    }
    let grant = cfg.grant(&room, &claims.peer_id, t);
    let body =
        serde_json::to_string(&grant).map_err(|e| worker::Error::RustError(e.to_string()))?;
    json(200, &body)
}

/// The SFU grant configuration for `room`: with the relay registry on, the node the room
/// pinned (asked of the room, which re-pins first if that node died); else `SFU_URLS`.
async fn sfu_config_for(env: &Env, room: &RoomName) -> Result<Option<sfu_token::SfuConfig>> {
    if config::registry_secret(env).is_none() {
        return Ok(config::sfu(env));
    }
    let mut resp = forward(env, room, internal_url("relays", room)?, Headers::new()).await?;
    #[derive(serde::Deserialize)]
    struct Answer {
        sfu: Option<String>,
    }
    let answer: Answer = resp.json().await?;
    let Some(base) = answer.sfu else {
        return Ok(None);
    };
    Ok(sfu_token::SfuConfig::new(
        &[base],
        config::string(env, "TURN_SECRET").as_deref(),
        config::sfu_token_ttl_s(env),
    ))
}

async fn join(req: Request, url: &Url, env: &Env, room: RoomName) -> Result<Response> {
    let upgrade = req.headers().get("upgrade")?.unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return error(
            ErrorCode::UpgradeRequired,
            "this endpoint needs Upgrade: websocket",
        );
    }
    let claims = match authenticate(&req, url, env, Some(&room))? {
        Ok(c) => c,
        Err(e) => return unauthorized(e, Some(&room)),
    };
    let meta = match &claims {
        Some(c) => match c.peer_meta() {
            Ok(m) => m,
            Err(e) => return unauthorized(e, Some(&room)),
        },
        None => match query_param(url, "meta") {
            None => Meta::empty(),
            Some(text) => match Meta::parse(&text) {
                Ok(m) => m,
                Err(_) => {
                    return error(ErrorCode::InvalidMeta, "meta must be JSON of at most 1 KiB");
                }
            },
        },
    };
    // Parameters travel to the room in the internal URL's query, which carries
    // any UTF-8 (header values would refuse non-Latin-1 meta).
    let user = stable_user(&req, env, claims.as_ref())?;
    let mut internal = internal_url("join", &room)?;
    internal
        .query_pairs_mut()
        .append_pair(Q_META, meta.as_json())
        .append_pair(Q_USER, user.as_str());
    if let Some(region) = registry::client_region(env, &req) {
        internal
            .query_pairs_mut()
            .append_pair(Q_REGION, region.as_str());
    }
    if let Some(caps) = query_param(url, "caps") {
        // Capability names are short words; anything longer is cut, not refused.
        let caps: String = caps.chars().take(64).collect();
        internal.query_pairs_mut().append_pair(Q_CAPS, &caps);
    }
    match query_param(url, "presence").as_deref() {
        None | Some("on") => {}
        Some("off") => {
            internal.query_pairs_mut().append_pair(Q_PRESENCE, "off");
        }
        Some(_) => return error(ErrorCode::BadRequest, "presence must be on or off"),
    }
    if let Some(token) = query_param(url, "resume") {
        // Tokens are hex; anything else cannot match and is dropped here.
        let token: String = token
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(128)
            .collect();
        internal.query_pairs_mut().append_pair(Q_RESUME, &token);
        if let Some(n) = query_param(url, "last_seq") {
            if n.parse::<u64>().is_err() {
                return error(
                    ErrorCode::BadRequest,
                    "last_seq must be a non-negative integer",
                );
            }
            internal.query_pairs_mut().append_pair(Q_LAST_SEQ, &n);
        }
    }
    let headers = Headers::new();
    headers.set("upgrade", "websocket")?;
    forward(env, &room, internal, headers).await
}

/// `https://room.internal/{action}?room=…`: the request the room's object receives.
fn internal_url(action: &str, room: &RoomName) -> Result<Url> {
    let mut url = Url::parse("https://room.internal/")
        .and_then(|u| u.join(action))
        .map_err(|e| worker::Error::RustError(e.to_string()))?;
    url.query_pairs_mut().append_pair(Q_ROOM, room.as_str());
    Ok(url)
}

/// Whether the request carries `Authorization: Bearer <ADMIN_TOKEN>`.
fn is_admin(req: &Request, env: &Env) -> Result<bool> {
    let presented = req
        .headers()
        .get("authorization")?
        .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned));
    Ok(match (config::admin_token(env), presented) {
        (Some(expected), Some(given)) => http::secret_eq(&expected, given.trim()),
        _ => false,
    })
}

/// `POST /v1/relays/heartbeat`: a relay node renews its lease (see `registry`).
async fn relay_heartbeat(mut req: Request, env: &Env) -> Result<Response> {
    if req.method() != Method::Post {
        return error(ErrorCode::MethodNotAllowed, "use POST");
    }
    if config::registry_secret(env).is_none() {
        return error(
            ErrorCode::NotFound,
            "the relay registry is off (REGISTRY_SECRET is not set)",
        );
    }
    let signature = req.headers().get(registry_core::SIGNATURE_HEADER)?;
    let body = req.bytes().await?;
    if body.len() > registry_core::MAX_HEARTBEAT_BYTES {
        return error(ErrorCode::PayloadTooLarge, "heartbeat body too large");
    }
    registry::forward_heartbeat(env, signature, body).await
}

/// `GET /v1/relays/ws` (Upgrade): a relay node's WebSocket for heartbeats, opened only with
/// the node id header signed under the registration secret (see `registry`).
async fn relay_socket(req: &Request, env: &Env) -> Result<Response> {
    if req.method() != Method::Get {
        return error(
            ErrorCode::MethodNotAllowed,
            "use GET with Upgrade: websocket",
        );
    }
    let Some(secret) = config::registry_secret(env) else {
        return error(
            ErrorCode::NotFound,
            "the relay registry is off (REGISTRY_SECRET is not set)",
        );
    };
    let upgrade = req.headers().get("upgrade")?.unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return error(
            ErrorCode::UpgradeRequired,
            "this endpoint needs Upgrade: websocket",
        );
    }
    let node = req.headers().get(registry_core::NODE_HEADER)?;
    let signature = req.headers().get(registry_core::SIGNATURE_HEADER)?;
    match registry_core::verify_upgrade(
        secret.as_bytes(),
        node.as_deref(),
        signature.as_deref(),
        http::now(),
    ) {
        Ok(node) => registry::open_socket(env, &node).await,
        Err(e) => registry::refused(e),
    }
}

async fn stats(req: Request, env: &Env, room: RoomName) -> Result<Response> {
    if !is_admin(&req, env)? {
        return error(
            ErrorCode::Unauthorized,
            "stats need Authorization: Bearer <ADMIN_TOKEN>",
        );
    }
    forward(env, &room, internal_url("stats", &room)?, Headers::new()).await
}

/// `POST /v1/rooms/{room}/drain?retry_after_ms=N` (admin): closes every socket
/// of the room with 4003; the peers stay resumable.
async fn drain(req: Request, url: &Url, env: &Env, room: RoomName) -> Result<Response> {
    if req.method() != Method::Post {
        return error(ErrorCode::MethodNotAllowed, "use POST");
    }
    if !is_admin(&req, env)? {
        return error(
            ErrorCode::Unauthorized,
            "drain needs Authorization: Bearer <ADMIN_TOKEN>",
        );
    }
    let retry = match query_param(url, Q_RETRY_AFTER_MS) {
        None => 5000,
        Some(n) => match n.parse::<u64>() {
            Ok(n) => n.min(switchboard_proto::room::MAX_RETRY_AFTER_MS),
            Err(_) => {
                return error(
                    ErrorCode::BadRequest,
                    "retry_after_ms must be a non-negative integer",
                );
            }
        },
    };
    let mut internal = internal_url("drain", &room)?;
    internal
        .query_pairs_mut()
        .append_pair(Q_RETRY_AFTER_MS, &retry.to_string());
    forward(env, &room, internal, Headers::new()).await
}

async fn forward(env: &Env, room: &RoomName, url: Url, headers: Headers) -> Result<Response> {
    let stub = env
        .durable_object("ROOM")?
        .id_from_name(room.as_str())?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let inner = Request::new_with_init(url.as_str(), &init)?;
    stub.fetch_with_request(inner).await
}
