//! TURN REST usernames carrying a Switchboard trace (`<expiry>:<user>.<trace_id>`): the per-user
//! allocation quota counts `<user>` whatever the trace, and the trace shows in the allocation's
//! log lines.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::Duration;

#[test]
fn quota_keys_on_the_user_and_logs_carry_the_trace() {
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--max-allocations-per-user",
        "1",
    ]);
    let expires = common::unix_now() + 3600;
    let mut first = common::TurnClient::rest(
        relay.addr,
        common::SECRET,
        "alice.0123456789abcdef",
        expires,
    );
    assert!(first.allocate().is_success());
    relay.wait_log("allocation created", Duration::from_secs(5));
    let created = relay
        .log_text()
        .lines()
        .find(|l| l.contains("allocation created"))
        .unwrap()
        .to_owned();
    assert!(created.contains("trace_id=0123456789abcdef"), "{created}");
    assert!(
        !created.contains("alice"),
        "usernames stay out of logs: {created}"
    );

    // Same user, another trace (another browser tab): the quota of 1 is already used.
    let mut second = common::TurnClient::rest(
        relay.addr,
        common::SECRET,
        "alice.fedcba9876543210",
        expires,
    );
    assert_eq!(second.allocate().code(), Some(486));
    relay.wait_log("per-user quota reached", Duration::from_secs(5));
    let refused = relay
        .log_text()
        .lines()
        .find(|l| l.contains("per-user quota reached"))
        .unwrap()
        .to_owned();
    assert!(refused.contains("trace_id=fedcba9876543210"), "{refused}");

    // Another user is not affected.
    let mut other =
        common::TurnClient::rest(relay.addr, common::SECRET, "bob.0123456789abcdef", expires);
    assert!(other.allocate().is_success());
}
