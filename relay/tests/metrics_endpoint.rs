//! `/metrics` exposes Prometheus counters named `switchboard_relay_*`; `/healthz` answers ok.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::{Duration, Instant};

#[test]
fn metrics_and_health() {
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let addr = relay.metrics.unwrap();
    assert_eq!(
        common::http_get(addr, "/healthz"),
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    assert!(common::http_get(addr, "/nope").0.contains("404"));

    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "m", common::unix_now() + 3600);
    assert!(client.allocate().is_success());
    let mut bad = common::TurnClient::rest(relay.addr, "wrong", "m", common::unix_now() + 3600);
    assert_eq!(bad.allocate().code(), Some(401));

    // Counters are published once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = common::http_get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        if body.contains("switchboard_relay_allocations 1\n")
            && body.contains("switchboard_relay_auth_failures_total{reason=\"bad_integrity\"} 1\n")
        {
            assert!(body.contains("# TYPE switchboard_relay_relayed_packets_total counter"));
            assert!(body.contains("switchboard_relay_denied_peers_total 0"));
            assert!(!body.contains(common::SECRET));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the allocation:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
