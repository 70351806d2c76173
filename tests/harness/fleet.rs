//! The `fleet` instance of scripts/e2e.sh (relay registry on) and signed heartbeats to it,
//! shared by tests/relay_registry.rs and tests/room_relay_failover.rs.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_proto::Millis;
use switchboard_proto::registry::{SIGNATURE_HEADER, sign_heartbeat};

use crate::{HttpResponse, http_get, http_post, var};

/// Settings scripts/e2e.sh started the `fleet` instance with.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Base `http://127.0.0.1:PORT` of the instance.
    pub base: String,
    /// Its `REGISTRY_SECRET`.
    pub secret: String,
    /// Its `ADMIN_TOKEN`.
    pub admin: String,
    /// Its `RELAY_LEASE_MS`.
    pub lease_ms: u64,
    /// Its `TURN_SECRET`.
    pub turn_secret: String,
}

/// The running `fleet` instance, from the environment set by scripts/e2e.sh.
pub fn fleet() -> Fleet {
    Fleet {
        base: var("SWITCHBOARD_FLEET_URL"),
        secret: var("SWITCHBOARD_REGISTRY_SECRET"),
        admin: var("SWITCHBOARD_ADMIN_TOKEN"),
        lease_ms: var("SWITCHBOARD_RELAY_LEASE_MS").parse().unwrap(),
        turn_secret: var("SWITCHBOARD_TURN_SECRET"),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Strictly increasing signing times, as a relay's clock gives them.
pub fn next_ts() -> Millis {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let t = now_ms();
    let step = |last: u64| Some(last.max(t - 1) + 1);
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
        .unwrap();
    Millis(prev.max(t - 1) + 1)
}

/// The TURN URLs of an ICE server list (the entries with credentials), in order.
pub fn turn_urls_of(ice_servers: &Value) -> Vec<String> {
    ice_servers
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("username").is_some())
        .flat_map(|s| s["urls"].as_array().unwrap().clone())
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// The TURN URL a test node announces.
pub fn turn_url(node: &str) -> String {
    format!("turn:{node}.test:3478?transport=udp")
}

/// The SFU base URL a test node with an SFU announces.
pub fn sfu_base(node: &str) -> String {
    format!("http://{node}.test:3480")
}

/// A heartbeat body: `node` in `region` at `cpu` % of one core, with STUN and TURN URLs and,
/// if `sfu`, an SFU endpoint; `allocations` live TURN allocations.
pub fn heartbeat_body(
    node: &str,
    region: &str,
    cpu: u32,
    allocations: u64,
    draining: bool,
    sfu: bool,
) -> Vec<u8> {
    let mut urls = json!({
        "stun": [format!("stun:{node}.test:3478")],
        "turn": [turn_url(node)],
    });
    if sfu {
        urls["sfu"] = Value::from(sfu_base(node));
    }
    serde_json::to_vec(&json!({
        "node_id": node,
        "region": region,
        "urls": urls,
        "load": {"cpu_percent": cpu, "cores": 1, "allocations": allocations},
        "draining": draining,
    }))
    .unwrap()
}

/// `POST /v1/relays/heartbeat` with `body` and the signature header `signature`, if any.
pub fn post_heartbeat(f: &Fleet, body: &[u8], signature: Option<&str>) -> HttpResponse {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = signature {
        headers.push((SIGNATURE_HEADER, s));
    }
    http_post(&format!("{}/v1/relays/heartbeat", f.base), &headers, body)
}

/// Signs `body` at the next signing time and posts it; the registry must accept it.
pub fn beat_signed(f: &Fleet, body: &[u8]) {
    let sig = sign_heartbeat(f.secret.as_bytes(), next_ts(), body);
    let r = post_heartbeat(f, body, Some(&sig));
    assert_eq!(r.status, 200, "{}", r.body);
}

impl Fleet {
    /// `GET /v1/relays` with the admin token: every node the registry holds.
    pub fn relays(&self) -> Vec<Value> {
        let auth = format!("Bearer {}", self.admin);
        let r = http_get(
            &format!("{}/v1/relays", self.base),
            &[("authorization", &auth)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["relays"].as_array().unwrap().clone()
    }

    /// The TURN URLs `GET /v1/ice-servers` hands to a client in `region`, in order.
    pub fn turn_urls(&self, region: &str) -> Vec<String> {
        // A client address per call: the mint rate limit (per client) must not meet the polling.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!("2001:db8::{:x}:{:x}", n >> 16, n & 0xffff);
        let r = http_get(
            &format!("{}/v1/ice-servers", self.base),
            &[("x-switchboard-region", region), ("cf-connecting-ip", &ip)],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        turn_urls_of(&r.json()["iceServers"])
    }

    /// Polls `f` until it holds (the router keeps a copy of the node list for a few seconds),
    /// for up to three leases and ten seconds.
    pub fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
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

/// The release relay binary scripts/e2e.sh built (`SWITCHBOARD_RELAY_BIN`).
pub fn relay_bin() -> String {
    match std::env::var("SWITCHBOARD_RELAY_BIN") {
        Ok(bin) => bin,
        Err(_) => {
            panic!("SWITCHBOARD_RELAY_BIN is not set: scripts/e2e.sh sets it to the release relay")
        }
    }
}

/// A relay process (the release binary), in its own process group.
#[derive(Debug)]
pub struct RelayNode {
    child: std::process::Child,
}

impl RelayNode {
    /// Starts a relay on `ip` that registers node `node` in `region` with the fleet instance,
    /// beating every second, with the default heartbeat transport.
    pub fn start(bin: &str, f: &Fleet, ip: &str, node: &str, region: &str) -> RelayNode {
        RelayNode::start_with(bin, f, &f.base, ip, node, region, &[])
    }

    /// Starts a relay like [`RelayNode::start`] that registers through `worker_url`, with
    /// `extra` flags.
    pub fn start_with(
        bin: &str,
        f: &Fleet,
        worker_url: &str,
        ip: &str,
        node: &str,
        region: &str,
        extra: &[&str],
    ) -> RelayNode {
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
                worker_url,
                "--node-id",
                node,
                "--region",
                region,
                "--public-url",
                &turn_url(node),
                "--heartbeat-interval",
                "1",
            ])
            .args(extra)
            .env("RELAY_REGISTRY_SECRET", &f.secret)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        RelayNode { child }
    }

    /// Sends `sig` to the relay's process group.
    pub fn signal(&self, sig: rustix::process::Signal) {
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
