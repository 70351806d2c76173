//! Protocol v1 frames: parsing what clients send, serializing what the server sends.
//!
//! Every frame is one JSON text object with a `type`. Client bytes are untrusted:
//! parsing never panics and every refusal is an [`ErrorCode`] the client can act on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::types::{PeerId, Seq};

/// The exact ping text that the runtime answers with [`PONG`] without waking the room.
pub const PING: &str = r#"{"type":"ping"}"#;
/// The answer to [`PING`].
pub const PONG: &str = r#"{"type":"pong"}"#;

/// Stable, snake_case error codes carried by `error` frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    BadJson,
    /// The frame is JSON but not a valid frame of its type (missing or mistyped field).
    InvalidFrame,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// Binary WebSocket frames are not part of protocol v1.
    UnsupportedFrame,
    /// The frame exceeds the size limit.
    PayloadTooLarge,
    /// The addressed peer is not in the room.
    UnknownPeer,
    /// The peer sent frames faster than its rate limit.
    RateLimited,
    /// The room is at capacity.
    RoomFull,
    /// The room has `PRESENCE_MAX_PEERS` peers that receive presence; join with `presence=off`.
    PresenceFull,
    /// Authentication is required or the token is invalid.
    Unauthorized,
    /// A resume token was wrong or expired, or the requested frames are gone.
    ResumeFailed,
    /// An away peer's queue (or the room's queues together) is full; the frame was not accepted.
    QueueFull,
    /// A client `cseq` skipped ahead; earlier frames were lost on the way (v1.1).
    OutOfOrder,
    /// The room name does not match `[A-Za-z0-9_-]{1,64}`.
    InvalidRoom,
    /// The `meta` given at join is not JSON or exceeds 1 KiB.
    InvalidMeta,
    /// A query parameter is malformed.
    BadRequest,
    /// The HTTP path is not served.
    NotFound,
    /// The HTTP method is not allowed on this path.
    MethodNotAllowed,
    /// The room endpoint needs a WebSocket upgrade.
    UpgradeRequired,
    /// The server failed; the client did nothing wrong.
    Internal,
    /// The request's `Origin` is not in `ALLOWED_ORIGINS`.
    ForbiddenOrigin,
}

impl ErrorCode {
    /// Every code, for documentation and stats.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::BadJson,
        ErrorCode::InvalidFrame,
        ErrorCode::UnknownType,
        ErrorCode::UnsupportedFrame,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnknownPeer,
        ErrorCode::RateLimited,
        ErrorCode::RoomFull,
        ErrorCode::PresenceFull,
        ErrorCode::Unauthorized,
        ErrorCode::ResumeFailed,
        ErrorCode::QueueFull,
        ErrorCode::OutOfOrder,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidMeta,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UpgradeRequired,
        ErrorCode::Internal,
        ErrorCode::ForbiddenOrigin,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::PresenceFull => "presence_full",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidMeta => "invalid_meta",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::Internal => "internal",
            ErrorCode::ForbiddenOrigin => "forbidden_origin",
        }
    }

    /// The HTTP status used when this code answers an HTTP request.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::ForbiddenOrigin => 403,
            ErrorCode::NotFound | ErrorCode::UnknownPeer => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UpgradeRequired => 426,
            ErrorCode::RateLimited => 429,
            ErrorCode::RoomFull | ErrorCode::PresenceFull | ErrorCode::QueueFull => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

/// Why a peer left, as told to the others in `peer-left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The peer sent `leave`.
    Leave,
    /// The peer stopped answering heartbeats, or dropped and did not resume in time.
    Timeout,
    /// The peer closed its socket normally and did not resume in time.
    Closed,
}

impl LeaveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Leave => "leave",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Closed => "closed",
        }
    }

    /// Decodes [`LeaveReason::as_str`].
    pub fn parse(s: &str) -> Option<LeaveReason> {
        match s {
            "leave" => Some(LeaveReason::Leave),
            "timeout" => Some(LeaveReason::Timeout),
            "closed" => Some(LeaveReason::Closed),
            _ => None,
        }
    }
}

/// The `caps` name of a client that reads `acked` on the frames it is sent (v1.2): the room's
/// `ack` to it may ride on a frame it is sent anyway instead of coming as a frame of its own.
pub const CAP_ACKS: &str = "acks";

/// A frame a client sent, borrowed from the text it came in.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `{"type":"signal","to":…,"payload":…,"cseq":n?,"ack":s?}`: to one peer.
    Signal {
        /// The addressee.
        to: PeerId,
        /// Passed through untouched.
        payload: &'a RawValue,
        /// The client's sequence number (v1.1), if it sent one.
        cseq: Option<u64>,
        /// An `ack` carried by the frame (v1.2), if it carried one.
        ack: Option<Seq>,
    },
    /// `{"type":"broadcast","payload":…,"cseq":n?,"ack":s?}`: to every other peer, as `signal`.
    Broadcast {
        /// Passed through untouched.
        payload: &'a RawValue,
        /// The client's sequence number (v1.1), if it sent one.
        cseq: Option<u64>,
        /// An `ack` carried by the frame (v1.2), if it carried one.
        ack: Option<Seq>,
    },
    /// `{"type":"relay","to":…,"data":…,"cseq":n?,"ack":s?}`: data over the WebSocket, the last rung.
    Relay {
        /// The addressee.
        to: PeerId,
        /// Passed through untouched.
        data: &'a RawValue,
        /// The client's sequence number (v1.1), if it sent one.
        cseq: Option<u64>,
        /// An `ack` carried by the frame (v1.2), if it carried one.
        ack: Option<Seq>,
    },
    /// `{"type":"ack","seq":n}`: frames up to `seq` were processed.
    Ack {
        /// Highest processed sequence number.
        seq: Seq,
    },
    /// `{"type":"leave"}`: the peer is gone for good.
    Leave,
    /// `{"type":"ping"}` that was not byte-identical to [`PING`].
    Ping,
}

/// A refused client frame: the code, a human-readable reason and, when the
/// frame's `cseq` could be read, that `cseq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The stable code.
    pub code: ErrorCode,
    /// What was wrong, for humans.
    pub message: Cow<'static, str>,
    /// The refused frame's `cseq` (v1.1), when it had a valid one.
    pub cseq: Option<u64>,
}

impl FrameError {
    /// A refusal with a fixed message.
    pub fn new(code: ErrorCode, message: &'static str) -> FrameError {
        FrameError {
            code,
            message: Cow::Borrowed(message),
            cseq: None,
        }
    }

    fn with_cseq(mut self, cseq: Option<u64>) -> FrameError {
        self.cseq = cseq;
        self
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
    #[serde(borrow)]
    cseq: Option<&'a RawValue>,
    #[serde(borrow)]
    ack: Option<&'a RawValue>,
}

/// Parses one client text frame. Size and rate limits are checked by the caller first.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    // One pass on the hot path; a refused frame is checked for syntax alone, so malformed JSON
    // and a wrongly shaped frame get different codes.
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| {
        if serde_json::from_str::<&RawValue>(text).is_err() {
            return FrameError::new(ErrorCode::BadJson, "frame is not valid JSON");
        }
        FrameError::new(
            ErrorCode::InvalidFrame,
            "frame must be a JSON object with a string `type`",
        )
    })?;
    let Some(ty) = raw.ty else {
        return Err(FrameError::new(
            ErrorCode::InvalidFrame,
            "frame has no `type`",
        ));
    };
    match ty.as_ref() {
        "signal" => {
            let cseq = cseq_field(raw.cseq)?;
            let frame = || {
                Ok(ClientFrame::Signal {
                    to: peer_field(raw.to)?,
                    payload: required(raw.payload, "`signal` needs a non-null `payload`")?,
                    cseq,
                    ack: ack_field(raw.ack)?,
                })
            };
            frame().map_err(|e: FrameError| e.with_cseq(cseq))
        }
        "broadcast" => {
            let cseq = cseq_field(raw.cseq)?;
            let frame = || {
                Ok(ClientFrame::Broadcast {
                    payload: required(raw.payload, "`broadcast` needs a non-null `payload`")?,
                    cseq,
                    ack: ack_field(raw.ack)?,
                })
            };
            frame().map_err(|e: FrameError| e.with_cseq(cseq))
        }
        "relay" => {
            let cseq = cseq_field(raw.cseq)?;
            let frame = || {
                Ok(ClientFrame::Relay {
                    to: peer_field(raw.to)?,
                    data: required(raw.data, "`relay` needs a non-null `data`")?,
                    cseq,
                    ack: ack_field(raw.ack)?,
                })
            };
            frame().map_err(|e: FrameError| e.with_cseq(cseq))
        }
        "ack" => {
            let seq = raw
                .seq
                .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
                .ok_or_else(|| {
                    FrameError::new(ErrorCode::InvalidFrame, "`ack` needs an integer `seq` >= 0")
                })?;
            Ok(ClientFrame::Ack { seq: Seq(seq) })
        }
        "leave" => Ok(ClientFrame::Leave),
        "ping" => Ok(ClientFrame::Ping),
        _ => Err(FrameError::new(
            ErrorCode::UnknownType,
            "unknown frame `type`; expected signal, broadcast, relay, ack, leave or ping",
        )),
    }
}

/// `cseq`: absent, or an integer >= 1. Anything else refuses the frame (without a cseq).
fn cseq_field(v: Option<&RawValue>) -> Result<Option<u64>, FrameError> {
    let Some(v) = v else { return Ok(None) };
    match serde_json::from_str::<u64>(v.get()) {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(FrameError::new(
            ErrorCode::InvalidFrame,
            "`cseq` must be an integer >= 1",
        )),
    }
}

/// `ack` carried by a frame (v1.2): absent (or `null`), or an integer >= 0.
fn ack_field(v: Option<&RawValue>) -> Result<Option<Seq>, FrameError> {
    let Some(v) = v else { return Ok(None) };
    serde_json::from_str::<u64>(v.get())
        .map(|n| Some(Seq(n)))
        .map_err(|_| FrameError::new(ErrorCode::InvalidFrame, "`ack` must be an integer >= 0"))
}

fn required<'a>(v: Option<&'a RawValue>, why: &'static str) -> Result<&'a RawValue, FrameError> {
    v.ok_or_else(|| FrameError::new(ErrorCode::InvalidFrame, why))
}

fn peer_field(v: Option<&RawValue>) -> Result<PeerId, FrameError> {
    v.and_then(|v| serde_json::from_str::<Cow<'_, str>>(v.get()).ok())
        .and_then(|s| PeerId::parse(&s))
        .ok_or_else(|| FrameError::new(ErrorCode::InvalidFrame, "`to` must be a peer id string"))
}

/// A peer as listed in `welcome.peers` and `peer-joined`.
#[derive(Debug, Serialize)]
pub struct PeerInfo<'a> {
    /// The peer's id.
    pub peer_id: &'a PeerId,
    /// The peer's meta.
    pub meta: &'a RawValue,
}

/// The limits a room announces in `welcome.limits` (v1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WireLimits {
    /// Sustained client frames per second.
    pub rate_per_s: u32,
    /// Burst of the rate limiter.
    pub rate_burst: u32,
    /// Largest client frame in bytes.
    pub max_frame_bytes: usize,
    /// Send `ack` at most this long after the first unacknowledged frame.
    pub ack_delay_ms: u64,
}

/// A frame the server sends outside the sequenced stream. Serialized with [`ServerFrame::to_json`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame<'a> {
    /// First frame on every accepted socket.
    Welcome {
        /// Protocol version.
        v: u32,
        /// Revision of the protocol's additions (v1.1 = 1).
        rev: u32,
        /// This peer's id.
        peer_id: &'a PeerId,
        /// The secret for `?resume=`.
        resume_token: &'a str,
        /// The room's name.
        room: &'a str,
        /// The other peers present (empty for a peer that joined with `presence=off`).
        peers: Vec<PeerInfo<'a>>,
        /// `"off"` for a peer that joined with `presence=off`; absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<&'static str>,
        /// RTCPeerConnection `iceServers`.
        ice_servers: &'a [crate::ice::IceServer],
        /// Ping period the client should use.
        heartbeat_ms: u64,
        /// Whether this continues an earlier session.
        resumed: bool,
        /// The peer's trace id, kept across resumes.
        trace_id: &'a str,
        /// The room's client-frame limits.
        limits: WireLimits,
        /// Highest client `cseq` whose outcome is settled (0 on a fresh join).
        cseq: u64,
        /// The room's relay session endpoint and this peer's token; absent without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        sfu: Option<&'a crate::sfu_token::SfuGrant>,
    },
    /// Client frames up to `cseq` are accepted (cumulative).
    Ack {
        /// Highest accepted client sequence number.
        cseq: u64,
    },
    /// A refused request outside the sequenced stream.
    Error(ErrorInfo<'a>),
    /// Answer to a ping.
    Pong,
}

/// The fields of an `error` frame.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ErrorInfo<'a> {
    /// Stable code.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: &'a str,
    /// The refused frame's `cseq`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cseq: Option<u64>,
    /// `out_of_order`: the `cseq` the room expects next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// `rate_limited`: milliseconds until a frame is accepted again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl<'a> ErrorInfo<'a> {
    /// An error with only a code and a message.
    pub fn new(code: ErrorCode, message: &'a str) -> ErrorInfo<'a> {
        ErrorInfo {
            code: code.as_str(),
            message,
            cseq: None,
            expected: None,
            retry_after_ms: None,
        }
    }
}

impl ServerFrame<'_> {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs into a String cannot fail; an empty
        // object is sent rather than panicking if it ever did.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The JSON text of an unsequenced `error` frame.
pub fn error_frame(code: ErrorCode, message: &str) -> String {
    ServerFrame::Error(ErrorInfo::new(code, message)).to_json()
}

/// The JSON text of an `ack` frame (written directly: it is on every busy room's hot path).
pub fn ack_frame(cseq: u64) -> String {
    let mut digits = [0u8; 20];
    let n = decimal(cseq, &mut digits);
    let mut out = String::with_capacity(24 + n.len());
    out.push_str(r#"{"type":"ack","cseq":"#);
    out.push_str(n);
    out.push('}');
    out
}

/// `n` in decimal, written into `buf` (no allocation: the hot path formats a number or two
/// per frame).
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is a digit, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let d = (n % 10) as u8;
        if let Some(b) = buf.get_mut(i) {
            *b = b'0' + d;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or_default()
}

/// The type of a sequenced server frame (one that carries `seq` and is replayed on resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqType {
    /// `signal`: a `signal` or `broadcast` from another peer.
    Signal,
    /// `relay`: data relayed over the WebSocket.
    Relay,
    /// `peer-joined`.
    PeerJoined,
    /// `peer-left`.
    PeerLeft,
    /// `error` about a client frame that carried a `cseq` (v1.1).
    Error,
}

impl SeqType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SeqType::Signal => "signal",
            SeqType::Relay => "relay",
            SeqType::PeerJoined => "peer-joined",
            SeqType::PeerLeft => "peer-left",
            SeqType::Error => "error",
        }
    }

    /// Decodes [`SeqType::as_str`].
    pub fn parse(s: &str) -> Option<SeqType> {
        match s {
            "signal" => Some(SeqType::Signal),
            "relay" => Some(SeqType::Relay),
            "peer-joined" => Some(SeqType::PeerJoined),
            "peer-left" => Some(SeqType::PeerLeft),
            "error" => Some(SeqType::Error),
            _ => None,
        }
    }
}

/// A sequenced server frame without its `seq`.
///
/// This is what resume queues hold and what storage keeps, once, however many
/// peers a broadcast goes to. The frame text for one recipient is
/// `{"type":<ty>,"seq":<seq>,` followed by `rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqBody {
    /// The frame's type.
    pub ty: SeqType,
    /// The JSON object's members after `seq`, with the closing brace.
    pub rest: String,
}

#[derive(Serialize)]
struct SignalRest<'a> {
    from: &'a PeerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    cseq: Option<u64>,
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct RelayRest<'a> {
    from: &'a PeerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    cseq: Option<u64>,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct JoinedRest<'a> {
    peer_id: &'a PeerId,
    meta: &'a RawValue,
}

#[derive(Serialize)]
struct LeftRest<'a> {
    peer_id: &'a PeerId,
    reason: LeaveReason,
}

#[derive(Serialize)]
struct ErrorRest<'a> {
    code: &'static str,
    message: &'a str,
    cseq: u64,
}

impl SeqBody {
    fn of(ty: SeqType, fields: &impl Serialize) -> SeqBody {
        // A struct serializes to `{…}`; everything after the `{` follows the seq.
        let json = serde_json::to_string(fields).unwrap_or_else(|_| String::from("{}"));
        let rest = json.strip_prefix('{').unwrap_or("}").to_owned();
        SeqBody { ty, rest }
    }

    /// A stored body, as read back from storage.
    pub fn stored(ty: SeqType, rest: String) -> SeqBody {
        SeqBody { ty, rest }
    }

    /// `signal` from `from`, carrying the sender's `cseq` when it sent one.
    pub fn signal(from: &PeerId, cseq: Option<u64>, payload: &RawValue) -> SeqBody {
        Self::of(
            SeqType::Signal,
            &SignalRest {
                from,
                cseq,
                payload,
            },
        )
    }

    /// `relay` from `from`, carrying the sender's `cseq` when it sent one.
    pub fn relay(from: &PeerId, cseq: Option<u64>, data: &RawValue) -> SeqBody {
        Self::of(SeqType::Relay, &RelayRest { from, cseq, data })
    }

    /// `peer-joined`.
    pub fn peer_joined(peer_id: &PeerId, meta: &RawValue) -> SeqBody {
        Self::of(SeqType::PeerJoined, &JoinedRest { peer_id, meta })
    }

    /// `peer-left`.
    pub fn peer_left(peer_id: &PeerId, reason: LeaveReason) -> SeqBody {
        Self::of(SeqType::PeerLeft, &LeftRest { peer_id, reason })
    }

    /// A sequenced `error` refusing the client frame `cseq`.
    pub fn error(code: ErrorCode, message: &str, cseq: u64) -> SeqBody {
        Self::of(
            SeqType::Error,
            &ErrorRest {
                code: code.as_str(),
                message,
                cseq,
            },
        )
    }

    /// Splits a whole stored frame `{"type":"T","seq":N,…}` (how protocol v1
    /// rooms stored their queues) into a body; `None` if it has another shape.
    pub fn from_v1_frame(frame: &str) -> Option<SeqBody> {
        let after_type = frame.strip_prefix("{\"type\":\"")?;
        let (ty, after) = after_type.split_once("\",\"seq\":")?;
        let (seq, rest) = after.split_once(',')?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SeqBody::stored(SeqType::parse(ty)?, rest.to_owned()))
    }

    /// The frame's text with sequence number `seq`.
    pub fn text(&self, seq: u64) -> String {
        let ty = self.ty.as_str();
        // Room for the `"acked":n,` an ack may add (`Room::fold_acks`) without a reallocation.
        let mut out = String::with_capacity(self.rest.len() + ty.len() + 64);
        let mut digits = [0u8; 20];
        out.push_str("{\"type\":\"");
        out.push_str(ty);
        out.push_str("\",\"seq\":");
        out.push_str(decimal(seq, &mut digits));
        out.push(',');
        out.push_str(&self.rest);
        out
    }

    /// Bytes this body accounts for in resume queues.
    pub fn len(&self) -> usize {
        self.rest.len() + 32
    }

    /// Never true: every body has members; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The body of an HTTP error: `{"error":{"code":…,"message":…}}`.
pub fn http_error_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({ "error": { "code": code.as_str(), "message": message } }).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests fail loudly on purpose
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_frame(text).unwrap_err().code
    }

    #[test]
    fn decimal_writes_every_u64_as_to_string_does() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
        assert_eq!(ack_frame(42), r#"{"type":"ack","cseq":42}"#);
    }

    #[test]
    fn parses_every_client_frame() {
        match parse_client_frame(r#"{"type":"signal","to":"ab12","payload":{"sdp":"v=0"}}"#)
            .unwrap()
        {
            ClientFrame::Signal {
                to,
                payload,
                cseq,
                ack,
            } => {
                assert_eq!(cseq, None);
                assert_eq!(ack, None);
                assert_eq!(to.as_str(), "ab12");
                assert_eq!(payload.get(), r#"{"sdp":"v=0"}"#);
            }
            other => panic!("{other:?}"),
        }
        match parse_client_frame(r#"{"type":"broadcast","payload":[1, 2]}"#).unwrap() {
            ClientFrame::Broadcast { payload, .. } => assert_eq!(payload.get(), "[1, 2]"),
            other => panic!("{other:?}"),
        }
        match parse_client_frame(r#"{"type":"relay","to":"x","data":"hi","cseq":7,"ack":0}"#)
            .unwrap()
        {
            ClientFrame::Relay {
                to,
                data,
                cseq,
                ack,
            } => {
                assert_eq!(cseq, Some(7));
                assert_eq!(ack, Some(Seq(0)));
                assert_eq!(to.as_str(), "x");
                assert_eq!(data.get(), r#""hi""#);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_client_frame(r#"{"type":"ack","seq":42}"#).unwrap(),
            ClientFrame::Ack { seq: Seq(42) }
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"leave"}"#).unwrap(),
            ClientFrame::Leave
        ));
        assert!(matches!(
            parse_client_frame(r#"{ "type" : "ping" }"#).unwrap(),
            ClientFrame::Ping
        ));
    }

    #[test]
    fn payload_passes_through_byte_for_byte() {
        let text = r#"{"type":"signal","to":"p","payload":{"b":1,  "a":"\u00e9"}}"#;
        match parse_client_frame(text).unwrap() {
            ClientFrame::Signal { payload, .. } => {
                assert_eq!(payload.get(), r#"{"b":1,  "a":"\u00e9"}"#)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_have_distinct_codes() {
        assert_eq!(code("{not json"), ErrorCode::BadJson);
        assert_eq!(code(""), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"to":"x"}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"signal","payload":1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"type":"signal","to":5,"payload":1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"type":"signal","to":"a b","payload":1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"type":"signal","to":"a","payload":null}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(r#"{"type":"broadcast"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(r#"{"type":"relay","to":"a"}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(r#"{"type":"ack","seq":-1}"#), ErrorCode::InvalidFrame);
        assert_eq!(code(r#"{"type":"ack","seq":"3"}"#), ErrorCode::InvalidFrame);
    }

    #[test]
    fn cseq_is_read_even_from_a_refused_frame() {
        let e =
            parse_client_frame(r#"{"type":"signal","to":"a b","payload":1,"cseq":4}"#).unwrap_err();
        assert_eq!((e.code, e.cseq), (ErrorCode::InvalidFrame, Some(4)));
        let e = parse_client_frame(r#"{"type":"broadcast","cseq":9}"#).unwrap_err();
        assert_eq!(e.cseq, Some(9));
        // (`"cseq":null` reads as absent, like any null field.)
        for bad in ["0", "-1", "1.5", "\"2\""] {
            let text = format!(r#"{{"type":"signal","to":"a","payload":1,"cseq":{bad}}}"#);
            let e = parse_client_frame(&text).unwrap_err();
            assert_eq!((e.code, e.cseq), (ErrorCode::InvalidFrame, None), "{text}");
        }
    }

    #[test]
    fn server_frames_serialize_with_kebab_types() {
        let p = PeerId::parse("p1").unwrap();
        let payload = RawValue::from_string("{\"x\":1}".into()).unwrap();
        let s = SeqBody::signal(&p, None, &payload).text(3);
        assert_eq!(
            s,
            r#"{"type":"signal","seq":3,"from":"p1","payload":{"x":1}}"#
        );
        let s = SeqBody::relay(&p, Some(5), &payload).text(4);
        assert_eq!(
            s,
            r#"{"type":"relay","seq":4,"from":"p1","cseq":5,"data":{"x":1}}"#
        );
        let left = SeqBody::peer_left(&p, LeaveReason::Timeout).text(1);
        assert_eq!(
            left,
            r#"{"type":"peer-left","seq":1,"peer_id":"p1","reason":"timeout"}"#
        );
        let err = SeqBody::error(ErrorCode::UnknownPeer, "no", 2).text(9);
        assert_eq!(
            err,
            r#"{"type":"error","seq":9,"code":"unknown_peer","message":"no","cseq":2}"#
        );
        assert_eq!(ack_frame(12), r#"{"type":"ack","cseq":12}"#);
        let limited = ServerFrame::Error(ErrorInfo {
            cseq: Some(3),
            retry_after_ms: Some(20),
            ..ErrorInfo::new(ErrorCode::RateLimited, "slow")
        })
        .to_json();
        assert_eq!(
            limited,
            r#"{"type":"error","code":"rate_limited","message":"slow","cseq":3,"retry_after_ms":20}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), PONG);
        assert_eq!(
            error_frame(ErrorCode::RateLimited, "slow down"),
            r#"{"type":"error","code":"rate_limited","message":"slow down"}"#
        );
        assert_eq!(
            http_error_body(ErrorCode::InvalidRoom, "bad"),
            r#"{"error":{"code":"invalid_room","message":"bad"}}"#
        );
    }

    #[test]
    fn v1_stored_frames_split_into_bodies() {
        let p = PeerId::parse("p1").unwrap();
        let payload = RawValue::from_string("{\"a\":[1,2]}".into()).unwrap();
        let body = SeqBody::signal(&p, None, &payload);
        let old = body.text(41);
        assert_eq!(SeqBody::from_v1_frame(&old), Some(body.clone()));
        assert_eq!(SeqBody::from_v1_frame(&old).unwrap().text(2), body.text(2));
        let left = SeqBody::peer_left(&p, LeaveReason::Leave);
        assert_eq!(SeqBody::from_v1_frame(&left.text(7)), Some(left));
        assert_eq!(SeqBody::from_v1_frame(r#"{"type":"pong"}"#), None);
        assert_eq!(
            SeqBody::from_v1_frame(r#"{"type":"dance","seq":1,"x":1}"#),
            None
        );
        assert_eq!(
            SeqBody::from_v1_frame(r#"{"type":"signal","seq":x,"x":1}"#),
            None
        );
    }

    #[test]
    fn error_codes_are_unique_snake_case() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
