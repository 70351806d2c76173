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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_proto::Millis;
use switchboard_proto::registry::{SIGNATURE_HEADER, sign_heartbeat};
use switchboard_tests::{HttpResponse, http_get, http_post, unique_room};

struct Fleet {
    base: String,
    secret: String,
    admin: String,
    lease_ms: u64,
}

fn fleet() -> Fleet {
    let var = |n: &str| {
        std::env::var(n).unwrap_or_else(|_| panic!("{n} is not set: run through scripts/e2e.sh"))
    };
    Fleet {
        base: var("SWITCHBOARD_FLEET_URL"),
        secret: var("SWITCHBOARD_REGISTRY_SECRET"),
        admin: var("SWITCHBOARD_ADMIN_TOKEN"),
        lease_ms: var("SWITCHBOARD_RELAY_LEASE_MS").parse().unwrap(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Strictly increasing signing times, as a relay's clock gives them.
fn next_ts() -> Millis {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let t = now_ms();
    let step = |last: u64| Some(last.max(t - 1) + 1);
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
        .unwrap();
    Millis(prev.max(t - 1) + 1)
}

fn body(node: &str, region: &str, cpu: u32, draining: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "node_id": node,
        "region": region,
        "urls": {
            "stun": [format!("stun:{node}.test:3478")],
            "turn": [format!("turn:{node}.test:3478?transport=udp")],
        },
        "load": {"cpu_percent": cpu, "cores": 1, "allocations": 3},
        "draining": draining,
    }))
    .unwrap()
}

impl Fleet {
    fn post(&self, body: &[u8], signature: Option<&str>) -> HttpResponse {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(s) = signature {
            headers.push((SIGNATURE_HEADER, s));
        }
        http_post(
            &format!("{}/v1/relays/heartbeat", self.base),
            &headers,
            body,
        )
    }

    fn beat(&self, node: &str, region: &str, cpu: u32, draining: bool) {
        let b = body(node, region, cpu, draining);
        let sig = sign_heartbeat(self.secret.as_bytes(), next_ts(), &b);
        let r = self.post(&b, Some(&sig));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    fn relays(&self) -> Vec<Value> {
        let auth = format!("Bearer {}", self.admin);
        let r = http_get(
            &format!("{}/v1/relays", self.base),
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["relays"].as_array().unwrap().clone()
    }

    /// The TURN URLs handed to a client in `region`.
    fn turn_urls(&self, region: &str) -> Vec<String> {
        // A client address per call: the mint rate limit (per client) must not meet the polling.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!("2001:db8::{:x}:{:x}", n >> 16, n & 0xffff);
        let r = http_get(
            &format!("{}/v1/ice-servers", self.base),
            &[("x-switchboard-region", region), ("cf-connecting-ip", &ip)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("username").is_some())
            .flat_map(|s| s["urls"].as_array().unwrap().clone())
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls `f` until it holds: the router caches the node list for a few seconds.
    fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_millis(self.lease_ms * 3 + 10_000);
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for: {what}");
    }
}

fn turn_url(node: &str) -> String {
    format!("turn:{node}.test:3478?transport=udp")
}

#[test]
fn forged_stale_replayed_and_unsigned_heartbeats_are_refused() {
    let f = fleet();
    let node = unique_room("forge");
    let good = body(&node, "eu", 1, false);
    let ts = next_ts();
    let sig = sign_heartbeat(f.secret.as_bytes(), ts, &good);

    let forged = body(&node, "eu", 1, true);
    let r = f.post(&forged, Some(&sig));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "unauthorized"),
        "{}",
        r.body
    );
    let wrong_key = sign_heartbeat(b"not-the-secret", ts, &good);
    assert_eq!(f.post(&good, Some(&wrong_key)).status, 401);
    assert_eq!(f.post(&good, None).status, 401);
    assert_eq!(f.post(&good, Some("t=1,v1=zz")).status, 401);
    let stale = sign_heartbeat(f.secret.as_bytes(), Millis(now_ms() - 31_000), &good);
    assert_eq!(f.post(&good, Some(&stale)).status, 401);
    assert!(f.relays().iter().all(|n| n["node_id"] != node.as_str()));

    assert_eq!(f.post(&good, Some(&sig)).status, 200);
    let replay = f.post(&good, Some(&sig));
    assert_eq!(replay.status, 401, "a replayed heartbeat must be refused");
    assert!(replay.body.contains("not newer"), "{}", replay.body);
    assert!(!replay.body.contains(&f.secret));

    let big = vec![b' '; 9 * 1024];
    let big_sig = sign_heartbeat(f.secret.as_bytes(), next_ts(), &big);
    assert_eq!(f.post(&big, Some(&big_sig)).status, 413);
    let garbage = b"{not json";
    let g_sig = sign_heartbeat(f.secret.as_bytes(), next_ts(), garbage);
    let r = f.post(garbage, Some(&g_sig));
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
    f.beat(&busy, &region, 80, false);
    f.beat(&idle, &region, 5, false);
    f.beat(&remote, &far, 0, false);
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
    f.beat(&busy, &region, 1, false);
    f.beat(&idle, &region, 90, false);
    f.eventually("the new least loaded node first", || {
        f.turn_urls(&region) == [turn_url(&busy), turn_url(&idle)]
    });
    // A draining node gets no new clients.
    f.beat(&busy, &region, 1, true);
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
    f.beat(&dead, &region, 0, false);
    let last_beat = Instant::now();
    f.beat(&alive, &region, 50, false);
    f.eventually("both nodes handed out", || {
        f.turn_urls(&region) == [turn_url(&dead), turn_url(&alive)]
    });
    // `alive` keeps beating; `dead` was killed and falls silent.
    let start = Instant::now();
    let mut gone = false;
    while start.elapsed() < Duration::from_millis(f.lease_ms * 3 + 10_000) {
        f.beat(&alive, &region, 50, false);
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

/// A relay process (the release binary), in its own process group.
struct RelayNode {
    child: std::process::Child,
}

impl RelayNode {
    fn start(bin: &str, f: &Fleet, ip: &str, node: &str, region: &str) -> RelayNode {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(bin)
            .args([
                "--listen",
                &format!("{ip}:3478"),
                "--secret",
                "fleet-turn-secret",
                "--threads",
                "1",
                "--drain-timeout",
                "30",
                "--worker-url",
                &f.base,
                "--node-id",
                node,
                "--region",
                region,
                "--public-url",
                &format!("turn:{node}.test:3478?transport=udp"),
                "--heartbeat-interval",
                "1",
            ])
            .env("RELAY_REGISTRY_SECRET", &f.secret)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        RelayNode { child }
    }

    fn signal(&self, sig: rustix::process::Signal) {
        // kill(2) on the group, never the `kill` command.
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .unwrap();
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

impl Drop for RelayNode {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

#[test]
fn relay_processes_register_drain_and_drop_out_when_killed() {
    let f = fleet();
    let Ok(bin) = std::env::var("SWITCHBOARD_RELAY_BIN") else {
        panic!("SWITCHBOARD_RELAY_BIN is not set: scripts/e2e.sh sets it to the release relay");
    };
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
