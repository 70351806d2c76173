//! Secrets rotate without a restart: SIGHUP re-reads the config file; both old and new secrets
//! work during the overlap, and removing a secret revokes its allocations at their next refresh.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::{Duration, Instant};

#[test]
fn sighup_rotates_secrets_and_revokes_removed_ones() {
    let dir = std::env::temp_dir().join(format!("relay-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "secret = [\"old\"]\nallow-loopback-peers = true\n").unwrap();
    let relay = common::Relay::start_with(&["--config", file.to_str().unwrap()]);
    let expires = common::unix_now() + 3600;

    let mut old_client = common::TurnClient::rest(relay.addr, "old", "a", expires);
    assert!(old_client.allocate().is_success());
    let mut new_client = common::TurnClient::rest(relay.addr, "new", "b", expires);
    assert_eq!(
        new_client.allocate().code(),
        Some(401),
        "new secret not yet accepted"
    );

    // Overlap: both accepted.
    std::fs::write(
        &file,
        "secret = [\"new\", \"old\"]\nallow-loopback-peers = true\n",
    )
    .unwrap();
    relay.signal(common::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut new_client = loop {
        let mut c = common::TurnClient::rest(relay.addr, "new", "b", expires);
        if c.allocate().is_success() {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "reload never took effect:\n{}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(old_client.refresh(600).is_success());

    // Old secret removed: its allocation is refused at the next refresh and deleted.
    std::fs::write(&file, "secret = [\"new\"]\nallow-loopback-peers = true\n").unwrap();
    relay.signal(common::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let code = old_client.refresh(600).code();
        if code == Some(401) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old secret still accepted: {code:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The deletion is logged just after the 401 is sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.log_text().contains("credentials revoked") {
        assert!(
            Instant::now() < deadline,
            "the revoked allocation was not deleted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(new_client.refresh(600).is_success());
    let _ = std::fs::remove_dir_all(dir);
}
