//! Control plane: Prometheus text metrics on `/metrics`, health on `/healthz` (503 while
//! draining), and with the SFU on, its session endpoint ([`sessions`]).
//!
//! The event loop publishes counters into [`Metrics`] once a second (relaxed atomic stores, no
//! lock on the packet path); this module only reads them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::turn::Stats;

#[cfg(feature = "sfu")]
pub mod sessions;

/// Without the `sfu` feature there is no session endpoint: no value of this type exists.
#[cfg(not(feature = "sfu"))]
pub mod sessions {
    /// Stands for the SFU's session API in a relay built without it.
    #[derive(Debug, Clone)]
    pub enum SessionApi {}
}

/// Counters and gauges shared between the event loops (writers, one slot each) and the HTTP
/// endpoint (reader, which sums the slots).
#[derive(Debug)]
pub struct Metrics {
    loops: Box<[LoopMetrics]>,
    draining: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_loops(1)
    }
}

/// What one event loop publishes.
#[derive(Debug, Default)]
struct LoopMetrics {
    allocations: AtomicU64,
    allocations_created: AtomicU64,
    tcp_connections: AtomicU64,
    packets_to_peer: AtomicU64,
    bytes_to_peer: AtomicU64,
    packets_to_client: AtomicU64,
    bytes_to_client: AtomicU64,
    auth_failures: [AtomicU64; 7],
    denied_peers: AtomicU64,
    quota_rejections: AtomicU64,
    dropped_no_permission: AtomicU64,
    dropped_rate_limited: AtomicU64,
    malformed: AtomicU64,
    send_errors: AtomicU64,
    short_circuited: AtomicU64,
}

/// Label values of `switchboard_relay_auth_failures_total`, in [`Metrics::auth_failures`] order.
const AUTH_REASONS: [&str; 7] = [
    "missing_integrity",
    "stale_nonce",
    "wrong_realm",
    "unknown_user",
    "expired",
    "bad_integrity",
    "wrong_credentials",
];

impl Metrics {
    /// Metrics for `loops` event loops.
    pub fn with_loops(loops: usize) -> Self {
        Self {
            loops: (0..loops.max(1)).map(|_| LoopMetrics::default()).collect(),
            draining: AtomicU64::new(0),
        }
    }

    /// Live allocations over all event loops, as last published.
    pub fn allocation_count(&self) -> u64 {
        self.loops
            .iter()
            .map(|m| m.allocations.load(Ordering::Relaxed))
            .sum()
    }

    /// Bytes relayed in both directions since start over all event loops, as last published.
    pub fn relayed_bytes(&self) -> u64 {
        self.loops
            .iter()
            .map(|m| {
                m.bytes_to_peer
                    .load(Ordering::Relaxed)
                    .saturating_add(m.bytes_to_client.load(Ordering::Relaxed))
            })
            .fold(0, u64::saturating_add)
    }

    /// Copies the core's counters and the shell's gauges (single event loop).
    pub fn publish(
        &self,
        stats: &Stats,
        allocations: usize,
        tcp_connections: usize,
        send_errors: u64,
    ) {
        self.publish_loop(0, stats, allocations, tcp_connections, send_errors);
    }

    /// Copies event loop `id`'s counters and gauges.
    pub fn publish_loop(
        &self,
        id: usize,
        stats: &Stats,
        allocations: usize,
        tcp_connections: usize,
        send_errors: u64,
    ) {
        let Some(m) = self.loops.get(id) else {
            return;
        };
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&m.allocations, allocations as u64);
        set(&m.tcp_connections, tcp_connections as u64);
        set(&m.allocations_created, stats.allocations_created);
        set(&m.packets_to_peer, stats.packets_to_peer);
        set(&m.bytes_to_peer, stats.bytes_to_peer);
        set(&m.packets_to_client, stats.packets_to_client);
        set(&m.bytes_to_client, stats.bytes_to_client);
        let f = stats.auth_failures;
        let reasons = [
            f.missing_integrity,
            f.stale_nonce,
            f.wrong_realm,
            f.unknown_user,
            f.expired,
            f.bad_integrity,
            f.wrong_credentials,
        ];
        for (a, v) in m.auth_failures.iter().zip(reasons) {
            set(a, v);
        }
        set(&m.denied_peers, stats.denied_peers);
        set(&m.quota_rejections, stats.quota_rejections);
        set(&m.dropped_no_permission, stats.dropped_no_permission);
        set(&m.dropped_rate_limited, stats.dropped_rate_limited);
        set(&m.malformed, stats.malformed);
        set(&m.send_errors, send_errors);
    }

    /// Records how many datagrams event loop `id` relayed between two of its allocations in
    /// memory.
    pub fn publish_short_circuited(&self, id: usize, n: u64) {
        if let Some(m) = self.loops.get(id) {
            m.short_circuited.store(n, Ordering::Relaxed);
        }
    }

    /// Marks the relay as draining (graceful shutdown under way).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(u64::from(draining), Ordering::Relaxed);
    }

    /// Whether the relay is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) != 0
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        // A counter or gauge summed over the loops.
        let sum = |f: fn(&LoopMetrics) -> &AtomicU64| -> u64 {
            self.loops
                .iter()
                .map(|m| f(m).load(Ordering::Relaxed))
                .sum()
        };
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP switchboard_relay_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_relay_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "switchboard_relay_{name}{labels} {v}");
            }
        };
        metric(
            "allocations",
            "gauge",
            "Live TURN allocations.",
            &[("", sum(|m| &m.allocations))],
        );
        metric(
            "draining",
            "gauge",
            "1 while draining after SIGTERM/SIGINT (new allocations refused), else 0.",
            &[("", self.draining.load(Ordering::Relaxed))],
        );
        metric(
            "allocations_created_total",
            "counter",
            "TURN allocations created.",
            &[("", sum(|m| &m.allocations_created))],
        );
        metric(
            "tcp_connections",
            "gauge",
            "Open client TCP/TLS connections.",
            &[("", sum(|m| &m.tcp_connections))],
        );
        metric(
            "relayed_packets_total",
            "counter",
            "Packets relayed, by direction (in = client to peer, out = peer to client).",
            &[
                (r#"{direction="in"}"#, sum(|m| &m.packets_to_peer)),
                (r#"{direction="out"}"#, sum(|m| &m.packets_to_client)),
            ],
        );
        metric(
            "relayed_bytes_total",
            "counter",
            "Payload bytes relayed, by direction (in = client to peer, out = peer to client).",
            &[
                (r#"{direction="in"}"#, sum(|m| &m.bytes_to_peer)),
                (r#"{direction="out"}"#, sum(|m| &m.bytes_to_client)),
            ],
        );
        metric(
            "short_circuited_packets_total",
            "counter",
            "Packets relayed between two allocations of this relay in memory, without leaving \
             one relayed socket and entering another.",
            &[("", sum(|m| &m.short_circuited))],
        );
        let labels: Vec<String> = AUTH_REASONS
            .iter()
            .map(|r| format!("{{reason=\"{r}\"}}"))
            .collect();
        let samples: Vec<(&str, u64)> = labels
            .iter()
            .map(String::as_str)
            .zip((0..AUTH_REASONS.len()).map(|i| {
                self.loops
                    .iter()
                    .filter_map(|m| m.auth_failures.get(i))
                    .map(|a| a.load(Ordering::Relaxed))
                    .sum::<u64>()
            }))
            .collect();
        metric(
            "auth_failures_total",
            "counter",
            "Requests failing authentication, by reason.",
            &samples,
        );
        metric(
            "denied_peers_total",
            "counter",
            "Requests refused (403) by the peer address policy.",
            &[("", sum(|m| &m.denied_peers))],
        );
        metric(
            "quota_rejections_total",
            "counter",
            "Allocations refused by quota or capacity.",
            &[("", sum(|m| &m.quota_rejections))],
        );
        metric(
            "dropped_packets_total",
            "counter",
            "Data packets dropped, by reason.",
            &[
                (
                    r#"{reason="no_permission"}"#,
                    sum(|m| &m.dropped_no_permission),
                ),
                (
                    r#"{reason="rate_limited"}"#,
                    sum(|m| &m.dropped_rate_limited),
                ),
                (r#"{reason="malformed"}"#, sum(|m| &m.malformed)),
                (r#"{reason="send_error"}"#, sum(|m| &m.send_errors)),
            ],
        );
        out
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with_sessions(listener, metrics, None).await;
}

/// Like [`serve`], plus the SFU session endpoint and metrics when `sessions` is given.
pub async fn serve_with_sessions(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    sessions: Option<sessions::SessionApi>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let sessions = sessions.clone();
        // One short-lived task per scrape keeps a slow scraper from blocking others; this is the
        // control plane, not the packet path.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                answer(stream, &metrics, sessions.as_ref()),
            )
            .await;
        });
    }
}

/// The SFU's metrics, when it runs.
fn sfu_metrics(sessions: Option<&sessions::SessionApi>) -> String {
    #[cfg(feature = "sfu")]
    let text = sessions.map(|s| s.sfu.metrics.render());
    #[cfg(not(feature = "sfu"))]
    let text = sessions.map(|s| match *s {});
    text.unwrap_or_default()
}

/// Answers one request on `stream` (plain TCP, or TLS for the session endpoint).
pub(crate) async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    metrics: &Metrics,
    sessions: Option<&sessions::SessionApi>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut used = 0;
    // Read until the end of the request head; bodies are not expected.
    while used < buf.len() {
        let n = stream.read(buf.get_mut(used..).unwrap_or_default()).await?;
        if n == 0 {
            break;
        }
        used += n;
        if buf
            .get(..used)
            .is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
        {
            break;
        }
    }
    let head = String::from_utf8_lossy(buf.get(..used).unwrap_or_default());
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    #[cfg(feature = "sfu")]
    if let Some(api) = sessions
        && sessions::owns(path)
    {
        let prefix = buf.get(..used).unwrap_or_default().to_vec();
        return sessions::answer(&mut stream, prefix, api).await;
    }
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render() + &sfu_metrics(sessions),
        ),
        // Load balancers steer new clients away from a draining node; existing allocations keep
        // being served over TURN, which does not go through this endpoint.
        ("GET", "/healthz") if metrics.is_draining() => (
            "503 Service Unavailable",
            "text/plain; charset=utf-8",
            "draining\n".to_owned(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let stats = Stats {
            packets_to_peer: 3,
            ..Stats::default()
        };
        m.publish(&stats, 2, 1, 0);
        let text = m.render();
        assert!(text.contains("switchboard_relay_allocations 2\n"));
        assert!(text.contains("switchboard_relay_draining 0\n"));
        m.set_draining(true);
        assert!(m.render().contains("switchboard_relay_draining 1\n"));
        assert!(text.contains("switchboard_relay_relayed_packets_total{direction=\"in\"} 3\n"));
        assert!(text.contains("switchboard_relay_auth_failures_total{reason=\"stale_nonce\"} 0\n"));
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("switchboard_relay_"))
        );
    }
}
