//! A second SIGTERM/SIGINT during the drain stops the relay at once, with exit status 0.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn second_signal_stops_the_drain() {
    for (first, second) in [
        (common::Signal::TERM, common::Signal::TERM),
        (common::Signal::INT, common::Signal::TERM),
    ] {
        // The default drain timeout (30 s) is far longer than the bound below.
        let mut relay = common::Relay::start();
        let mut client =
            common::TurnClient::rest(relay.addr, common::SECRET, "u", common::unix_now() + 3600);
        assert!(client.allocate().is_success());
        relay.signal(first);
        relay.wait_log("draining", Duration::from_secs(5));
        assert!(relay.is_running());
        relay.signal(second);
        assert_eq!(
            relay.wait_exit(Duration::from_secs(10)),
            Some(true),
            "{first:?} then {second:?}: log:\n{}",
            relay.log_text()
        );
    }
}
