//! Packets per second and round-trip latency through TURN allocations, our relay and coturn side
//! by side under identical load.
//!
//! Each of `BENCH_CLIENTS` clients allocates, binds a channel to a local UDP echo peer, and sends
//! ChannelData at `rate / clients` packets per second for `BENCH_SECS` seconds; every packet
//! carries a sequence number and send time, so the echo gives loss and round-trip times.
//!
//! Run: `cargo bench -p switchboard-relay --bench relay_vs_coturn`
//! Tune: `BENCH_RATES=10000,50000 BENCH_SECS=3 BENCH_CLIENTS=4 BENCH_SIZE=200`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark driver: fail loudly on setup errors"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use switchboard_relay::stun::{ChannelData, ChannelNumber};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// coturn with the same policy as our relay, killed by pid on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Coturn {
    fn start() -> Self {
        let tool = common::require_tool("turnserver");
        let port = common::free_port();
        let dir = std::env::temp_dir().join(format!("bench-coturn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(tool)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--use-auth-secret",
            ])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--static-auth-secret={}", common::SECRET))
            .arg(format!("--realm={}", common::REALM))
            .args([
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--min-port=46000",
                "--max-port=46999",
            ])
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .args(["--log-file=stdout", "--simple-log", "--no-stdout-log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        for _ in 0..100 {
            let c =
                common::TurnClient::rest(addr, common::SECRET, "probe", common::unix_now() + 60);
            c.socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            c.raw(&[
                0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ]);
            if c.recv().is_some() {
                return Self { child, addr, dir };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("turnserver did not start");
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
struct Outcome {
    sent: u64,
    received: u64,
    rtts_us: Vec<u64>,
}

/// One client: allocate, bind a channel, send paced ChannelData, collect echoes.
fn run_client(
    server: SocketAddr,
    peer: SocketAddr,
    id: usize,
    rate: u64,
    secs: u64,
    size: usize,
) -> Outcome {
    let mut client = common::TurnClient::rest(
        server,
        common::SECRET,
        &format!("bench{id}"),
        common::unix_now() + 3600,
    );
    let reply = client.allocate();
    assert!(reply.is_success(), "allocate failed: {:?}", reply.code());
    let reply = client.bind_channel(0x4000, peer);
    assert!(
        reply.is_success(),
        "channel bind failed: {:?}",
        reply.code()
    );

    let socket = client.socket.try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        let socket = socket.try_clone().unwrap();
        thread::spawn(move || {
            let mut out = Outcome::default();
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, _)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(cd) = ChannelData::decode(&buf[..n]) else {
                    continue;
                };
                if cd.data.len() < 16 {
                    continue;
                }
                let sent_at = u64::from_be_bytes(cd.data[8..16].try_into().unwrap());
                let now = u64::try_from(start.elapsed().as_nanos()).unwrap();
                out.received += 1;
                out.rtts_us.push(now.saturating_sub(sent_at) / 1000);
            }
            out
        })
    };
    let mut payload = vec![0u8; size.max(16)];
    let mut sent = 0u64;
    let mut frame = Vec::with_capacity(size + 8);
    while Instant::now() < end {
        // Pace in 1 ms slots: send whatever the schedule says is due.
        let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(rate * secs);
        while sent < due {
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            payload[8..16].copy_from_slice(
                &u64::try_from(start.elapsed().as_nanos())
                    .unwrap()
                    .to_be_bytes(),
            );
            frame.clear();
            ChannelData::encode_into(ChannelNumber(0x4000), &payload, false, &mut frame);
            let _ = socket.send_to(&frame, server);
            sent += 1;
        }
        thread::sleep(Duration::from_micros(500));
    }
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let mut out = receiver.join().unwrap();
    out.sent = sent;
    let _ = client.refresh(0);
    out
}

/// CPU time (user + system) consumed so far by process `pid`, from /proc (clock ticks of 10 ms).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) * 10
}

fn measure(
    name: &str,
    server: SocketAddr,
    pid: u32,
    rate: u64,
    clients: usize,
    secs: u64,
    size: usize,
) {
    let cpu_before = cpu_ms(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peers: Vec<SocketAddr> = (0..clients)
        .map(|_| common::echo_thread(stop.clone()))
        .collect();
    let per_client = (rate / clients as u64).max(1);
    let handles: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| thread::spawn(move || run_client(server, peer, i, per_client, secs, size)))
        .collect();
    let mut total = Outcome::default();
    for h in handles {
        let o = h.join().unwrap();
        total.sent += o.sent;
        total.received += o.received;
        total.rtts_us.extend(o.rtts_us);
    }
    stop.store(true, Ordering::Relaxed);
    total.rtts_us.sort_unstable();
    let cpu = cpu_ms(pid).saturating_sub(cpu_before);
    // Each echoed packet crosses the server twice (client to peer, peer to client).
    let cpu_us_per_packet = if total.received == 0 {
        0.0
    } else {
        cpu as f64 * 1000.0 / (2.0 * total.received as f64)
    };
    let loss = if total.sent == 0 {
        0.0
    } else {
        100.0 * (total.sent - total.received.min(total.sent)) as f64 / total.sent as f64
    };
    println!(
        "{name:<10} {rate:>9} {:>11.0} {loss:>7.2}% {:>8} {:>8} {:>8} {cpu:>8} {cpu_us_per_packet:>10.2}",
        total.received as f64 / secs as f64,
        common::percentile(&total.rtts_us, 0.50),
        common::percentile(&total.rtts_us, 0.99),
        total.rtts_us.last().copied().unwrap_or(0),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; no other arguments are used.
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "10000,25000,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs = env_or("BENCH_SECS", 3u64);
    let clients = env_or("BENCH_CLIENTS", 4usize).max(1);
    let size = env_or("BENCH_SIZE", 200usize);
    let relay = common::Relay::start_with(&[
        "--allow-loopback-peers",
        "--secret",
        common::SECRET,
        "--bandwidth-per-allocation",
        "0",
    ]);
    let coturn = Coturn::start();
    println!("{clients} clients, {size}-byte payloads, {secs} s per step, echo peers on loopback");
    println!(
        "{:<10} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "server",
        "offered",
        "echoed/s",
        "loss",
        "p50 us",
        "p99 us",
        "max us",
        "cpu ms",
        "cpu us/pkt"
    );
    for rate in rates {
        measure("relay", relay.addr, relay.pid(), rate, clients, secs, size);
        measure(
            "coturn",
            coturn.addr,
            coturn.child.id(),
            rate,
            clients,
            secs,
            size,
        );
    }
}
