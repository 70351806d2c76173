//! Configuration: one clap struct; every flag is also an environment variable (`RELAY_*`) and a
//! key of the TOML file given by `--config`. Precedence: command line, then environment, then
//! file, then the documented default.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use switchboard_proto::registry::{NodeId, Region};

use crate::fleet::{FleetConfig, HeartbeatTransport};
use crate::net::PortRange;
use crate::turn::{Cidr, Credentials, PeerPolicy, ServerConfig};

/// Switchboard relay: a STUN/TURN server (RFC 8489, RFC 8656).
#[derive(Debug, Clone, Default, Parser)]
#[command(version, about)]
pub struct Args {
    /// TOML file with any of the options below (keys are the long flag names).
    #[arg(long, env = "RELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP and TCP listen address; repeatable [default: 0.0.0.0:3478].
    #[arg(long, env = "RELAY_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// TLS (TURN over TLS) listen address; repeatable. Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "RELAY_TLS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for --tls-listen.
    #[arg(long, env = "RELAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-listen.
    #[arg(long, env = "RELAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Authentication realm [default: switchboard].
    #[arg(long, env = "RELAY_REALM")]
    pub realm: Option<String>,
    /// TURN REST shared secret; repeatable, all are accepted (rotation). Prefer the environment
    /// or the config file: command lines are visible to other local users.
    #[arg(
        long,
        env = "RELAY_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secret: Vec<String>,
    /// Static user as NAME:PASSWORD; repeatable.
    #[arg(
        long,
        env = "RELAY_USER",
        value_name = "NAME:PASSWORD",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub user: Vec<String>,
    /// Local IP to bind relayed sockets on, at most one per family [default: the listen IP, or
    /// the IP of the default route].
    #[arg(long, env = "RELAY_RELAY_IP", value_name = "IP", value_delimiter = ',')]
    pub relay_ip: Vec<IpAddr>,
    /// Public IP advertised in XOR-RELAYED-ADDRESS when the relay IP is behind 1:1 NAT.
    #[arg(long, env = "RELAY_EXTERNAL_IP", value_name = "IP")]
    pub external_ip: Option<IpAddr>,
    /// Relayed port range [default: 49152-65535].
    #[arg(long, env = "RELAY_PORT_RANGE", value_name = "LOW-HIGH")]
    pub port_range: Option<PortRange>,
    /// Allow relaying to loopback peers (tests, single-host setups).
    #[arg(long, env = "RELAY_ALLOW_LOOPBACK_PEERS")]
    pub allow_loopback_peers: bool,
    /// Allow relaying to this prefix even if private or special-purpose; repeatable.
    #[arg(
        long,
        env = "RELAY_ALLOW_PEER",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_peer: Vec<Cidr>,
    /// Total allocations [default: 10000]; more get 508.
    #[arg(long, env = "RELAY_MAX_ALLOCATIONS")]
    pub max_allocations: Option<usize>,
    /// Allocations per user id [default: 32]; more get 486.
    #[arg(long, env = "RELAY_MAX_ALLOCATIONS_PER_USER")]
    pub max_allocations_per_user: Option<usize>,
    /// Relayed bytes per second per allocation, both directions; 0 = unlimited [default: 10000000].
    #[arg(
        long,
        env = "RELAY_BANDWIDTH_PER_ALLOCATION",
        value_name = "BYTES_PER_SEC"
    )]
    pub bandwidth_per_allocation: Option<u64>,
    /// Serve Prometheus `/metrics` and `/healthz` on this address [default: off].
    #[arg(long, env = "RELAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, refuse new allocations and keep serving existing ones for at most this
    /// long, exiting as soon as none remain; a second signal exits at once; 0 = exit at once
    /// [default: 30].
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
    /// Export spans over OTLP/HTTP (protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is appended unless present); plain http:// only [default: off].
    #[arg(long, env = "RELAY_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    // --- SFU: the server-side WebRTC peer (off unless --sfu-listen is set) ---
    /// UDP address of the SFU (WebRTC, ICE-lite); setting it turns the SFU on [default: off].
    #[arg(long, env = "RELAY_SFU_LISTEN", value_name = "ADDR")]
    pub sfu_listen: Option<SocketAddr>,
    /// IP advertised in the SFU's host candidates (the public IP of a NAT'd host); repeatable
    /// [default: the --sfu-listen IP, or the IP of the default route].
    #[arg(
        long,
        env = "RELAY_SFU_PUBLIC_IP",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub sfu_public_ip: Vec<IpAddr>,
    /// SFU sessions held at once; more get 503 [default: 1000].
    #[arg(long, env = "RELAY_SFU_MAX_SESSIONS")]
    pub sfu_max_sessions: Option<usize>,
    /// DataChannel bytes queued per SFU session while its send buffer is full; past this the
    /// session is dropped as a slow consumer [default: 4194304].
    #[arg(long, env = "RELAY_SFU_QUEUE_BYTES", value_name = "BYTES")]
    pub sfu_queue_bytes: Option<usize>,
    /// HTTP address of the session endpoint (`/v1/sessions`) and of `/metrics`
    /// [default: served on --metrics-listen].
    #[arg(long, env = "RELAY_SFU_HTTP_LISTEN", value_name = "ADDR")]
    pub sfu_http_listen: Option<SocketAddr>,
    /// HTTPS address of the session endpoint, with the --tls-cert/--tls-key certificate
    /// [default: off].
    #[arg(long, env = "RELAY_SFU_HTTPS_LISTEN", value_name = "ADDR")]
    pub sfu_https_listen: Option<SocketAddr>,
    /// Do not listen for ICE-TCP on the --sfu-listen address (TCP, RFC 6544 passive candidates).
    #[arg(long, env = "RELAY_SFU_NO_ICE_TCP")]
    pub sfu_no_ice_tcp: bool,
    /// Event loops (threads), each with its own TURN core, a slice of the relay port range and
    /// its own listening sockets shared through SO_REUSEPORT [default: available cores].
    #[arg(long, env = "RELAY_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Receive and send buffer of every UDP socket, in bytes; the kernel caps it at
    /// net.core.rmem_max/wmem_max (reported at start) [default: 4194304].
    #[arg(long, env = "RELAY_SOCKET_BUFFER", value_name = "BYTES")]
    pub socket_buffer: Option<usize>,
    /// Set SO_REUSEPORT on the listeners even with one thread, so several relay processes can
    /// share a listening address (always on with more than one thread).
    #[arg(long, env = "RELAY_REUSE_PORT")]
    pub reuse_port: bool,

    // --- Fleet: registration with the Worker's relay registry (off unless --worker-url) ---
    /// Base URL of the Switchboard Worker to register with (`/v1/relays/ws`, `/v1/relays/heartbeat`);
    /// setting it turns registration on [default: off].
    #[arg(long, env = "RELAY_WORKER_URL", value_name = "URL")]
    pub worker_url: Option<String>,
    /// This node's id in the registry, `[A-Za-z0-9_.-]{1,64}`; needed with --worker-url.
    #[arg(long, env = "RELAY_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// This node's region, `[a-z0-9-]{1,32}` (e.g. a continent code as Cloudflare reports it:
    /// `eu`, `na`, `as`); needed with --worker-url.
    #[arg(long, env = "RELAY_REGION", value_name = "REGION")]
    pub region: Option<String>,
    /// A URL clients use to reach this node (`stun:`, `turn:`, `turns:`, and at most one
    /// `https://` SFU endpoint); repeatable; needed with --worker-url.
    #[arg(
        long,
        env = "RELAY_PUBLIC_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub public_url: Vec<String>,
    /// The registration secret (the Worker's `REGISTRY_SECRET`); heartbeats are signed with it,
    /// it is never sent. Prefer the environment or the config file.
    #[arg(long, env = "RELAY_REGISTRY_SECRET", hide_env_values = true)]
    pub registry_secret: Option<String>,
    /// Seconds between heartbeats [default: 2]; keep it under half the Worker's lease
    /// (`RELAY_LEASE_MS`, 5 s), so one lost heartbeat does not end the lease.
    #[arg(long, env = "RELAY_HEARTBEAT_INTERVAL", value_name = "SECONDS")]
    pub heartbeat_interval: Option<u64>,
    /// How heartbeats travel [default: ws]: `ws`, one WebSocket to the registry
    /// (`GET /v1/relays/ws`), each heartbeat a frame, falling back to a POST for any beat the
    /// socket fails; `http`, one `POST /v1/relays/heartbeat` per heartbeat.
    #[arg(long, env = "RELAY_HEARTBEAT_TRANSPORT", value_name = "ws|http")]
    pub heartbeat_transport: Option<HeartbeatTransport>,
}

/// The TOML file: the same options, keyed by long flag name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<SocketAddr>>,
    tls_listen: Option<Vec<SocketAddr>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    realm: Option<String>,
    secret: Option<Vec<String>>,
    user: Option<Vec<String>>,
    relay_ip: Option<Vec<IpAddr>>,
    external_ip: Option<IpAddr>,
    port_range: Option<String>,
    allow_loopback_peers: Option<bool>,
    allow_peer: Option<Vec<String>>,
    max_allocations: Option<usize>,
    max_allocations_per_user: Option<usize>,
    bandwidth_per_allocation: Option<u64>,
    metrics_listen: Option<SocketAddr>,
    drain_timeout: Option<u64>,
    otlp_endpoint: Option<String>,
    sfu_listen: Option<SocketAddr>,
    sfu_public_ip: Option<Vec<IpAddr>>,
    sfu_max_sessions: Option<usize>,
    sfu_queue_bytes: Option<usize>,
    sfu_http_listen: Option<SocketAddr>,
    sfu_https_listen: Option<SocketAddr>,
    sfu_no_ice_tcp: Option<bool>,
    threads: Option<usize>,
    socket_buffer: Option<usize>,
    reuse_port: Option<bool>,
    worker_url: Option<String>,
    node_id: Option<String>,
    region: Option<String>,
    public_url: Option<Vec<String>>,
    registry_secret: Option<String>,
    heartbeat_interval: Option<u64>,
    heartbeat_transport: Option<HeartbeatTransport>,
}

/// The SFU's resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuSettings {
    /// UDP socket address.
    pub listen: SocketAddr,
    /// Advertised candidate IPs (with the listen port).
    pub public_ips: Vec<IpAddr>,
    /// Session cap.
    pub max_sessions: usize,
    /// Per-session DataChannel queue bound in bytes.
    pub queue_bytes: usize,
    /// Where the session endpoint is served; `None` means on the metrics listener.
    pub http_listen: Option<SocketAddr>,
    /// Where it is served over HTTPS (with the TLS certificate), if anywhere.
    pub https_listen: Option<SocketAddr>,
    /// Whether ICE-TCP is offered on the listen address's TCP port.
    pub ice_tcp: bool,
}

/// A configuration problem, reported before anything is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The resolved configuration.
#[derive(Clone)]
pub struct Config {
    /// UDP+TCP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS listen addresses.
    pub tls_listen: Vec<SocketAddr>,
    /// TLS certificate and key files.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Realm.
    pub realm: String,
    /// Accepted credentials.
    pub credentials: Credentials,
    /// Relay socket IPs.
    pub relay_ips: Vec<IpAddr>,
    /// Advertised relay IP.
    pub external_ip: Option<IpAddr>,
    /// Relay port range.
    pub port_range: PortRange,
    /// Peer policy.
    pub peer_policy: PeerPolicy,
    /// Total allocation cap.
    pub max_allocations: usize,
    /// Per-user allocation cap.
    pub max_allocations_per_user: usize,
    /// Per-allocation bandwidth cap in bytes/s.
    pub bandwidth_per_allocation: u64,
    /// Metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Longest graceful drain after SIGTERM/SIGINT; zero exits at once.
    pub drain_timeout: Duration,
    /// OTLP/HTTP collector for spans.
    pub otlp_endpoint: Option<String>,
    /// The SFU, when enabled.
    pub sfu: Option<SfuSettings>,
    /// Event loops.
    pub threads: usize,
    /// UDP socket buffer size in bytes.
    pub socket_buffer: usize,
    /// SO_REUSEPORT on the listeners.
    pub reuse_port: bool,
    /// Registration with the Worker's relay registry, when on.
    pub fleet: Option<FleetConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints secrets or passwords, only how many there are.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls_listen", &self.tls_listen)
            .field("realm", &self.realm)
            .field("credentials", &self.credentials)
            .field("relay_ips", &self.relay_ips)
            .field("external_ip", &self.external_ip)
            .field("port_range", &self.port_range)
            .field("peer_policy", &self.peer_policy)
            .field("max_allocations", &self.max_allocations)
            .field("max_allocations_per_user", &self.max_allocations_per_user)
            .field("bandwidth_per_allocation", &self.bandwidth_per_allocation)
            .field("metrics_listen", &self.metrics_listen)
            .field("drain_timeout", &self.drain_timeout)
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("sfu", &self.sfu)
            .field("threads", &self.threads)
            .field("socket_buffer", &self.socket_buffer)
            .field("reuse_port", &self.reuse_port)
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

fn err(s: impl Into<String>) -> ConfigError {
    ConfigError(s.into())
}

fn or_file<T>(cli: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    // toml's Display quotes the offending line, which may hold a secret: report the position only.
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text.get(..s.start)
                .unwrap_or_default()
                .lines()
                .count()
                .max(1)
        });
        err(format!("{}: line {line}: {}", path.display(), e.message()))
    })
}

/// The local IP the default route would use; no packet is sent.
fn default_route_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

impl Config {
    /// Resolves arguments, environment and the optional file into a checked configuration.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut listen = or_file(args.listen, file.listen);
        if listen.is_empty() {
            listen.push(SocketAddr::from(([0, 0, 0, 0], 3478)));
        }
        let tls_listen = or_file(args.tls_listen, file.tls_listen);
        let tls_files = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(err("--tls-cert and --tls-key go together")),
        };
        if !tls_listen.is_empty() && tls_files.is_none() {
            return Err(err("--tls-listen needs --tls-cert and --tls-key"));
        }
        let realm = args
            .realm
            .or(file.realm)
            .unwrap_or_else(|| "switchboard".to_owned());
        let secrets: Vec<String> = or_file(args.secret, file.secret)
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let mut users = HashMap::new();
        for u in or_file(args.user, file.user) {
            let (name, password) = u
                .split_once(':')
                .ok_or_else(|| err("--user takes NAME:PASSWORD"))?;
            if name.is_empty() || password.is_empty() {
                return Err(err("--user takes NAME:PASSWORD with both parts non-empty"));
            }
            users.insert(name.to_owned(), password.to_owned());
        }
        let credentials = Credentials { secrets, users };
        if credentials.is_empty() {
            return Err(err(
                "no credentials configured: set --secret (RELAY_SECRET) or --user",
            ));
        }
        let mut relay_ips = or_file(args.relay_ip, file.relay_ip);
        if relay_ips.is_empty() {
            let specific: Vec<IpAddr> = listen
                .iter()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .collect();
            match specific.first() {
                Some(ip) => relay_ips.push(*ip),
                None => relay_ips.push(
                    default_route_ip()
                        .ok_or_else(|| err("cannot pick a relay IP: set --relay-ip"))?,
                ),
            }
        }
        if relay_ips.iter().any(IpAddr::is_unspecified) {
            return Err(err(
                "--relay-ip must be a specific address (it is advertised to clients)",
            ));
        }
        if relay_ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
            || relay_ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
        {
            return Err(err(
                "--relay-ip takes at most one IPv4 and one IPv6 address",
            ));
        }
        let port_range = match (args.port_range, file.port_range) {
            (Some(r), _) => r,
            (None, Some(s)) => s.parse().map_err(err)?,
            (None, None) => PortRange {
                low: 49152,
                high: 65535,
            },
        };
        let allowed = if args.allow_peer.is_empty() {
            file.allow_peer
                .unwrap_or_default()
                .iter()
                .map(|s| s.parse::<Cidr>().map_err(|e| err(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            args.allow_peer
        };
        let otlp_endpoint = args.otlp_endpoint.or(file.otlp_endpoint);
        if otlp_endpoint
            .as_deref()
            .is_some_and(|e| !e.starts_with("http://"))
        {
            return Err(err(
                "--otlp-endpoint must be an http:// URL (run a local collector to forward over TLS)",
            ));
        }
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 || threads > 256 {
            return Err(err("--threads takes 1 to 256"));
        }
        if usize::from(port_range.high - port_range.low) + 1 < 2 * threads {
            return Err(err(
                "--port-range needs at least 2 ports per thread (each loop owns a slice)",
            ));
        }
        let peer_policy = PeerPolicy {
            allow_loopback: args.allow_loopback_peers || file.allow_loopback_peers.unwrap_or(false),
            allowed,
        };
        let metrics_listen = args.metrics_listen.or(file.metrics_listen);
        let sfu = match args.sfu_listen.or(file.sfu_listen) {
            None => None,
            Some(listen) => {
                let mut public_ips = or_file(args.sfu_public_ip, file.sfu_public_ip);
                if public_ips.is_empty() {
                    let ip = if listen.ip().is_unspecified() {
                        default_route_ip()
                            .ok_or_else(|| err("cannot pick an SFU IP: set --sfu-public-ip"))?
                    } else {
                        listen.ip()
                    };
                    public_ips.push(ip);
                }
                if public_ips.iter().any(IpAddr::is_unspecified) {
                    return Err(err("--sfu-public-ip must be a specific address"));
                }
                let http_listen = args.sfu_http_listen.or(file.sfu_http_listen);
                let https_listen = args.sfu_https_listen.or(file.sfu_https_listen);
                if http_listen.is_none() && https_listen.is_none() && metrics_listen.is_none() {
                    return Err(err(
                        "--sfu-listen needs --sfu-http-listen, --sfu-https-listen or \
                         --metrics-listen for /v1/sessions",
                    ));
                }
                if https_listen.is_some() && tls_files.is_none() {
                    return Err(err("--sfu-https-listen needs --tls-cert and --tls-key"));
                }
                if credentials.secrets.is_empty() {
                    return Err(err(
                        "--sfu-listen needs --secret: session tokens are signed with it",
                    ));
                }
                Some(SfuSettings {
                    listen,
                    public_ips,
                    max_sessions: args
                        .sfu_max_sessions
                        .or(file.sfu_max_sessions)
                        .unwrap_or(1000),
                    queue_bytes: args
                        .sfu_queue_bytes
                        .or(file.sfu_queue_bytes)
                        .unwrap_or(4 << 20),
                    http_listen,
                    https_listen,
                    ice_tcp: !(args.sfu_no_ice_tcp || file.sfu_no_ice_tcp.unwrap_or(false)),
                })
            }
        };
        let fleet = match args.worker_url.or(file.worker_url) {
            None => None,
            Some(worker_url) => {
                if !(worker_url.starts_with("https://") || worker_url.starts_with("http://")) {
                    return Err(err("--worker-url must be an http(s):// URL"));
                }
                let node_id = args
                    .node_id
                    .or(file.node_id)
                    .ok_or_else(|| err("--worker-url needs --node-id"))?;
                let node_id = NodeId::parse(&node_id)
                    .ok_or_else(|| err("--node-id must match [A-Za-z0-9_.-]{1,64}"))?;
                let region = args
                    .region
                    .or(file.region)
                    .ok_or_else(|| err("--worker-url needs --region"))?;
                let region = Region::parse(&region)
                    .ok_or_else(|| err("--region must match [a-z0-9-]{1,32}"))?;
                let public = or_file(args.public_url, file.public_url);
                if public.is_empty() {
                    return Err(err("--worker-url needs at least one --public-url"));
                }
                let urls = crate::fleet::sort_urls(&public).map_err(err)?;
                let secret = args
                    .registry_secret
                    .or(file.registry_secret)
                    .ok_or_else(|| err("--worker-url needs --registry-secret"))?;
                let interval = args
                    .heartbeat_interval
                    .or(file.heartbeat_interval)
                    .unwrap_or(crate::fleet::DEFAULT_INTERVAL_S);
                if interval == 0 || interval > 300 {
                    return Err(err("--heartbeat-interval takes 1 to 300 seconds"));
                }
                Some(FleetConfig {
                    worker_url,
                    node_id,
                    region,
                    urls,
                    secret,
                    interval: Duration::from_secs(interval),
                    transport: args
                        .heartbeat_transport
                        .or(file.heartbeat_transport)
                        .unwrap_or_default(),
                    max_allocations: 0,
                    max_sfu_sessions: 0,
                })
            }
        };
        Ok(Config {
            sfu,
            listen,
            tls_listen,
            tls_files,
            realm,
            credentials,
            relay_ips,
            external_ip: args.external_ip.or(file.external_ip),
            port_range,
            peer_policy,
            max_allocations: args
                .max_allocations
                .or(file.max_allocations)
                .unwrap_or(10_000),
            max_allocations_per_user: args
                .max_allocations_per_user
                .or(file.max_allocations_per_user)
                .unwrap_or(32),
            bandwidth_per_allocation: args
                .bandwidth_per_allocation
                .or(file.bandwidth_per_allocation)
                .unwrap_or(10_000_000),
            metrics_listen,
            drain_timeout: Duration::from_secs(
                args.drain_timeout.or(file.drain_timeout).unwrap_or(30),
            ),
            otlp_endpoint,
            fleet,
            threads,
            socket_buffer: args.socket_buffer.or(file.socket_buffer).unwrap_or(4 << 20),
            reuse_port: args.reuse_port || file.reuse_port.unwrap_or(false) || threads > 1,
        })
    }

    /// The slice of the relay port range owned by event loop `i` of [`Config::threads`]:
    /// disjoint, contiguous, together the whole range.
    pub fn port_slice(&self, i: usize) -> PortRange {
        let (low, high) = (
            usize::from(self.port_range.low),
            usize::from(self.port_range.high),
        );
        let n = self.threads.max(1);
        let span = high - low + 1;
        let start = low + span * i / n;
        let end = low + span * (i + 1) / n - 1;
        PortRange {
            low: u16::try_from(start).unwrap_or(self.port_range.low),
            high: u16::try_from(end.min(high)).unwrap_or(self.port_range.high),
        }
    }

    /// The TURN core's configuration.
    pub fn server_config(&self, secret_key: [u8; 32]) -> ServerConfig {
        let mut c = ServerConfig::new(self.realm.clone(), secret_key);
        c.external_ip = self.external_ip;
        c.max_allocations = self.max_allocations;
        c.max_allocations_per_user = self.max_allocations_per_user;
        c.bandwidth_bytes_per_sec = self.bandwidth_per_allocation;
        c.peer_policy = self.peer_policy.clone();
        c
    }

    /// Builds the rustls configuration from the certificate and key files.
    pub fn tls(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ConfigError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let Some((cert, key)) = &self.tls_files else {
            return Ok(None);
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(format!("{}: {e}", cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| err(format!("{}: {e}", key.display())))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| err(format!("TLS: {e}")))?;
        Ok(Some(std::sync::Arc::new(config)))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load(
            Args::try_parse_from(std::iter::once("relay").chain(args.iter().copied())).unwrap(),
        )
    }

    #[test]
    fn defaults_and_required_credentials() {
        assert!(parse(&["--listen", "127.0.0.1:3478"]).is_err());
        let c = parse(&["--listen", "127.0.0.1:3478", "--secret", "s"]).unwrap();
        assert_eq!(c.realm, "switchboard");
        assert_eq!(c.relay_ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.port_range,
            PortRange {
                low: 49152,
                high: 65535
            }
        );
        assert!(!c.peer_policy.allow_loopback);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!(c.threads >= 1);
        assert_eq!(c.socket_buffer, 4 << 20);
        assert!(!format!("{c:?}").contains("\"s\""), "secrets never printed");
    }

    #[test]
    fn heartbeats_go_over_the_socket_unless_told_otherwise() {
        let base = [
            "--listen",
            "127.0.0.1:3478",
            "--secret",
            "s",
            "--worker-url",
            "https://w.example",
            "--node-id",
            "n1",
            "--region",
            "eu",
            "--public-url",
            "turn:n1.example:3478",
            "--registry-secret",
            "r",
        ];
        let transport = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            parse(&a).unwrap().fleet.unwrap().transport
        };
        assert_eq!(transport(&[]), HeartbeatTransport::Ws);
        assert_eq!(
            transport(&["--heartbeat-transport", "http"]),
            HeartbeatTransport::Http
        );
        assert_eq!(
            transport(&["--heartbeat-transport", "ws"]),
            HeartbeatTransport::Ws
        );
        let mut bad = vec!["relay"];
        bad.extend_from_slice(&base);
        bad.extend(["--heartbeat-transport", "carrier-pigeon"]);
        assert!(Args::try_parse_from(bad).is_err());
        let toml: FileConfig = toml::from_str("heartbeat-transport = \"http\"").unwrap();
        assert_eq!(toml.heartbeat_transport, Some(HeartbeatTransport::Http));
    }

    #[test]
    fn otlp_endpoint_is_off_by_default_and_plain_http_only() {
        let base = ["--listen", "127.0.0.1:3478", "--secret", "s"];
        assert_eq!(parse(&base).unwrap().otlp_endpoint, None);
        let with = |url| {
            let mut a = base.to_vec();
            a.extend(["--otlp-endpoint", url]);
            parse(&a)
        };
        assert_eq!(
            with("http://127.0.0.1:4318")
                .unwrap()
                .otlp_endpoint
                .as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert!(with("https://collector.example").is_err());
        assert!(with("127.0.0.1:4318").is_err());
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("relay-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:4000\"]\nrealm = \"file\"\nsecret = [\"a\", \"b\"]\nport-range = \"50000-50100\"\n\
             allow-loopback-peers = true\nallow-peer = [\"10.0.0.0/8\"]\nmax-allocations = 5\n\
             drain-timeout = 0\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p]).unwrap();
        assert_eq!(c.realm, "file");
        assert_eq!(c.credentials.secrets, vec!["a", "b"]);
        assert_eq!(
            c.port_range,
            PortRange {
                low: 50000,
                high: 50100
            }
        );
        assert!(c.peer_policy.allow_loopback);
        assert_eq!(c.max_allocations, 5);
        assert_eq!(c.drain_timeout, Duration::ZERO);
        let c = parse(&[
            "--config",
            p,
            "--realm",
            "flag",
            "--secret",
            "c",
            "--drain-timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(c.realm, "flag");
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.credentials.secrets, vec!["c"]);
        std::fs::write(&path, "bogus-key = 1\n").unwrap();
        assert!(parse(&["--config", p]).is_err());
        std::fs::write(&path, "secret = [\"hunter2\"\n").unwrap();
        let e = parse(&["--config", p]).unwrap_err();
        assert!(!e.0.contains("hunter2"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn each_thread_owns_a_disjoint_slice_of_the_port_range() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:3478",
            "--secret",
            "s",
            "--threads",
            "3",
            "--port-range",
            "50000-50010",
        ])
        .unwrap();
        assert!(c.reuse_port, "loops share listeners");
        let slices: Vec<PortRange> = (0..3).map(|i| c.port_slice(i)).collect();
        assert_eq!(slices[0].low, 50000);
        assert_eq!(slices[2].high, 50010);
        for w in slices.windows(2) {
            assert_eq!(w[0].high + 1, w[1].low, "{slices:?}");
        }
        assert!(
            parse(&[
                "--secret",
                "s",
                "--listen",
                "127.0.0.1:1",
                "--threads",
                "4",
                "--port-range",
                "50000-50005"
            ])
            .is_err(),
            "too few ports for the threads"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Args::try_parse_from(["relay", "--port-range", "5-1"]).is_err());
        assert!(Args::try_parse_from(["relay", "--allow-peer", "10.0.0.0/99"]).is_err());
        assert!(parse(&["--secret", "s", "--user", "nopassword"]).is_err());
        assert!(parse(&["--secret", "s", "--tls-listen", "127.0.0.1:5349"]).is_err());
        assert!(
            parse(&[
                "--secret",
                "s",
                "--listen",
                "127.0.0.1:1",
                "--relay-ip",
                "0.0.0.0"
            ])
            .is_err()
        );
    }

    #[test]
    fn sfu_block() {
        let base = ["--listen", "127.0.0.1:3478", "--secret", "s"];
        assert_eq!(parse(&base).unwrap().sfu, None);
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args)
        };
        // The session endpoint needs an HTTP listener.
        assert!(with(&["--sfu-listen", "127.0.0.1:3479"]).is_err());
        let c = with(&[
            "--sfu-listen",
            "127.0.0.1:3479",
            "--metrics-listen",
            "127.0.0.1:9100",
        ])
        .unwrap();
        let sfu = c.sfu.unwrap();
        assert_eq!(sfu.public_ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(sfu.max_sessions, 1000);
        assert_eq!(sfu.http_listen, None);
        assert!(sfu.ice_tcp);
        let sfu = with(&[
            "--sfu-listen",
            "0.0.0.0:3479",
            "--sfu-public-ip",
            "203.0.113.7",
            "--sfu-http-listen",
            "127.0.0.1:8443",
            "--sfu-max-sessions",
            "5",
        ])
        .unwrap()
        .sfu
        .unwrap();
        assert_eq!(
            sfu.public_ips,
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(sfu.max_sessions, 5);
        assert!(
            with(&[
                "--sfu-listen",
                "127.0.0.1:3479",
                "--sfu-https-listen",
                "127.0.0.1:8443"
            ])
            .is_err(),
            "HTTPS needs the TLS certificate"
        );
        // Static users alone cannot verify session tokens.
        assert!(
            parse(&[
                "--user",
                "a:b",
                "--sfu-listen",
                "127.0.0.1:3479",
                "--sfu-http-listen",
                "127.0.0.1:8443"
            ])
            .is_err()
        );
    }
}
