//! coturn's `turnutils_uclient -t -S` relays through us with TURN over TLS and loses nothing.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn uclient_over_tls_loses_nothing() {
    let openssl = common::require_tool("openssl");
    let dir = std::env::temp_dir().join(format!("relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = common::run_with_timeout(
        Command::new(openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
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
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let tls_port = common::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--tls-listen",
        &tls_listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let (_peer, port) = common::echo_peer();
    let tool = common::require_tool("turnutils_uclient");
    let out = common::run_with_timeout(
        Command::new(tool)
            .args([
                "-t",
                "-S",
                "-W",
                common::SECRET,
                "-u",
                "tls",
                "-e",
                "127.0.0.1",
            ])
            .args([
                "-r",
                &port.to_string(),
                "-p",
                &tls_port.to_string(),
                "-n",
                "50",
                "-m",
                "4",
                "-l",
                "170",
                "127.0.0.1",
            ]),
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "uclient over TLS failed:\n{text}\nrelay:\n{}",
        relay.log_text()
    );
    assert!(
        text.contains("Total lost packets 0 "),
        "lost packets:\n{text}"
    );
    assert!(
        text.contains("tot_send_msgs=200, tot_recv_msgs=200"),
        "totals:\n{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
