//! `turn-bench`: packets/s and round-trip latency through TURN allocations.
//!
//! Each client allocates on the server with TURN REST credentials, binds a
//! channel to its own UDP echo peer on loopback, and sends ChannelData. The
//! peer echoes every datagram back through the relay, so one round trip is
//! client → relay → peer → relay → client. The same client runs against any
//! RFC 8656 server, which is how `scripts/bench-relay.sh` compares the
//! Switchboard relay with coturn in one run.
//!
//! Two measurements per configuration:
//! - throughput: each client keeps `--window` packets in flight for `--packets` packets;
//! - latency: one packet in flight at a time (`--latency-packets`), p50/p99/max of the RTT.
//!
//! Every loop is bounded by a packet count and by `--max-seconds`.
#![allow(
    clippy::indexing_slicing,
    reason = "buffers are sized locally; a benchmark may panic on a broken server"
)]

mod turn_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;

use turn_client::TurnClient;

/// Benchmark a TURN server's ChannelData path.
#[derive(Debug, Parser)]
struct Args {
    /// TURN server (UDP), e.g. 127.0.0.1:3478. Loopback only.
    #[arg(long)]
    server: SocketAddr,
    /// Shared TURN REST secret of the server.
    #[arg(long)]
    secret: String,
    /// Name printed in the result line.
    #[arg(long, default_value = "server")]
    label: String,
    /// Concurrent clients, one allocation each.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Payload bytes per packet (at least 16).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Packets per client in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Packets in flight per client in the throughput phase.
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Round trips per client in the latency phase.
    #[arg(long, default_value_t = 2_000)]
    latency_packets: u64,
    /// Hard time limit per phase.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// Instead of relaying: create this many allocations, then report the
    /// server's resident memory per allocation (needs `--server-pid`).
    #[arg(long, default_value_t = 0)]
    hold: usize,
    /// Pid of the server process, to read its resident memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
}

fn main() {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        eprintln!("turn-bench only targets loopback servers");
        std::process::exit(2);
    }
    if args.hold > 0 {
        return hold(&args);
    }
    let payload = args.payload.max(16);
    let limit = Duration::from_secs(args.max_seconds);
    let clients: Vec<TurnClient> = (0..args.clients)
        .map(|i| {
            TurnClient::connect(args.server, &args.secret, &format!("bench{i}"))
                .unwrap_or_else(|e| fail(&format!("client {i}: {e}")))
        })
        .collect();

    // Throughput: all clients at once, each on its own thread.
    let started = Instant::now();
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.run_window(payload, args.packets, args.window, limit)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (mut received, mut lost) = (0u64, 0u64);
    for r in results {
        let (got, missing) = r.unwrap_or_else(|e| fail(&e));
        received += got;
        lost += missing;
    }
    let pps = received as f64 / elapsed;

    // Latency: one in flight per client, all clients concurrently.
    let rtts: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.run_ping_pong(payload, args.latency_packets, limit)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
                    .unwrap_or_else(|e| fail(&e))
            })
            .collect()
    });
    let mut micros: Vec<u64> = rtts.iter().map(|d| d.as_micros() as u64).collect();
    micros.sort_unstable();
    let pct = |p: f64| {
        micros
            .get(((micros.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {} |",
        args.label,
        args.clients,
        payload,
        pps,
        100.0 * lost as f64 / (received + lost).max(1) as f64,
        pct(0.50),
        pct(0.99),
        micros.last().copied().unwrap_or(0),
    );
}

/// Creates `--hold` allocations and prints the server's resident memory per allocation.
fn hold(args: &Args) {
    let pid = args
        .server_pid
        .unwrap_or_else(|| fail("--hold needs --server-pid"));
    let before = rss_kib(pid).unwrap_or_else(|| fail("cannot read the server's VmRSS"));
    let started = Instant::now();
    let limit = Duration::from_secs(args.max_seconds);
    let (mut held, mut attempts) = (0usize, 0usize);
    while held < args.hold && started.elapsed() < limit {
        // The allocation outlives the client socket (until its lifetime ends),
        // so sockets are opened and dropped one at a time. Sources spread over
        // 127.0.0.0/16 so a reused ephemeral port rarely meets an existing
        // allocation's 5-tuple; when it does (437), the next attempt moves on.
        attempts += 1;
        let source = std::net::Ipv4Addr::new(
            127,
            0,
            (attempts / 250 % 250) as u8,
            (attempts % 250 + 1) as u8,
        );
        match turn_client::allocate_only(args.server, source, &args.secret, &format!("hold{held}"))
        {
            Ok(()) => held += 1,
            Err(e) if e.contains("437") && attempts < args.hold * 2 => {}
            Err(e) => fail(&format!("allocation {held}: {e}")),
        }
    }
    let after = rss_kib(pid).unwrap_or(before);
    let per = (after.saturating_sub(before) * 1024) as f64 / held.max(1) as f64;
    println!(
        "| {} | {} | {:.1} | {} | {} | {:.0} |",
        args.label,
        held,
        started.elapsed().as_secs_f64(),
        before,
        after,
        per
    );
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fail(msg: &str) -> ! {
    eprintln!("turn-bench: {msg}");
    std::process::exit(1)
}
