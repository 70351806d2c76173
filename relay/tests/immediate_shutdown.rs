//! With `--drain-timeout 0` SIGTERM and SIGINT stop the relay at once, allocations or not; with
//! the default timeout a relay without allocations has nothing to drain and stops at once too.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn zero_drain_timeout_stops_at_once() {
    for sig in [common::Signal::TERM, common::Signal::INT] {
        let mut relay = common::Relay::start_with(&[
            "--allow-loopback-peers",
            "--secret",
            common::SECRET,
            "--drain-timeout",
            "0",
        ]);
        let mut client =
            common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
        assert!(client.allocate().is_success());
        relay.signal(sig);
        assert_eq!(
            relay.wait_exit(Duration::from_secs(5)),
            Some(true),
            "{sig:?}: log:\n{}",
            relay.log_text()
        );
    }
}

#[test]
fn nothing_to_drain_stops_at_once() {
    for sig in [common::Signal::TERM, common::Signal::INT] {
        let mut relay = common::Relay::start();
        relay.signal(sig);
        assert_eq!(
            relay.wait_exit(Duration::from_secs(5)),
            Some(true),
            "{sig:?}: log:\n{}",
            relay.log_text()
        );
    }
}
