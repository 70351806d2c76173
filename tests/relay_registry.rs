//! The relay registry on workerd: relay nodes renew TTL leases with signed heartbeats,
//! forged, stale and replayed heartbeats are refused, ICE servers follow the client's
//! region and the nodes' load, a draining node gets no new clients, and a node that
//! stops beating disappears after its lease.
//!
//! Runs against the `fleet` instance of scripts/e2e.sh (`REGISTRY_SECRET`,
//! `RELAY_LEASE_MS`, `TRUST_REGION_HEADER`), shared only with tests/room_relay_failover.rs,
//! whose nodes use regions of their own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_proto::Millis;
use switchboard_proto::registry::sign_heartbeat;
use switchboard_tests::fleet::{
    Fleet, RelayNode, beat_signed, fleet, heartbeat_body, next_ts, now_ms, post_heartbeat,
    relay_bin, turn_url,
};
use switchboard_tests::{http_get, unique_room};

fn body(node: &str, region: &str, cpu: u32, draining: bool) -> Vec<u8> {
    heartbeat_body(node, region, cpu, 3, draining, false)
}

fn beat(f: &Fleet, node: &str, region: &str, cpu: u32, draining: bool) {
    beat_signed(f, &body(node, region, cpu, draining));
}

#[test]
fn forged_stale_replayed_and_unsigned_heartbeats_are_refused() {
    let f = fleet();
    let node = unique_room("forge");
    let good = body(&node, "eu", 1, false);
    let ts = next_ts();
    let sig = sign_heartbeat(f.secret.as_bytes(), ts, &good);

    let forged = body(&node, "eu", 1, true);
    let r = post_heartbeat(&f, &forged, Some(&sig));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "unauthorized"),
        "{}",
        r.body
    );
    let wrong_key = sign_heartbeat(b"not-the-secret", ts, &good);
    assert_eq!(post_heartbeat(&f, &good, Some(&wrong_key)).status, 401);
    assert_eq!(post_heartbeat(&f, &good, None).status, 401);
    assert_eq!(post_heartbeat(&f, &good, Some("t=1,v1=zz")).status, 401);
    let stale = sign_heartbeat(f.secret.as_bytes(), Millis(now_ms() - 31_000), &good);
    assert_eq!(post_heartbeat(&f, &good, Some(&stale)).status, 401);
    assert!(f.relays().iter().all(|n| n["node_id"] != node.as_str()));

    assert_eq!(post_heartbeat(&f, &good, Some(&sig)).status, 200);
    let replay = post_heartbeat(&f, &good, Some(&sig));
    assert_eq!(replay.status, 401, "a replayed heartbeat must be refused");
    assert!(replay.body.contains("not newer"), "{}", replay.body);
    assert!(!replay.body.contains(&f.secret));

    let big = vec![b' '; 9 * 1024];
    let big_sig = sign_heartbeat(f.secret.as_bytes(), next_ts(), &big);
    assert_eq!(post_heartbeat(&f, &big, Some(&big_sig)).status, 413);
    let garbage = b"{not json";
    let g_sig = sign_heartbeat(f.secret.as_bytes(), next_ts(), garbage);
    let r = post_heartbeat(&f, garbage, Some(&g_sig));
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let get = http_get(&format!("{}/v1/relays/heartbeat", f.base), &[]);
    assert_eq!(get.status, 405);
    // The registry kept serving throughout: the good node is listed.
    let listed = f.relays();
    let me = listed
        .iter()
        .find(|n| n["node_id"] == node.as_str())
        .unwrap();
    assert_eq!(me["region"], "eu");
    assert_eq!(me["draining"], false);
    assert_eq!(me["load"]["allocations"], 3);
}

#[test]
fn the_relay_list_needs_the_admin_token() {
    let f = fleet();
    let r = http_get(&format!("{}/v1/relays", f.base), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = http_get(
        &format!("{}/v1/relays", f.base),
        &[("authorization", "Bearer wrong")],
    );
    assert_eq!(r.status, 401);
}

#[test]
fn ice_servers_follow_region_then_load_and_skip_draining_nodes() {
    let f = fleet();
    // Regions of this test's own, so other tests' nodes cannot take the first places.
    let region = unique_room("r").to_ascii_lowercase();
    let far = unique_room("f").to_ascii_lowercase();
    let busy = unique_room("busy");
    let idle = unique_room("idle");
    let remote = unique_room("remote");
    // A full node (100 % CPU) ranks after every node with free capacity, whatever the draw.
    beat(&f, &busy, &region, 100, false);
    beat(&f, &idle, &region, 5, false);
    beat(&f, &remote, &far, 0, false);
    f.eventually("the region's nodes, least loaded first", || {
        f.turn_urls(&region) == [turn_url(&idle), turn_url(&busy)]
    });
    f.eventually(
        "the far region's node first, then the least loaded other",
        || {
            let urls = f.turn_urls(&far);
            urls.first() == Some(&turn_url(&remote)) && urls.len() == 2
        },
    );
    // Load changes reorder the list.
    beat(&f, &busy, &region, 1, false);
    beat(&f, &idle, &region, 100, false);
    f.eventually("the new least loaded node first", || {
        f.turn_urls(&region) == [turn_url(&busy), turn_url(&idle)]
    });
    // A draining node gets no new clients.
    beat(&f, &busy, &region, 1, true);
    f.eventually("the draining node gone from ICE servers", || {
        let urls = f.turn_urls(&region);
        urls.first() == Some(&turn_url(&idle)) && !urls.contains(&turn_url(&busy))
    });
    let listed = f.relays();
    let b = listed
        .iter()
        .find(|n| n["node_id"] == busy.as_str())
        .unwrap();
    assert_eq!(
        b["draining"], true,
        "a draining node stays listed for operators"
    );
}

#[test]
fn a_node_that_stops_beating_disappears_after_its_lease() {
    let f = fleet();
    let region = unique_room("k").to_ascii_lowercase();
    let dead = unique_room("dead");
    let alive = unique_room("alive");
    beat(&f, &dead, &region, 0, false);
    let last_beat = Instant::now();
    // `alive` is full (100 % CPU): it ranks after `dead` whatever the draw.
    beat(&f, &alive, &region, 100, false);
    f.eventually("both nodes handed out", || {
        f.turn_urls(&region) == [turn_url(&dead), turn_url(&alive)]
    });
    // `alive` keeps beating; `dead` was killed and falls silent.
    let start = Instant::now();
    let mut gone = false;
    while start.elapsed() < Duration::from_millis(f.lease_ms * 3 + 10_000) {
        beat(&f, &alive, &region, 100, false);
        let listed = f.relays();
        if listed.iter().all(|n| n["node_id"] != dead.as_str()) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(gone, "the silent node was never removed");
    assert!(
        last_beat.elapsed() >= Duration::from_millis(f.lease_ms - 200),
        "removed before its lease could have ended"
    );
    f.eventually("ICE servers without the dead node", || {
        let urls = f.turn_urls(&region);
        urls.first() == Some(&turn_url(&alive)) && !urls.contains(&turn_url(&dead))
    });
}

#[test]
fn clients_spread_over_equally_loaded_nodes_between_heartbeats() {
    let f = fleet();
    let region = unique_room("s").to_ascii_lowercase();
    let one = unique_room("eq1");
    let two = unique_room("eq2");
    // The same heartbeat again (the same load) whenever half a lease passed: the registry's view
    // of the load stands still, but the leases (2 s in scripts/e2e.sh) must outlive the polling
    // on a busy machine.
    let last_beat = std::cell::Cell::new(Instant::now());
    let renew = |force: bool| {
        if force || last_beat.get().elapsed() >= Duration::from_millis(f.lease_ms / 2) {
            beat(&f, &one, &region, 30, false);
            beat(&f, &two, &region, 30, false);
            last_beat.set(Instant::now());
        }
    };
    renew(true);
    // Both of this test's nodes, not two others filling in while the router's copy of the list
    // predates them.
    f.eventually("both nodes handed out", || {
        renew(false);
        let urls = f.turn_urls(&region);
        urls.contains(&turn_url(&one)) && urls.contains(&turn_url(&two))
    });
    // No change of load in between, yet the first place goes to both nodes (a draw by free
    // capacity, not "the least loaded" every time).
    let mut first_one = 0;
    let mut first_two = 0;
    for _ in 0..40 {
        renew(false);
        let urls = f.turn_urls(&region);
        assert_eq!(urls.len(), 2, "two distinct nodes: {urls:?}");
        assert_ne!(urls[0], urls[1]);
        if urls[0] == turn_url(&one) {
            first_one += 1;
        } else if urls[0] == turn_url(&two) {
            first_two += 1;
        }
    }
    // Each is first with probability 1/2: "both at least 5 of 40" fails once in ~5 million runs.
    assert!(
        first_one >= 5 && first_two >= 5,
        "{first_one} / {first_two} first places"
    );
    beat(&f, &one, &region, 30, true);
    beat(&f, &two, &region, 30, true);
}

#[test]
fn relay_processes_register_drain_and_drop_out_when_killed() {
    let f = fleet();
    let bin = relay_bin();
    let region = unique_room("p").to_ascii_lowercase();
    let one = unique_room("node1");
    let two = unique_room("node2");
    let n1 = RelayNode::start(&bin, &f, "127.0.0.2", &one, &region);
    let n2 = RelayNode::start(&bin, &f, "127.0.0.3", &two, &region);
    let listed =
        |id: &str| -> Option<Value> { f.relays().into_iter().find(|n| n["node_id"] == id) };
    f.eventually("both relay processes registered", || {
        listed(&one).is_some() && listed(&two).is_some()
    });
    let n = listed(&one).unwrap();
    assert_eq!(n["region"], region.as_str());
    assert_eq!(n["draining"], false);
    assert_eq!(n["urls"]["turn"][0], turn_url(&one).as_str());
    f.eventually("ICE servers name both nodes", || {
        let urls = f.turn_urls(&region);
        urls.contains(&turn_url(&one)) && urls.contains(&turn_url(&two))
    });

    // SIGTERM: node 1 drains (it keeps serving what it has) and gets no new clients.
    n1.signal(rustix::process::Signal::TERM);
    f.eventually("node 1 reported draining", || {
        listed(&one).is_some_and(|n| n["draining"] == true)
    });
    f.eventually("ICE servers without the draining node", || {
        let urls = f.turn_urls(&region);
        !urls.contains(&turn_url(&one)) && urls.contains(&turn_url(&two))
    });

    // kill -9: node 2 stops beating and drops out after its lease.
    n2.signal(rustix::process::Signal::KILL);
    f.eventually("the killed node removed from the registry", || {
        listed(&two).is_none()
    });
    drop(n1);
    drop(n2);
}
