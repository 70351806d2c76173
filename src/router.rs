//! The Worker's HTTP surface: routing, authentication, ICE servers, and the
//! hand-off of room requests to the room's Durable Object.

use switchboard_proto::auth::{self, AuthError, Claims};
use switchboard_proto::{ErrorCode, Meta, PeerId, RoomName, ice};
use worker::{Env, Headers, Method, Request, RequestInit, Response, Result, Url};

use crate::config;
use crate::http::{self, error, json, now, query_param};
use crate::room::{Q_LAST_SEQ, Q_META, Q_RESUME, Q_RETRY_AFTER_MS, Q_ROOM};

/// Routes one request.
pub async fn handle(req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    let path = url.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["healthz"] => json(200, r#"{"ok":true}"#),
        ["v1", "ice-servers"] => {
            if req.method() != Method::Get {
                return error(ErrorCode::MethodNotAllowed, "use GET");
            }
            ice_servers(&req, &url, env)
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
            join(req, &url, env, room).await
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
            drain(req, &url, env, room).await
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

fn ice_servers(req: &Request, url: &Url, env: &Env) -> Result<Response> {
    let claims = match authenticate(req, url, env, None)? {
        Ok(c) => c,
        Err(e) => return unauthorized(e, None),
    };
    // The TURN username names the user when known, else a random id.
    let user = match claims.and_then(|c| c.sub) {
        Some(sub) => sub
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(64)
            .collect(),
        None => PeerId::from_random(http::random()?).to_string(),
    };
    let list = ice::ice_servers(&config::ice(env), &user, now());
    let body = serde_json::json!({ "iceServers": list }).to_string();
    json(200, &body)
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
    let mut internal = internal_url("join", &room)?;
    internal
        .query_pairs_mut()
        .append_pair(Q_META, meta.as_json());
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

async fn stats(req: Request, env: &Env, room: RoomName) -> Result<Response> {
    let presented = req
        .headers()
        .get("authorization")?
        .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned));
    let allowed = match (config::admin_token(env), presented) {
        (Some(expected), Some(given)) => http::secret_eq(&expected, given.trim()),
        _ => false,
    };
    if !allowed {
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
