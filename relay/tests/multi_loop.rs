//! `--threads 2`: two event loops share the listening sockets through SO_REUSEPORT. The kernel
//! picks a loop's socket by hashing a UDP flow's addresses, so every datagram of a client's
//! 5-tuple reaches the loop that holds its allocation (were it otherwise, that loop would answer
//! 437 or drop the data, and the runs below would lose packets); a TCP/TLS connection stays on the
//! loop that accepted it. The allocation quota per user is shared by the loops.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::process::Command;
use std::time::Duration;

const THREADS: &[&str] = &["--threads", "2", "--allow-loopback-peers", "--secret"];

fn relay_with(extra: &[&str]) -> common::Relay {
    let mut args: Vec<&str> = THREADS.to_vec();
    args.push(common::SECRET);
    args.extend_from_slice(extra);
    common::Relay::start_with_ports(&args, common::wide_relay_port_range())
}

fn assert_clean(report: &common::UclientReport, expected: u64) {
    assert!(report.success, "uclient failed:\n{}", report.text);
    assert_eq!(report.lost, Some(0), "lost packets:\n{}", report.text);
    assert_eq!(report.sent, Some(expected), "sent:\n{}", report.text);
    assert_eq!(
        report.received,
        Some(expected),
        "received:\n{}",
        report.text
    );
}

/// Both loops served allocations (so the run really spread over them).
fn assert_both_loops_used(relay: &common::Relay) {
    let log = relay.log_text();
    for id in [
        "event_loop\u{1b}[0m\u{1b}[2m=\u{1b}[0m0",
        "event_loop\u{1b}[0m\u{1b}[2m=\u{1b}[0m1",
    ] {
        let plain = id
            .replace("\u{1b}[0m\u{1b}[2m", "")
            .replace("\u{1b}[0m", "");
        assert!(
            log.contains(id) || log.contains(&plain),
            "no allocation on {plain}:\n{log}"
        );
    }
}

#[test]
fn uclient_64_clients_over_udp_against_two_loops_loses_nothing() {
    let relay = relay_with(&["--max-allocations-per-user", "200"]);
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &[], 20, 64);
    // 64 clients, each with an RTP allocation (EVEN-PORT, reserving the next port) and an RTCP
    // one made with the RESERVATION-TOKEN, possibly on the other loop; data flows on RTP.
    assert_clean(&report, 64 * 20);
    assert_both_loops_used(&relay);
}

#[test]
fn uclient_64_clients_over_tcp_against_two_loops_loses_nothing() {
    let relay = relay_with(&["--max-allocations-per-user", "200"]);
    let (_peer, port) = common::echo_peer();
    let report = common::uclient(&relay, port, &["-t"], 20, 64);
    assert_clean(&report, 64 * 20);
    assert_both_loops_used(&relay);
}

#[test]
fn uclient_64_clients_over_tls_against_two_loops_loses_nothing() {
    let openssl = common::require_tool("openssl");
    let dir = std::env::temp_dir().join(format!("relay-mloop-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = common::run_with_timeout(
        Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let tls_port = common::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let relay = relay_with(&[
        "--max-allocations-per-user",
        "200",
        "--tls-listen",
        &tls_listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let (_peer, port) = common::echo_peer();
    let report = common::uclient_at(
        tls_port,
        port,
        &["-W", common::SECRET, "-u", "tls"],
        &["-t", "-S"],
        20,
        64,
    );
    assert_clean(&report, 64 * 20);
    assert_both_loops_used(&relay);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_per_user_quota_holds_across_loops() {
    let relay = relay_with(&["--max-allocations-per-user", "4"]);
    let expires = common::unix_now() + 3600;
    // 32 flows of one user spread over both loops (the kernel hashes each source port): with a
    // quota per loop instead of per node, 8 would get an allocation unless 29 or more of the 32
    // flows landed on one loop (odds below one in ten million).
    let mut clients: Vec<common::TurnClient> = (0..32)
        .map(|_| common::TurnClient::rest(relay.addr, common::SECRET, "quota", expires))
        .collect();
    let codes: Vec<Option<u16>> = clients
        .iter_mut()
        .map(|c| {
            let r = c.allocate();
            if r.is_success() { None } else { r.code() }
        })
        .collect();
    let granted = codes.iter().filter(|c| c.is_none()).count();
    assert_eq!(granted, 4, "allocations granted: {codes:?}");
    assert!(
        codes.iter().flatten().all(|c| *c == 486),
        "refusals are 486: {codes:?}"
    );
    // Releasing one on whichever loop holds it frees a slot for the user on any loop.
    let holder = codes.iter().position(Option::is_none).unwrap();
    assert!(clients[holder].refresh(0).is_success());
    let mut late = common::TurnClient::rest(relay.addr, common::SECRET, "quota", expires);
    assert!(late.allocate().is_success());
}
