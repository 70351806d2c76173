//! An allocation made with a TURN REST credential never outlives the credential: relaying stops
//! when it expires, even in the middle of a stream and without any request from the client; a
//! Refresh with a fresh credential of the same user keeps the stream whole.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::{ChannelData, ChannelNumber};
use switchboard_relay::turn::auth::rest_password;

/// 400 messages, one every 20 ms: an 8 s stream.
const MESSAGES: u32 = 400;
const INTERVAL: Duration = Duration::from_millis(20);

/// A REST expiry `secs` seconds ahead (Unix seconds), and the instant it is reached.
fn expiry_in(secs: u64) -> (u64, Instant) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let expiry = now.as_secs() + secs;
    let left = Duration::from_secs(expiry).saturating_sub(now);
    (expiry, Instant::now() + left)
}

fn counter(body: &str, line_start: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{body}"))
}

/// The relay's counter of datagrams relayed client -> peer, as last published (once a second).
fn relayed_to_peer(metrics: std::net::SocketAddr) -> u64 {
    let (_, body) = common::http_get(metrics, "/metrics");
    counter(
        &body,
        "switchboard_relay_relayed_packets_total{direction=\"in\"}",
    )
}

#[test]
fn a_credential_expiring_mid_stream_stops_the_relaying() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
    ]);
    let metrics = relay.metrics.unwrap();
    let (_peer, port) = common::echo_peer();
    // turnutils_uclient allocates at once but starts its 8 s stream 1 to 6 s later (measured
    // here); a credential expiring 7 to 8 s from now expires inside the stream either way (about
    // 2 s into it when uclient starts late, 6 s when it starts early).
    let (expiry, expires_at) = expiry_in(8);
    let username = format!("{expiry}:expiring");
    let password = rest_password(common::SECRET, &username);
    let relay_port = relay.addr.port();
    let uclient = std::thread::spawn(move || {
        common::uclient_at(
            relay_port,
            port,
            &["-u", &username, "-w", &password],
            &["-c", "-z", "20"],
            MESSAGES,
            1,
        )
    });
    // A reading published after the expiry (the relay publishes once a second).
    std::thread::sleep(
        expires_at.saturating_duration_since(Instant::now()) + Duration::from_millis(1500),
    );
    let at_expiry = relayed_to_peer(metrics);
    let report = uclient.join().unwrap();
    assert_eq!(
        report.sent,
        Some(u64::from(MESSAGES)),
        "uclient:\n{}",
        report.text
    );
    std::thread::sleep(Duration::from_millis(1500));
    let at_end = relayed_to_peer(metrics);
    let received = report.received.unwrap_or_else(|| panic!("{}", report.text));
    assert!(
        at_expiry > 0 && received > 0,
        "the stream started before the expiry:\n{}",
        report.text
    );
    assert!(
        received < u64::from(MESSAGES) && at_expiry < u64::from(MESSAGES),
        "the stream went on after the expiry:\n{}",
        report.text
    );
    assert_eq!(
        at_end, at_expiry,
        "nothing was relayed after the credential expired"
    );
    relay.wait_log("allocation deleted", Duration::from_secs(5));
    assert!(!relay.log_text().contains("refreshed to zero"));
}

/// One closed-loop stream over a channel: sends `message`, waits at most `wait` for its echo.
fn echoed(client: &common::TurnClient, message: &[u8], wait: Duration) -> bool {
    client.raw(&ChannelData::encode(ChannelNumber(0x4000), message, false));
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let Some(bytes) = client.recv_within(deadline - Instant::now()) else {
            return false;
        };
        if ChannelData::decode(&bytes).is_ok_and(|cd| cd.data == message) {
            return true;
        }
    }
    false
}

#[test]
fn a_refresh_with_a_fresh_credential_keeps_the_stream_whole() {
    let relay = common::Relay::start();
    let (_peer, port) = common::echo_peer();
    let peer = format!("127.0.0.1:{port}").parse().unwrap();
    let (expiry, expires_at) = expiry_in(3);
    // Both start with a credential that expires 3 s into the 8 s stream; only `renewed` fetches
    // a fresh one and refreshes its allocation with it, as an SDK would.
    let mut renewed = common::TurnClient::rest(relay.addr, common::SECRET, "renewed", expiry);
    let mut stale = common::TurnClient::rest(relay.addr, common::SECRET, "stale", expiry);
    for c in [&mut renewed, &mut stale] {
        let r = c.allocate();
        assert!(r.is_success());
        let lifetime =
            attr::decode_u32(r.msg().get(attr::LIFETIME).unwrap(), attr::LIFETIME).unwrap();
        assert!(
            lifetime <= 3,
            "lifetime {lifetime} capped at the credential"
        );
        assert!(c.bind_channel(0x4000, peer).is_success());
    }
    let start = Instant::now();
    let (mut got_renewed, mut got_stale, mut stale_misses) = (0, 0, 0);
    for i in 0..MESSAGES {
        if i == 50 {
            let username = format!("{}:renewed", common::unix_now() + 3600);
            renewed.password = rest_password(common::SECRET, &username);
            renewed.username = username;
            let r = renewed.refresh(600);
            assert!(r.is_success(), "refresh with the fresh credential");
            assert_eq!(
                attr::decode_u32(r.msg().get(attr::LIFETIME).unwrap(), attr::LIFETIME).unwrap(),
                600
            );
        }
        let message = format!("message {i:03}");
        got_renewed += u32::from(echoed(&renewed, message.as_bytes(), Duration::from_secs(1)));
        // Once the stale stream has clearly stopped, stop waiting on it (keeps the test short).
        if stale_misses < 5 {
            if echoed(&stale, message.as_bytes(), Duration::from_millis(100)) {
                got_stale += 1;
                stale_misses = 0;
            } else {
                stale_misses += 1;
            }
        }
        let next = start + INTERVAL * (i + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert!(Instant::now() > expires_at + Duration::from_secs(2));
    assert_eq!(got_renewed, MESSAGES, "the renewed stream lost nothing");
    assert!(
        got_stale > 0 && got_stale < MESSAGES / 2,
        "the stale stream stopped at the expiry: {got_stale} echoes"
    );
}
