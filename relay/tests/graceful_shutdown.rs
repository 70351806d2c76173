//! SIGTERM and SIGINT stop the relay promptly with exit status 0.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn sigterm_and_sigint_stop_the_relay_cleanly() {
    for sig in [common::Signal::TERM, common::Signal::INT] {
        let mut relay = common::Relay::start();
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
