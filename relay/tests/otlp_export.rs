//! `--otlp-endpoint`: the relay exports its `turn.request` spans over OTLP/HTTP (protobuf) to a
//! collector (here a tiny one on 127.0.0.1 that records POSTs to /v1/traces), under the trace id
//! the TURN username carried.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// One POST the collector received: path, content type, body.
type Post = (String, String, Vec<u8>);

/// Accepts connections on `listener` and reports every request, answering 200.
fn collector(listener: TcpListener, posts: mpsc::Sender<Post>) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "content-type" => content_type = v.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if posts.send((path, content_type, body)).is_err() {
                return;
            }
        }
    });
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

#[test]
fn spans_reach_the_collector_under_the_usernames_trace() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    collector(listener, tx);
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--otlp-endpoint",
        &endpoint,
    ]);
    let trace = "0123456789abcdef";
    let mut client = common::TurnClient::rest(
        relay.addr,
        common::SECRET,
        &format!("alice.{trace}"),
        common::unix_now() + 3600,
    );
    assert!(client.allocate().is_success());

    // Batches go out every second; wait for the one holding the Allocate's span.
    let deadline = Instant::now() + Duration::from_secs(15);
    let span = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, content_type, body) = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no span with the trace reached the collector; relay log:\n{}",
                relay.log_text()
            )
        });
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let found = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .find(|s| s.name == "turn.request" && attr(s, "method").as_deref() == Some("allocate"))
            .cloned();
        if let Some(span) = found {
            let service = request.resource_spans[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .any(|kv| {
                    kv.key == "service.name"
                        && kv.value.as_ref().and_then(|v| v.value.as_ref())
                            == Some(&Value::StringValue("switchboard-relay".into()))
                });
            assert!(service, "resource names the service");
            break span;
        }
    };
    let mut expected = vec![0u8; 8];
    expected.extend((0..8).map(|i| u8::from_str_radix(&trace[i * 2..i * 2 + 2], 16).unwrap()));
    assert_eq!(
        span.trace_id, expected,
        "the OTel trace id is the padded trace"
    );
    assert_eq!(attr(&span, "trace_id").as_deref(), Some(trace));
    assert!(
        span.attributes
            .iter()
            .all(|kv| !format!("{kv:?}").contains("alice")),
        "usernames stay out of spans"
    );
}
