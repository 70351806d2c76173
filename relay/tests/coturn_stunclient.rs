//! coturn's `turnutils_stunclient` learns its reflexive address from the relay (STUN Binding).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn stunclient_gets_its_reflexive_address() {
    let tool = common::require_tool("turnutils_stunclient");
    let relay = common::Relay::start();
    let out = common::run_with_timeout(
        Command::new(tool).args(["-p", &relay.addr.port().to_string(), "127.0.0.1"]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "turnutils_stunclient failed:\n{text}");
    assert!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "no reflexive address in:\n{text}"
    );
}
