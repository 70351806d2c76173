//! The SFU's WHIP-style session endpoint.
//!
//! - `POST /v1/sessions[?room=R]`, `Authorization: Bearer <sfu token>`, `Content-Type:
//!   application/sdp`: opens a session; `201` with the SDP answer and `Location`.
//! - `PATCH /v1/sessions/{id}`, `Content-Type: application/trickle-ice-sdpfrag`: adds trickled
//!   candidates, `204`; with a new `a=ice-ufrag`/`a=ice-pwd` an ICE restart, `200` with the
//!   relay's new credentials as a fragment.
//! - `DELETE /v1/sessions/{id}`: ends the session; `200`.
//! - `OPTIONS`: CORS preflight; every answer allows any origin (the bearer token, not a cookie,
//!   authenticates).
//!
//! Errors are JSON `{"error": code, "message": reason}` with a status: 400 bad SDP or fragment,
//! 401 missing/bad/expired token or a token for another room, 404 unknown session, 411 chunked
//! body, 413 oversized body, 415 wrong content type, 503 with `Retry-After` at capacity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_proto::Millis;
use switchboard_proto::sfu_token::{self, Claims};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::sfu::SessionError;
use crate::sfu::SessionId;
use crate::sfu::shell::{Command, SfuHandle};
use crate::turn::Credentials;

/// Largest request body (an SDP offer is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Seconds a client is told to wait when the relay is at capacity.
const RETRY_AFTER_S: u32 = 5;

/// What the endpoint needs: the SFU thread and the shared secrets (reloaded on SIGHUP).
#[derive(Debug, Clone)]
pub struct SessionApi {
    /// The SFU thread.
    pub sfu: SfuHandle,
    /// The relay's credentials; their secrets verify session tokens.
    pub credentials: watch::Receiver<Credentials>,
}

/// Whether `path` is the session endpoint's.
pub fn owns(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or_default();
    p == "/v1/sessions" || p.starts_with("/v1/sessions/")
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn error(status: &'static str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    Response {
        status,
        content_type: "application/json",
        headers: Vec::new(),
        body,
    }
}

fn empty(status: &'static str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: String::new(),
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the rest of the request after `prefix` (what the router already read) and answers it.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    prefix: Vec<u8>,
    api: &SessionApi,
) -> std::io::Result<()> {
    let response = match read_request(stream, prefix).await? {
        Ok(req) => route(req, api).await,
        Err(r) => r,
    };
    write(stream, response).await
}

async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> std::io::Result<Result<Request, Response>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(Err(error(
                "431 Request Header Fields Too Large",
                "head_too_large",
                "request head too large",
            )));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut req = Request {
        method,
        path,
        headers,
        body: buf.get(head_end + 4..).unwrap_or_default().to_vec(),
    };
    let length = match req.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return Ok(Err(error(
                    "400 Bad Request",
                    "bad_request",
                    "bad Content-Length",
                )));
            }
        },
    };
    if req.header("transfer-encoding").is_some() {
        return Ok(Err(error(
            "411 Length Required",
            "length_required",
            "send the body with Content-Length",
        )));
    }
    if length > MAX_BODY_BYTES {
        return Ok(Err(error(
            "413 Content Too Large",
            "body_too_large",
            "the body exceeds 65536 bytes",
        )));
    }
    while req.body.len() < length {
        let mut chunk = vec![0u8; (length - req.body.len()).min(16 * 1024)];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        req.body
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    req.body.truncate(length);
    Ok(Ok(req))
}

fn now() -> Millis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    Millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn authenticate(req: &Request, api: &SessionApi) -> Result<Claims, Response> {
    let unauthorized = |code: &str, msg: &str| {
        let mut r = error("401 Unauthorized", code, msg);
        r.headers.push(("WWW-Authenticate", "Bearer".to_owned()));
        r
    };
    let Some(token) = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Err(unauthorized(
            "missing_token",
            "Authorization: Bearer <token> is required",
        ));
    };
    let secrets = api.credentials.borrow().secrets.clone();
    let keys: Vec<&[u8]> = secrets.iter().map(String::as_bytes).collect();
    let claims = sfu_token::verify_any(&keys, token, now())
        .map_err(|e| unauthorized(e.code(), e.message()))?;
    if let Some(room) = query_param(&req.path, "room")
        && room != claims.room.as_str()
    {
        return Err(unauthorized(
            "wrong_room",
            "the token does not admit to this room",
        ));
    }
    Ok(claims)
}

fn session_error(e: &SessionError) -> Response {
    match e {
        SessionError::BadOffer(_) | SessionError::NothingToForward => {
            error("400 Bad Request", "bad_sdp", &e.to_string())
        }
        SessionError::BadFragment(_) => error("400 Bad Request", "bad_fragment", &e.to_string()),
        SessionError::NotFound => error("404 Not Found", "not_found", &e.to_string()),
        SessionError::AtCapacity => unavailable(),
    }
}

fn unavailable() -> Response {
    let mut r = error(
        "503 Service Unavailable",
        "at_capacity",
        "the relay is at its session capacity",
    );
    r.headers.push(("Retry-After", RETRY_AFTER_S.to_string()));
    r
}

async fn call<T>(
    api: &SessionApi,
    make: impl FnOnce(oneshot::Sender<Result<T, SessionError>>) -> Command,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    if !api.sfu.try_send(make(tx)) {
        return Err(unavailable());
    }
    match rx.await {
        Ok(r) => r.map_err(|e| session_error(&e)),
        Err(_) => Err(unavailable()),
    }
}

fn content_type_is(req: &Request, want: &str) -> bool {
    req.header("content-type")
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

async fn route(req: Request, api: &SessionApi) -> Response {
    let path = req.path.split('?').next().unwrap_or_default().to_owned();
    let id = path.strip_prefix("/v1/sessions/");
    match (req.method.as_str(), id) {
        ("OPTIONS", _) => {
            let mut r = empty("204 No Content");
            r.headers.push((
                "Access-Control-Allow-Methods",
                "POST, PATCH, DELETE, OPTIONS".to_owned(),
            ));
            r.headers.push((
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, If-Match".to_owned(),
            ));
            r.headers.push(("Access-Control-Max-Age", "600".to_owned()));
            r
        }
        ("POST", None) => post(req, api).await.unwrap_or_else(|r| r),
        ("PATCH", Some(id)) => {
            let Some(id) = SessionId::parse(id) else {
                return session_error(&SessionError::NotFound);
            };
            if !content_type_is(&req, "application/trickle-ice-sdpfrag") {
                return error(
                    "415 Unsupported Media Type",
                    "unsupported_media_type",
                    "PATCH takes application/trickle-ice-sdpfrag",
                );
            }
            let fragment = String::from_utf8_lossy(&req.body).into_owned();
            match call(api, |reply| Command::Patch {
                id,
                fragment,
                reply,
            })
            .await
            {
                Ok(None) => empty("204 No Content"),
                Ok(Some(fragment)) => Response {
                    status: "200 OK",
                    content_type: "application/trickle-ice-sdpfrag",
                    headers: Vec::new(),
                    body: fragment,
                },
                Err(r) => r,
            }
        }
        ("DELETE", Some(id)) => {
            let Some(id) = SessionId::parse(id) else {
                return session_error(&SessionError::NotFound);
            };
            match call(api, |reply| Command::Delete { id, reply }).await {
                Ok(()) => empty("200 OK"),
                Err(r) => r,
            }
        }
        _ => error(
            "405 Method Not Allowed",
            "method_not_allowed",
            "POST /v1/sessions; PATCH or DELETE /v1/sessions/{id}",
        ),
    }
}

async fn post(req: Request, api: &SessionApi) -> Result<Response, Response> {
    let claims = authenticate(&req, api)?;
    if !content_type_is(&req, "application/sdp") {
        return Err(error(
            "415 Unsupported Media Type",
            "unsupported_media_type",
            "POST takes application/sdp",
        ));
    }
    let Ok(sdp) = String::from_utf8(req.body) else {
        return Err(error(
            "400 Bad Request",
            "bad_sdp",
            "the offer is not UTF-8",
        ));
    };
    let (id, answer) = call(api, |reply| Command::Offer { claims, sdp, reply }).await?;
    Ok(Response {
        status: "201 Created",
        content_type: "application/sdp",
        headers: vec![
            ("Location", format!("/v1/sessions/{id}")),
            ("ETag", format!("\"{id}\"")),
        ],
        body: answer,
    })
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, r: Response) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Access-Control-Allow-Origin: *\r\n\
         Access-Control-Expose-Headers: Location, ETag, Retry-After\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(r.body.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves the session endpoint (and `/metrics`, `/healthz`) over TLS with the relay's TURNS
/// certificate, until the task is dropped.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    metrics: std::sync::Arc<super::Metrics>,
    api: SessionApi,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, metrics, api) = (acceptor.clone(), metrics.clone(), api.clone());
        // One short-lived task per request, as for plain HTTP: control plane, not packet path.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                match acceptor.accept(stream).await {
                    Ok(tls) => super::answer(tls, &metrics, Some(&api)).await,
                    Err(_) => Ok(()),
                }
            })
            .await;
        });
    }
}
