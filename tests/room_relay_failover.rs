//! A room's relays come from the registry and move when a node dies or drains: `welcome` lists
//! the room's pinned registry nodes and its one SFU node, every peer of the room meets on that
//! node, and when a pinned node's lease ends (or it drains) the room pushes `relays-changed`
//! with fresh credentials for the surviving nodes to its connected peers that asked for it.
//!
//! Runs against the `fleet` instance of scripts/e2e.sh, like tests/relay_registry.rs. Each
//! test uses regions of its own, so the nodes of other tests never rank first. The pin's
//! survival of a Worker restart runs on an instance of its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_proto::{Millis, sfu_token};
use switchboard_tests::fleet::{
    Fleet, beat_signed, fleet, heartbeat_body, sfu_base, turn_url, turn_urls_of,
};
use switchboard_tests::{Client, WorkerProcess, http_get, unique_room};

/// A heartbeat of `node` with an SFU endpoint.
fn beat(f: &Fleet, node: &str, region: &str, cpu: u32, draining: bool) {
    beat_signed(f, &heartbeat_body(node, region, cpu, 0, draining, true));
}

/// Waits until the router's copy of the node list (a few seconds old at most) lists `nodes`
/// first for `region`, so a join sees them too.
fn wait_listed(f: &Fleet, region: &str, nodes: &[&str]) {
    let want: Vec<String> = nodes.iter().map(|n| turn_url(n)).collect();
    f.eventually(
        &format!("the registry listing {nodes:?} for {region}"),
        || f.turn_urls(region) == want,
    );
}

async fn join(f: &Fleet, room: &str, region: &str, caps: bool) -> Client {
    let query = if caps { "caps=relays" } else { "" };
    Client::join_with_headers(&f.base, room, query, &[("x-switchboard-region", region)]).await
}

/// Beats `nodes` every 300 ms on a thread until the returned guard is dropped or killed.
struct Beating {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    nodes: Vec<(String, String, u32)>,
    /// When the last heartbeat was sent (before it was sent: its lease ends after this plus
    /// the lease).
    last_sent: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Beating {
    /// The nodes fall silent, as after `kill -9`; returns when their last heartbeat was sent.
    fn kill(mut self) -> Instant {
        self.nodes.clear();
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.last_sent.lock().unwrap().unwrap()
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A test's nodes leave the fleet at its end (a draining node is never handed out), so
        // they cannot meet the rooms of the tests that run after it on this instance.
        let f = fleet();
        for (node, region, cpu) in &self.nodes {
            beat(&f, node, region, *cpu, true);
        }
    }
}

fn keep_beating(nodes: Vec<(String, String, u32)>) -> Beating {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let beats = nodes.clone();
    let last_sent = std::sync::Arc::new(std::sync::Mutex::new(None));
    let sent = last_sent.clone();
    let thread = std::thread::spawn(move || {
        let f = fleet();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            *sent.lock().unwrap() = Some(Instant::now());
            for (node, region, cpu) in &beats {
                beat(&f, node, region, *cpu, false);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    Beating {
        stop,
        thread: Some(thread),
        nodes,
        last_sent,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_rooms_welcome_lists_its_registry_nodes_and_every_peer_meets_on_one_sfu_node() {
    let f = fleet();
    let region = unique_room("w").to_ascii_lowercase();
    let other = unique_room("o").to_ascii_lowercase();
    let a = unique_room("a");
    let b = unique_room("b");
    let far = unique_room("far");
    // b is full (100 % CPU): it ranks after a, whatever the draw.
    let _beats = keep_beating(vec![
        (a.clone(), region.clone(), 5),
        (b.clone(), region.clone(), 100),
        (far.clone(), other.clone(), 0),
    ]);
    wait_listed(&f, &region, &[&a, &b]);
    let room = unique_room("pin");
    let first = join(&f, &room, &region, false).await;
    let w = &first.welcome;
    assert_eq!(
        turn_urls_of(&w["ice_servers"]),
        [turn_url(&a), turn_url(&b)]
    );
    assert_eq!(
        w["sfu"]["url"],
        format!("{}/v1/sessions", sfu_base(&a)).as_str()
    );
    let claims = sfu_token::verify(
        f.turn_secret.as_bytes(),
        w["sfu"]["token"].as_str().unwrap(),
        Millis(0),
    )
    .unwrap();
    assert_eq!(claims.room.as_str(), room);
    assert_eq!(claims.peer_id.as_str(), first.peer_id());
    // A peer from another region meets the room where it is pinned, not near itself.
    let second = join(&f, &room, &other, false).await;
    assert_eq!(second.welcome["sfu"]["url"], w["sfu"]["url"]);
    assert_eq!(
        turn_urls_of(&second.welcome["ice_servers"]),
        [turn_url(&a), turn_url(&b)]
    );
    // The token refresh names the pinned node too.
    let r = http_get(
        &format!(
            "{}/v1/sfu-token?room={room}&sfu_token={}",
            f.base,
            w["sfu"]["token"].as_str().unwrap()
        ),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["url"], w["sfu"]["url"]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_pinned_node_whose_lease_ends_is_pushed_to_connected_peers() {
    let f = fleet();
    let region = unique_room("x").to_ascii_lowercase();
    let dying = unique_room("dying");
    let survivor = unique_room("surv");
    let spare = unique_room("spare");
    // The survivor is full (100 % CPU): the room pins [dying, survivor] whatever the draw.
    let beats = keep_beating(vec![
        (dying.clone(), region.clone(), 0),
        (survivor.clone(), region.clone(), 100),
    ]);
    wait_listed(&f, &region, &[&dying, &survivor]);
    let room = unique_room("fail");
    let mut one = join(&f, &room, &region, true).await;
    let mut two = join(&f, &room, &region, true).await;
    let mut old = join(&f, &room, &region, false).await;
    // The spare joins the fleet once the room is pinned: the node that fills the pin later.
    let _spare = keep_beating(vec![(spare.clone(), region.clone(), 60)]);
    assert_eq!(
        one.welcome["sfu"]["url"],
        format!("{}/v1/sessions", sfu_base(&dying)).as_str()
    );
    assert_eq!(one.expect("peer-joined").await["peer_id"], two.peer_id());
    one.expect("peer-joined").await;
    two.expect("peer-joined").await;

    // `dying` is killed: it sends no more heartbeats, the others go on.
    let killed = beats.kill();
    let survivors = keep_beating(vec![(survivor.clone(), region.clone(), 100)]);
    let lease = Duration::from_millis(f.lease_ms);
    let mut first_push = None;
    for c in [&mut one, &mut two] {
        let frame = c.next_within(lease * 3 + Duration::from_secs(15)).await;
        first_push.get_or_insert_with(|| killed.elapsed());
        assert_eq!(frame["type"], "relays-changed", "{frame}");
        assert_eq!(frame["reason"], "node_lost");
        assert!(
            frame.get("seq").is_none(),
            "relays-changed is not sequenced"
        );
        let urls = turn_urls_of(&frame["ice_servers"]);
        assert_eq!(urls, [turn_url(&survivor), turn_url(&spare)], "{frame}");
        assert_eq!(
            frame["sfu"]["url"],
            format!("{}/v1/sessions", sfu_base(&survivor)).as_str()
        );
        let claims = sfu_token::verify(
            f.turn_secret.as_bytes(),
            frame["sfu"]["token"].as_str().unwrap(),
            Millis(0),
        )
        .unwrap();
        assert_eq!(claims.peer_id.as_str(), c.peer_id());
        let username = frame["ice_servers"][1]["username"].as_str().unwrap();
        assert!(
            username.ends_with(c.welcome["trace_id"].as_str().unwrap()),
            "{username}"
        );
    }
    let elapsed = first_push.unwrap();
    assert!(
        elapsed >= lease,
        "pushed before the lease could have ended ({elapsed:?})"
    );
    println!("relays-changed {elapsed:?} after the last heartbeat was sent (lease {lease:?})");
    // A client that did not ask for the frame does not get it; its next frame is this signal.
    one.signal(&old.peer_id(), json!({"after": "move"}));
    let next = old.next().await;
    assert_eq!(next["type"], "signal", "{next}");
    assert_eq!(next["payload"]["after"], "move");
    // Later joins meet on the new node.
    let late = join(&f, &room, &region, true).await;
    assert_eq!(late.welcome["sfu"]["url"], one_sfu(&survivor));
    drop(survivors);
}

fn one_sfu(node: &str) -> String {
    format!("{}/v1/sessions", sfu_base(node))
}

#[tokio::test(flavor = "current_thread")]
async fn a_draining_sfu_node_moves_the_room() {
    let f = fleet();
    let region = unique_room("d").to_ascii_lowercase();
    let drains = unique_room("drains");
    let stays = unique_room("stays");
    // `stays` is full (100 % CPU): the room's SFU node is `drains` whatever the draw.
    let beats = keep_beating(vec![
        (drains.clone(), region.clone(), 0),
        (stays.clone(), region.clone(), 100),
    ]);
    wait_listed(&f, &region, &[&drains, &stays]);
    let room = unique_room("drain");
    let mut peer = join(&f, &room, &region, true).await;
    assert_eq!(peer.welcome["sfu"]["url"], one_sfu(&drains));
    beats.kill();
    // SIGTERM on the relay: its heartbeats say draining from now on.
    beat(&f, &drains, &region, 0, true);
    let _beats = keep_beating(vec![(stays.clone(), region.clone(), 100)]);
    let frame = peer.next_within(Duration::from_secs(20)).await;
    assert_eq!(frame["type"], "relays-changed", "{frame}");
    assert_eq!(frame["reason"], "node_draining");
    assert_eq!(frame["sfu"]["url"], one_sfu(&stays));
    assert!(!turn_urls_of(&frame["ice_servers"]).contains(&turn_url(&drains)));
}

#[tokio::test(flavor = "current_thread")]
async fn the_pin_survives_a_restart_of_the_worker() {
    let dir = std::env::temp_dir().join(unique_room("switchboard-pin-restart"));
    let f0 = fleet();
    let vars = [
        ("REGISTRY_SECRET", f0.secret.as_str()),
        ("TURN_SECRET", f0.turn_secret.as_str()),
        // Leases outlive the restart, so no heartbeats are needed meanwhile.
        ("RELAY_LEASE_MS", "120000"),
        ("RESUME_WINDOW_MS", "60000"),
        ("TRUST_REGION_HEADER", "true"),
    ];
    let worker = WorkerProcess::start(18795, 19295, &dir, &vars).await;
    let f = Fleet {
        base: worker.base.clone(),
        ..fleet()
    };
    let region = "restart";
    // `other` is full (100 % CPU): the room pins [pinned, other] whatever the draw.
    beat(&f, "pinned", region, 10, false);
    beat(&f, "other", region, 100, false);
    wait_listed(&f, region, &["pinned", "other"]);
    let room = unique_room("pin-restart");
    let first = join(&f, &room, region, true).await;
    assert_eq!(first.welcome["sfu"]["url"], one_sfu("pinned"));
    // The peer stays in the room (away once the Worker is gone), so the room keeps its pin.
    worker.stop();
    drop(first);

    let worker = WorkerProcess::start(18795, 19295, &dir, &vars).await;
    // A better node appears and `pinned` fills up: a fresh room takes `better`, the
    // restarted room keeps its stored pin.
    beat(&f, "better", region, 0, false);
    beat(&f, "pinned", region, 100, false);
    beat(&f, "other", region, 100, false);
    wait_listed(&f, region, &["better", "other"]);
    let fresh = join(&f, &unique_room("pin-fresh"), region, true).await;
    assert_eq!(fresh.welcome["sfu"]["url"], one_sfu("better"));
    let again = join(&f, &room, region, true).await;
    assert_eq!(
        again.welcome["sfu"]["url"],
        one_sfu("pinned"),
        "the room forgot its pin: {}",
        worker.log()
    );
    assert_eq!(
        turn_urls_of(&again.welcome["ice_servers"]),
        [turn_url("pinned"), turn_url("other")]
    );
    worker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
