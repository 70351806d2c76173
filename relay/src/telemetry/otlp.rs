//! Spans exported over OTLP/HTTP (protobuf) when `--otlp-endpoint` is set (the `otlp` feature).
//!
//! The TURN core opens a `turn.request` span per authenticated control request (never on the
//! data path) with the request's `method` and, when the TURN username carried one, the
//! Switchboard `trace_id` (16 hex); user ids stay out of logs and spans. Such spans are exported under the OpenTelemetry trace id
//! `0000000000000000<trace_id>` (a 64-bit id left-padded to 128 bits), so the relay's spans join
//! the trace the room minted for the peer. The exporter speaks plain `http://` only: point it at
//! a collector or agent next to the relay (which may forward over TLS).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceId, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;

use super::traces_url;

/// How often batched spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Deadline for connecting to the collector and for each read or write.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest collector answer read.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// The span field that carries a Switchboard trace id.
const TRACE_FIELD: &str = "trace_id";

/// The OTLP exporter of `info` spans to `endpoint`, batched once a second, and its layer.
pub(super) fn layer<S>(
    endpoint: &str,
) -> Result<(SdkTracerProvider, impl tracing_subscriber::Layer<S>), String>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(HTTP_TIMEOUT)
        .with_http_client(PlainHttpClient)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let batch = BatchSpanProcessor::builder(SwitchboardTraces(exporter))
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("switchboard-relay")
                .build(),
        )
        .build();
    // Spans are exported at `info` whatever RUST_LOG says about the log lines.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchboard-relay"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    Ok((provider, otel))
}

/// The OpenTelemetry trace id for a Switchboard trace id (16 lowercase hex): left-padded.
pub fn otel_trace_id(trace: &str) -> Option<TraceId> {
    if !switchboard_proto::ice::is_trace_id(trace) {
        return None;
    }
    u64::from_str_radix(trace, 16)
        .ok()
        .map(|t| TraceId::from(u128::from(t)))
}

/// Moves spans that carry a `trace_id` field (and the spans of the same local trace in the
/// batch) into the Switchboard trace, then hands the batch to the OTLP exporter.
#[derive(Debug)]
struct SwitchboardTraces<E>(E);

/// Rewrites the trace ids of `batch` in place; see [`SwitchboardTraces`].
fn adopt_switchboard_traces(batch: &mut [SpanData]) {
    let mut moved: HashMap<TraceId, TraceId> = HashMap::new();
    for span in batch.iter() {
        let trace = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == TRACE_FIELD)
            .and_then(|kv| otel_trace_id(kv.value.as_str().as_ref()));
        if let Some(t) = trace {
            moved.insert(span.span_context.trace_id(), t);
        }
    }
    for span in batch.iter_mut() {
        if let Some(t) = moved.get(&span.span_context.trace_id()) {
            let c = &span.span_context;
            span.span_context = SpanContext::new(
                *t,
                c.span_id(),
                c.trace_flags(),
                c.is_remote(),
                c.trace_state().clone(),
            );
        }
    }
}

impl<E: SpanExporter> SpanExporter for SwitchboardTraces<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        adopt_switchboard_traces(&mut batch);
        self.0.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// A blocking HTTP/1.1 client for `http://` collectors. The batch processor exports from its own
/// thread, so blocking there never stalls the event loop; this avoids an HTTP client stack.
#[derive(Debug)]
struct PlainHttpClient;

#[async_trait::async_trait]
impl HttpClient for PlainHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(&request)
    }
}

fn post(request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri();
    if uri.scheme_str() != Some("http") {
        return Err("only http:// OTLP endpoints are supported".into());
    }
    let host = uri.host().ok_or("OTLP endpoint has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or("OTLP endpoint host has no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method(),
        request.body().len()
    );
    for (name, value) in request.headers() {
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(request.body())?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Status and (`Content-Length`-delimited) body of an HTTP/1.1 response. A chunked body is
/// returned empty: the exporter only reads it for partial-success details.
fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP response from the OTLP endpoint")?;
    let (head, rest) = raw.split_at(text_end);
    let body = rest.get(4..).unwrap_or_default();
    let head = std::str::from_utf8(head)?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("malformed HTTP status line from the OTLP endpoint")?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body = match length {
        Some(n) => body.get(..n).unwrap_or(body),
        None => &[],
    };
    Ok(Response::builder()
        .status(status)
        .body(Bytes::copy_from_slice(body))?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests use fixed, known-good inputs")]
mod tests {
    use super::*;

    #[test]
    fn switchboard_trace_ids_are_left_padded() {
        assert_eq!(
            otel_trace_id("0123456789abcdef").unwrap().to_string(),
            "00000000000000000123456789abcdef"
        );
        assert_eq!(otel_trace_id("0123456789ABCDEF"), None);
        assert_eq!(otel_trace_id("0123"), None);
    }

    #[test]
    fn responses_parse_status_and_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"hi");
        let r = parse_response(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi")
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.body().is_empty());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
