//! The frames loadgen writes and reads, for the three servers it can drive: Switchboard
//! (protocol v1, with v1.1's `cseq` as an option), the echo floor (no protocol: the payload is the
//! frame) and PeerJS server 1.0 (`OFFER`/`ANSWER`/`CANDIDATE` relayed to `dst`).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::track::ClientIdx;

/// The exact ping the Worker's runtime answers without waking the room (protocol v1).
pub const PING: &str = r#"{"type":"ping"}"#;
/// PeerJS client heartbeat.
pub const PEERJS_HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;

/// A probe: the application payload every load message carries. `t` is the send time in
/// microseconds since the Unix epoch (senders and receivers share one clock on loopback).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Sending client.
    pub c: ClientIdx,
    /// Number of this probe in its sender -> receiver stream (for a broadcast: the sender's count).
    pub n: u64,
    /// Send time, µs since the Unix epoch.
    pub t: u64,
}

/// Serializes a probe padded with `pad` (a run of `x`) to the configured payload size.
pub fn probe_json(p: Probe, pad: &str) -> String {
    format!(r#"{{"c":{},"n":{},"t":{},"p":"{}"}}"#, p.c, p.n, p.t, pad)
}

/// The padding that makes a probe about `payload_bytes` long.
pub fn pad_for(payload_bytes: usize) -> String {
    let base = probe_json(
        Probe {
            c: 1000,
            n: 100_000,
            t: 1_800_000_000_000_000,
        },
        "",
    )
    .len();
    "x".repeat(payload_bytes.saturating_sub(base))
}

/// A peer entry of `welcome.peers`.
#[derive(Debug, Deserialize)]
pub struct PeerEntry {
    /// The peer's id.
    pub peer_id: String,
    /// The peer's meta (loadgen joins with `{"c":<client>}`).
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// The meta loadgen clients join with.
#[derive(Debug, Deserialize, Clone, Copy)]
pub struct Meta {
    /// Client index.
    pub c: Option<ClientIdx>,
}

/// Any server frame of protocol v1/v1.1, or a PeerJS server message; fields absent in one are `None`.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// Sequence number of sequenced frames.
    pub seq: Option<u64>,
    /// `signal`/`relay` payload, or the PeerJS message payload.
    #[serde(borrow)]
    pub payload: Option<&'a RawValue>,
    /// `welcome.peer_id`, `peer-joined.peer_id`, `peer-left.peer_id`.
    pub peer_id: Option<String>,
    /// `peer-joined.meta`.
    pub meta: Option<Meta>,
    /// `welcome.peers`.
    pub peers: Option<Vec<PeerEntry>>,
    /// `welcome.resume_token`.
    pub resume_token: Option<String>,
    /// `welcome.resumed`.
    pub resumed: Option<bool>,
    /// `welcome.heartbeat_ms`.
    pub heartbeat_ms: Option<u64>,
    /// `welcome.limits` (v1.1).
    pub limits: Option<WelcomeLimits>,
    /// `welcome.rev` (1 announces protocol v1.1, 2 v1.2).
    pub rev: Option<u64>,
    /// `welcome.cseq`, `ack.cseq`, `error.cseq`.
    pub cseq: Option<u64>,
    /// `error.code`.
    pub code: Option<String>,
    /// `error.expected` of `out_of_order`.
    pub expected: Option<u64>,
    /// `error.retry_after_ms` of `rate_limited`.
    pub retry_after_ms: Option<u64>,
    /// The room's ack riding on a `signal`, `relay` or `error` (v1.2).
    pub acked: Option<u64>,
}

/// The part of `welcome.limits` loadgen uses.
#[derive(Debug, Deserialize)]
pub struct WelcomeLimits {
    /// How soon after an unacknowledged frame the room asks for an `ack`.
    pub ack_delay_ms: Option<u64>,
}

/// Parses a probe out of a payload; `None` for payloads loadgen did not write.
pub fn parse_probe(raw: &str) -> Option<Probe> {
    serde_json::from_str(raw).ok()
}

/// `retry_after_ms=<n>` of a 4003 close reason.
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    reason.strip_prefix("retry_after_ms=")?.trim().parse().ok()
}

/// Percent-encodes a query value (unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test data is ours
mod tests {
    use super::*;

    #[test]
    fn probe_round_trips_and_pads_to_size() {
        let pad = pad_for(200);
        let p = Probe {
            c: 1000,
            n: 100_000,
            t: 1_800_000_000_000_000,
        };
        let s = probe_json(p, &pad);
        assert_eq!(s.len(), 200);
        assert_eq!(parse_probe(&s), Some(p));
        assert_eq!(parse_probe(r#"{"hello":1}"#), None);
    }

    #[test]
    fn reads_welcome_and_signal() {
        let w: Incoming = serde_json::from_str(
            r#"{"type":"welcome","v":1,"peer_id":"a","resume_token":"t","peers":[{"peer_id":"b","meta":{"c":3}}],"heartbeat_ms":1000,"resumed":false,"limits":{"rate_per_s":50,"ack_delay_ms":2000}}"#,
        )
        .unwrap();
        assert_eq!(w.kind, "welcome");
        assert_eq!(w.limits.and_then(|l| l.ack_delay_ms), Some(2000));
        assert_eq!(
            w.peers.unwrap()[..].first().unwrap().meta.unwrap().c,
            Some(3)
        );
        let s: Incoming = serde_json::from_str(
            r#"{"acked":9,"type":"signal","seq":4,"from":"b","payload":{"c":3,"n":0,"t":5,"p":""}}"#,
        )
        .unwrap();
        assert_eq!(s.seq, Some(4));
        assert_eq!(
            s.acked,
            Some(9),
            "the room's ack riding on the frame (v1.2)"
        );
        assert_eq!(
            parse_probe(s.payload.unwrap().get()),
            Some(Probe { c: 3, n: 0, t: 5 })
        );
    }

    #[test]
    fn close_reason_gives_retry_after() {
        assert_eq!(retry_after_ms("retry_after_ms=5000"), Some(5000));
        assert_eq!(retry_after_ms("going away"), None);
    }

    #[test]
    fn urlencode_json() {
        assert_eq!(urlencode(r#"{"c":1}"#), "%7B%22c%22%3A1%7D");
    }
}
