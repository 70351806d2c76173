//! Heap bytes the TURN core holds per allocation, at 100,000 allocations.
//!
//! A real relay process cannot hold 100k relayed sockets on a box whose `ulimit -n` is capped
//! (`scripts/bench-relay.sh` measures RSS with 9000 real allocations), so this drives the sans-IO
//! [`Server`] alone with an in-memory relay-port pool: every client has its own 5-tuple and TURN
//! REST username and goes through the real request path (Allocate, 401 with a nonce,
//! authenticated Allocate), then — for the second row — CreatePermission and ChannelBind to one
//! peer. A counting global allocator gives the live heap bytes; the relay's own sockets, buffers
//! and the kernel's socket memory are not included.
//!
//! Run: `cargo bench -p switchboard-relay --bench allocation_state`
//! Tune: `BENCH_ALLOCATIONS=100000`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark driver: fail loudly on setup errors"
)]

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::{
    Class, IntegrityKey, IntegrityKind, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use switchboard_relay::turn::auth::rest_password;
use switchboard_relay::turn::{
    Allocation, BindFailure, ChannelBinding, Credentials, FiveTuple, Millis, Output, Permission,
    PortRequest, Server, ServerConfig, Transmit, Transport,
};

#[path = "shared/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live;

/// Resident set size of this process in bytes (Linux), for comparison with the heap count.
fn rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

const SECRET: &str = "bench-secret";
const REALM: &str = "bench";
/// 2027-01-15T08:00:00Z: the clock the core is fed.
const NOW_SECS: u64 = 1_800_000_000;

/// Relay ports without sockets: addresses counted up over 127.0.0.0/8, never reused.
#[derive(Debug, Default)]
struct MemoryPorts {
    next: u32,
}

impl MemoryPorts {
    /// The shell's answer to a request for a relay socket.
    fn allocate(&mut self, request: PortRequest) -> Option<SocketAddr> {
        match request {
            PortRequest::Any(_) | PortRequest::Even { .. } => {
                let n = self.next;
                self.next += 1;
                let ip = IpAddr::from([127, 1, (n >> 8) as u8, n as u8]);
                Some(SocketAddr::new(ip, 49_152 + (n >> 16) as u16))
            }
            PortRequest::Reserved(_) => None,
        }
    }
}

/// One simulated client: its 5-tuple, REST credential and nonce.
struct Client {
    ft: FiveTuple,
    username: String,
    key: IntegrityKey,
    nonce: Option<Vec<u8>>,
    tid: u32,
}

impl Client {
    fn new(i: u32) -> Self {
        let ft = FiveTuple {
            client: SocketAddr::new(
                IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                40_000,
            ),
            server: "192.0.2.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        };
        let username = format!("{}:user{i}", NOW_SECS + 86_400);
        let password = rest_password(SECRET, &username);
        let key = IntegrityKey::long_term(&username, REALM, &password);
        Self {
            ft,
            username,
            key,
            nonce: None,
            tid: i << 4,
        }
    }

    /// Sends a request (authenticated once a nonce is known) and returns the response bytes.
    fn request(
        &mut self,
        server: &mut Server,
        ports: &mut MemoryPorts,
        now: Millis,
        method: Method,
        attrs: &dyn Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        self.tid += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid.to_be_bytes());
        let mut b =
            MessageBuilder::new(MessageType::new(method, Class::Request), TransactionId(tid));
        attrs(&mut b);
        if let Some(nonce) = &self.nonce {
            b.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce)
                .integrity(IntegrityKind::Sha1, &self.key);
        }
        let req = b.fingerprint().finish();
        let _ = server.handle_datagram(self.ft, &req, now);
        let mut response = None;
        loop {
            match server.poll_output() {
                Output::Transmit(Transmit::Client { payload, .. }) => response = Some(payload),
                Output::BindRelay { id, request, .. } => {
                    let result = ports.allocate(request).ok_or(BindFailure::NoPort);
                    server.handle_relay_bound(id, result, now);
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        response.expect("a response")
    }

    /// Allocate: the 401 challenge, then the authenticated request.
    fn allocate(&mut self, server: &mut Server, ports: &mut MemoryPorts, now: Millis) {
        let transport = |b: &mut MessageBuilder| {
            b.attr(
                attr::REQUESTED_TRANSPORT,
                &attr::encode_requested_transport(17),
            );
        };
        let challenge = self.request(server, ports, now, Method::ALLOCATE, &transport);
        let msg = Message::decode(&challenge).unwrap();
        assert_eq!(error_code(&msg), Some(401), "first Allocate is challenged");
        self.nonce = Some(msg.get(attr::NONCE).expect("NONCE").to_vec());
        let ok = self.request(server, ports, now, Method::ALLOCATE, &transport);
        expect_success(&ok, "Allocate");
    }

    /// CreatePermission and ChannelBind to the same peer: one permission, one channel.
    fn permit_and_bind(
        &mut self,
        server: &mut Server,
        ports: &mut MemoryPorts,
        now: Millis,
        peer: SocketAddr,
    ) {
        let ok = self.request(server, ports, now, Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        expect_success(&ok, "CreatePermission");
        let ok = self.request(server, ports, now, Method::CHANNEL_BIND, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &attr::encode_channel_number(0x4000))
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        });
        expect_success(&ok, "ChannelBind");
    }
}

fn error_code(msg: &Message<'_>) -> Option<u16> {
    msg.get(attr::ERROR_CODE)
        .map(|v| attr::decode_error_code(v).unwrap().0)
}

fn expect_success(bytes: &[u8], what: &str) {
    let msg = Message::decode(bytes).unwrap();
    assert_eq!(
        msg.typ.class,
        Class::Success,
        "{what} failed with {:?}",
        error_code(&msg)
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn per(bytes: usize, n: usize) -> f64 {
    bytes as f64 / n as f64
}

fn main() {
    let n: u32 = env_or("BENCH_ALLOCATIONS", 100_000);
    let count = n as usize;
    let now = Millis::from_secs(NOW_SECS);
    // 203.0.113.0/24 is a documentation range, refused by default: open it for the peers.
    let peer: SocketAddr = "203.0.113.7:5000".parse().unwrap();

    let mut config = ServerConfig::new(REALM, [7; 32]);
    config.max_allocations = count.max(1);
    config
        .peer_policy
        .allowed
        .push("203.0.113.0/24".parse().unwrap());
    let credentials = Credentials {
        secrets: vec![SECRET.into()],
        ..Credentials::default()
    };
    let mut server = Server::new(config, credentials);
    let mut ports = MemoryPorts::default();
    let mut clients: Vec<Client> = (0..n).map(Client::new).collect();

    // Warm the request path once (lazy statics, the nonce issuer) on a client not counted.
    let mut warm = Client::new(n);
    let _ = warm.request(&mut server, &mut ports, now, Method::BINDING, &|_| {});

    let (heap0, rss0) = (live(), rss());
    let start = Instant::now();
    for c in &mut clients {
        c.allocate(&mut server, &mut ports, now);
    }
    let allocate_secs = start.elapsed().as_secs_f64();
    assert_eq!(server.allocation_count(), count);
    let (heap1, rss1) = (live(), rss());

    let start = Instant::now();
    for c in &mut clients {
        c.permit_and_bind(&mut server, &mut ports, now, peer);
    }
    let bind_secs = start.elapsed().as_secs_f64();
    let (heap2, rss2) = (live(), rss());
    let some = server.allocation(&clients[0].ft).unwrap();
    assert_eq!((some.permissions.len(), some.channels.len()), (1, 1));

    let rss_per = |after: Option<usize>| match (rss0, after) {
        (Some(a), Some(b)) => format!("{:.0}", per(b.saturating_sub(a), count)),
        _ => "n/a".to_owned(),
    };
    println!(
        "TURN core state per allocation, {n} allocations (heap bytes counted by a global allocator; RSS for comparison)\n"
    );
    println!(
        "| state per allocation | allocations | seconds to create | heap bytes per allocation | RSS bytes per allocation |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| Allocate only | {n} | {allocate_secs:.2} | {:.0} | {} |",
        per(heap1 - heap0, count),
        rss_per(rss1)
    );
    println!(
        "| + 1 permission, 1 channel | {n} | {:.2} | {:.0} | {} |",
        allocate_secs + bind_secs,
        per(heap2 - heap0, count),
        rss_per(rss2)
    );
    println!();
    println!(
        "Inline sizes: Allocation {} B, FiveTuple {} B, Permission {} B, ChannelBinding {} B",
        std::mem::size_of::<Allocation>(),
        std::mem::size_of::<FiveTuple>(),
        std::mem::size_of::<Permission>(),
        std::mem::size_of::<ChannelBinding>(),
    );
}
