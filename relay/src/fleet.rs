//! Fleet membership: the relay announces itself to the Worker's relay registry.
//!
//! Every `--heartbeat-interval` the node posts a heartbeat (its id, region, public URLs,
//! load and draining flag) to `POST {worker-url}/v1/relays/heartbeat`, signed with
//! HMAC-SHA256 under the registration secret (`proto::registry::sign_heartbeat`); the
//! secret itself never leaves the node. The registry lists the node for one lease per
//! heartbeat, so a node that dies drops out on its own.
//!
//! The sender runs on its own thread with a blocking HTTP client: it never touches the
//! packet path, and a Worker that cannot be reached only delays the next try (backoff
//! with full jitter, capped), while the relay keeps serving what it has.
//!
//! Heartbeats go out at a fixed rate (every `--heartbeat-interval` counted from the start of
//! the previous accepted one, so a slow answer does not stretch the period), and each request gives up
//! after [`request_timeout`] (three quarters of the interval): with the defaults (2 s beats,
//! the Worker's 5 s lease) a lost or hung heartbeat is followed by another try well before the
//! lease ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_proto::Millis;
use switchboard_proto::registry::{
    Heartbeat, NodeId, NodeLoad, NodeUrls, Region, SIGNATURE_HEADER, sign_heartbeat,
};
use tracing::{info, warn};

use crate::http::Metrics;
#[cfg(feature = "sfu")]
pub use crate::sfu::shell::SfuMetrics;

/// Without the `sfu` feature there are no SFU sessions to report: no value of this type exists.
#[cfg(not(feature = "sfu"))]
#[derive(Debug)]
pub enum SfuMetrics {}

#[cfg(not(feature = "sfu"))]
impl SfuMetrics {
    fn sessions(&self) -> u64 {
        match *self {}
    }
}

/// Default seconds between heartbeats (`--heartbeat-interval`): under half the Worker's default
/// lease (`RELAY_LEASE_MS`, 5 s), so a node survives one lost heartbeat.
pub const DEFAULT_INTERVAL_S: u64 = 2;

/// How long one heartbeat request may take: three quarters of the interval (at least 500 ms,
/// at most 5 s), so a hung request leaves time for a retry within the same lease.
pub fn request_timeout(interval: Duration) -> Duration {
    (interval * 3 / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// What the node says about itself, from the `--worker-url`/`--node-id`/… flags.
#[derive(Clone)]
pub struct FleetConfig {
    /// Base URL of the Worker (`https://signal.example.com`).
    pub worker_url: String,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's region.
    pub region: Region,
    /// Public URLs clients use (`stun:`, `turn:`, `turns:`, `https://` for the SFU).
    pub urls: NodeUrls,
    /// The registration secret shared with the Worker (`REGISTRY_SECRET` there).
    pub secret: String,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Capacities reported with the load.
    pub max_allocations: u64,
    /// SFU session capacity (0 when the node runs no SFU).
    pub max_sfu_sessions: u64,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("FleetConfig")
            .field("worker_url", &self.worker_url)
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("urls", &self.urls)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Sorts `--public-url` values into the heartbeat's URL groups; `None` names a bad one.
pub fn sort_urls(urls: &[String]) -> Result<NodeUrls, String> {
    let mut out = NodeUrls::default();
    for u in urls {
        if u.starts_with("stun:") {
            out.stun.push(u.clone());
        } else if u.starts_with("turn:") || u.starts_with("turns:") {
            out.turn.push(u.clone());
        } else if u.starts_with("https://") || u.starts_with("http://") {
            if out.sfu.replace(u.clone()).is_some() {
                return Err("at most one http(s) --public-url (the SFU endpoint)".into());
            }
        } else {
            return Err(format!(
                "--public-url {u}: expected stun:, turn:, turns:, http:// or https://"
            ));
        }
    }
    Ok(out)
}

/// The delay before try `failures + 1` after `failures` failed tries in a row: the normal
/// interval when all is well, else exponential from 1 s, capped at 30 s, with full jitter
/// (`rand01` in [0, 1)) so a fleet that lost the Worker does not come back in step.
pub fn next_delay(interval: Duration, failures: u32, rand01: f64) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = Duration::from_secs(30).min(interval.max(Duration::from_secs(1)) * 6);
    let exp = Duration::from_secs(1).saturating_mul(1u32 << failures.min(5).saturating_sub(1));
    exp.min(cap).mul_f64(rand01.clamp(0.0, 1.0))
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux the relay targets.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Starts the heartbeat thread; load and the draining flag come from the relay's metrics.
pub fn spawn(
    cfg: FleetConfig,
    metrics: Arc<Metrics>,
    sfu: Option<Arc<SfuMetrics>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet-heartbeat".into())
        .spawn(move || run(&cfg, &metrics, sfu.as_deref()))
}

/// One last heartbeat with the draining flag set, sent as the relay stops: the registry stops
/// handing the node out at once instead of at the end of its lease.
pub fn final_heartbeat(cfg: &FleetConfig, metrics: &Metrics, sfu: Option<&SfuMetrics>) {
    let mut sender = Sender::new(cfg, metrics);
    if let Err(e) = sender.send(cfg, metrics, sfu, true) {
        warn!(node = %cfg.node_id, "final heartbeat failed: {e}");
    }
}

/// The HTTP client and the previous readings the load is computed from.
struct Sender {
    agent: ureq::Agent,
    url: String,
    cores: u32,
    last_cpu: (std::time::Instant, Duration),
    last_bytes: u64,
}

impl Sender {
    fn new(cfg: &FleetConfig, metrics: &Metrics) -> Sender {
        Sender {
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(request_timeout(cfg.interval)))
                .http_status_as_error(false)
                .build()
                .into(),
            url: format!(
                "{}/v1/relays/heartbeat",
                cfg.worker_url.trim_end_matches('/')
            ),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            last_cpu: (std::time::Instant::now(), process_cpu().unwrap_or_default()),
            last_bytes: metrics.relayed_bytes(),
        }
    }

    /// Measures the load since the last call and posts one heartbeat.
    fn send(
        &mut self,
        cfg: &FleetConfig,
        metrics: &Metrics,
        sfu: Option<&SfuMetrics>,
        draining: bool,
    ) -> Result<(), String> {
        let now = std::time::Instant::now();
        let cpu = process_cpu().unwrap_or(self.last_cpu.1);
        let wall = now.duration_since(self.last_cpu.0).as_secs_f64().max(0.001);
        let cpu_s = cpu.saturating_sub(self.last_cpu.1).as_secs_f64();
        let bytes = metrics.relayed_bytes();
        let bandwidth_bps = (bytes.saturating_sub(self.last_bytes) as f64 * 8.0 / wall) as u64;
        self.last_cpu = (now, cpu);
        self.last_bytes = bytes;
        let hb = Heartbeat {
            node_id: cfg.node_id.clone(),
            region: cfg.region.clone(),
            urls: cfg.urls.clone(),
            load: NodeLoad {
                allocations: metrics.allocation_count(),
                max_allocations: cfg.max_allocations,
                sfu_sessions: sfu.map_or(0, SfuMetrics::sessions),
                max_sfu_sessions: cfg.max_sfu_sessions,
                bandwidth_bps,
                cpu_percent: (cpu_s / wall * 100.0) as u32,
                cores: self.cores,
            },
            draining: draining || metrics.is_draining(),
        };
        let body = serde_json::to_vec(&hb).map_err(|e| e.to_string())?;
        post(&self.agent, &self.url, &cfg.secret, &body)
    }
}

fn run(cfg: &FleetConfig, metrics: &Metrics, sfu: Option<&SfuMetrics>) {
    let mut sender = Sender::new(cfg, metrics);
    let mut failures = 0u32;
    let mut announced = false;
    loop {
        let started = std::time::Instant::now();
        match sender.send(cfg, metrics, sfu, false) {
            Ok(()) => {
                if !announced || failures > 0 {
                    info!(node = %cfg.node_id, region = cfg.region.as_str(), "registered with the relay registry");
                }
                announced = true;
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                warn!(node = %cfg.node_id, failures, "heartbeat failed: {e}");
            }
        }
        let mut r = [0u8; 4];
        let rand01 = match getrandom::fill(&mut r) {
            Ok(()) => f64::from(u32::from_le_bytes(r)) / (f64::from(u32::MAX) + 1.0),
            Err(_) => 0.5,
        };
        let mut wait = next_delay(cfg.interval, failures, rand01);
        if failures == 0 {
            // Fixed rate: the time the request took counts towards the wait. A retry's backoff
            // counts from the failure, so the jitter keeps a fleet's retries apart.
            wait = wait.saturating_sub(started.elapsed());
        }
        std::thread::sleep(wait);
    }
}

fn post(agent: &ureq::Agent, url: &str, secret: &str, body: &[u8]) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let sig = sign_heartbeat(secret.as_bytes(), Millis(now), body);
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, &sig)
        .send(body)
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        200 => Ok(()),
        s => Err(format!("the registry answered {s}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_are_sorted_by_scheme() {
        let urls = sort_urls(&[
            "stun:r1.example.com:3478".into(),
            "turn:r1.example.com:3478?transport=udp".into(),
            "turns:r1.example.com:5349?transport=tcp".into(),
            "https://r1.example.com:8443".into(),
        ])
        .unwrap();
        assert_eq!(urls.stun.len(), 1);
        assert_eq!(urls.turn.len(), 2);
        assert_eq!(urls.sfu.as_deref(), Some("https://r1.example.com:8443"));
        assert!(sort_urls(&["ftp://x".into()]).is_err());
        assert!(sort_urls(&["https://a".into(), "https://b".into()]).is_err());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let i = Duration::from_secs(5);
        assert_eq!(next_delay(i, 0, 0.3), i);
        assert_eq!(next_delay(i, 1, 0.999_999).as_millis(), 999);
        assert_eq!(next_delay(i, 3, 0.5), Duration::from_secs(2));
        assert_eq!(next_delay(i, 30, 1.0), Duration::from_secs(16));
        assert_eq!(
            next_delay(Duration::from_secs(60), 30, 1.0),
            Duration::from_secs(16)
        );
        assert_eq!(next_delay(i, 4, 0.0), Duration::ZERO);
    }

    #[test]
    fn a_hung_heartbeat_leaves_time_for_a_retry_within_the_default_lease() {
        let interval = Duration::from_secs(DEFAULT_INTERVAL_S);
        let lease = Duration::from_millis(switchboard_proto::registry::DEFAULT_LEASE_MS);
        // Beat at 0 renews the lease to `lease`; the beat at `interval` hangs until the
        // timeout; the retry after it waits at most the first backoff step.
        let retry_by = interval + request_timeout(interval) + next_delay(interval, 1, 0.999_999);
        assert!(retry_by < lease, "{retry_by:?} >= {lease:?}");
        // Without the retry, the next regular beat still lands inside the lease.
        assert!(interval * 2 < lease);
        assert_eq!(
            request_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            request_timeout(Duration::from_millis(100)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn process_cpu_is_readable() {
        assert!(process_cpu().is_some());
    }
}
