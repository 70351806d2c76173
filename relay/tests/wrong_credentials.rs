//! Clients with a wrong secret or an expired TURN REST username are refused with 401, and
//! coturn's client reports it cannot allocate.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn uclient_with_the_wrong_secret_cannot_allocate() {
    let tool = common::require_tool("turnutils_uclient");
    let relay = common::Relay::start();
    let out = common::run_with_timeout(
        Command::new(tool).args([
            "-W",
            "not-the-secret",
            "-u",
            "x",
            "-y",
            "-n",
            "1",
            "-p",
            &relay.addr.port().to_string(),
            "127.0.0.1",
        ]),
        Duration::from_secs(30),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "allocation with a wrong secret must fail:\n{text}"
    );
    assert!(
        text.contains("Cannot complete Allocation") || text.contains("401"),
        "unexpected output:\n{text}"
    );
}

#[test]
fn expired_and_forged_rest_usernames_get_401() {
    let relay = common::Relay::start();
    let now = common::unix_now();
    let mut expired = common::TurnClient::rest(relay.addr, common::SECRET, "late", now - 10);
    assert_eq!(expired.allocate().code(), Some(401));
    let mut forged = common::TurnClient::rest(relay.addr, "guessed", "mallory", now + 3600);
    assert_eq!(forged.allocate().code(), Some(401));
    let mut good = common::TurnClient::rest(relay.addr, common::SECRET, "fine", now + 3600);
    assert!(good.allocate().is_success());
}
