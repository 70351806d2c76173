//! An allocation that is never released does not hold the relay up: after SIGTERM it exits 0
//! once `--drain-timeout` has passed.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn drain_ends_at_the_timeout() {
    let mut relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--drain-timeout",
        "1",
    ]);
    let mut client =
        common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
    assert!(client.allocate().is_success());

    relay.signal(common::Signal::TERM);
    relay.wait_log("draining", Duration::from_secs(5));
    assert!(relay.is_running(), "the drain waits for the allocation");
    assert_eq!(
        relay.wait_exit(Duration::from_secs(10)),
        Some(true),
        "log:\n{}",
        relay.log_text()
    );
    assert!(relay.log_text().contains("drain timeout reached"));
}
