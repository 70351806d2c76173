//! Closed-loop packets/s and round-trip latency through TURN allocations, and
//! resident memory per held allocation, for any RFC 8656 server on loopback.
//!
//! Each client allocates with TURN REST credentials, binds a channel to its own
//! UDP echo peer, and sends ChannelData; the peer echoes through the server, so
//! one round trip is client → server → peer → server → client. The same client
//! runs against our relay and coturn, which is how `scripts/bench-relay.sh`
//! compares them in one run (both servers use realm `interop`, the harness's).
//!
//! - throughput: each client keeps `--window` packets in flight for `--packets` packets;
//! - latency: one packet in flight at a time (`--latency-packets`), p50/p99/max of the RTT;
//! - `--hold N`: create N allocations and report the server's RSS growth per allocation;
//! - `--server-pid`: also report the server's CPU time (user + system, all threads, from
//!   `/proc/PID/stat`) per relayed packet and round trips per second per server core
//!   (round trips / server CPU seconds), so servers using different numbers of cores compare;
//! - `--c2c`: client to client: each "client" is a pair of allocations on the server, bound to
//!   each other's relayed address; one side sends, the other echoes through the server (what
//!   two browsers relayed by one node do);
//! - `--raw-echo`: no TURN at all, a plain UDP echo server thread (recvmmsg/sendmmsg through
//!   quinn-udp and rustix): the loopback ceiling for this client on this machine;
//! - `--rate R`: open loop instead: the clients together send R round trips per second, paced,
//!   for `--seconds`, whatever comes back; the row shows what was offered, what came back and
//!   what was lost (`scripts/bench-relay.sh` steps R to find the highest rate a server relays
//!   without loss);
//! - with `--server-pid`, the last column is the CPU of each busy server thread (≥ 5 % of a
//!   core) during the measured phase, from `/proc/PID/task/*/stat`: whether a server with N
//!   threads keeps N cores busy.
//!
//! Every loop is bounded by a packet count and by `--max-seconds`.
//! Run: `cargo bench -p switchboard-relay --bench turn_closed_loop -- --server 127.0.0.1:3478 --secret S`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark driver: fail loudly on a broken server"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use switchboard_relay::stun::{ChannelData, ChannelNumber};

const CHANNEL: u16 = 0x4000;

/// Benchmark a TURN server's ChannelData path.
#[derive(Debug, Parser)]
struct Args {
    /// TURN server (UDP), e.g. 127.0.0.1:3478. Loopback only.
    #[arg(long)]
    server: SocketAddr,
    /// Shared TURN REST secret of the server (its realm must be `interop`).
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
    /// Client to client: pairs of allocations echoing through the server.
    #[arg(long)]
    c2c: bool,
    /// Measure a raw UDP echo server (recvmmsg/sendmmsg) instead of a TURN server.
    #[arg(long)]
    raw_echo: bool,
    /// Open loop: round trips per second offered by all clients together (0: closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of offered load in the open-loop mode.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    assert!(args.server.ip().is_loopback(), "only loopback servers");
    if args.hold > 0 {
        return hold(&args);
    }
    let payload = args.payload.max(16);
    let limit = Duration::from_secs(args.max_seconds);
    let stop = Arc::new(AtomicBool::new(false));
    if args.raw_echo {
        return raw_echo(&args, payload, limit);
    }
    let sockets: Vec<UdpSocket> = (0..args.clients)
        .map(|i| {
            if args.c2c {
                return c2c_pair(&args, i, stop.clone());
            }
            let peer = common::echo_thread(stop.clone());
            let (mut client, _) = allocated_client(&args, &format!("bench{i}"));
            for (what, reply) in [
                ("permission", client.permit(peer)),
                ("channel bind", client.bind_channel(CHANNEL, peer)),
            ] {
                assert!(
                    reply.is_success(),
                    "client {i}: {what} refused: {:?}",
                    reply.code()
                );
            }
            client
                .socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            client.socket
        })
        .collect();

    for s in &sockets {
        big_buffers(s);
    }
    if args.rate > 0 {
        open_loop(&args, &sockets, payload);
        stop.store(true, Ordering::Relaxed);
        return;
    }

    // Throughput: all clients at once, each on its own thread.
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let threads_before = args.server_pid.map(thread_ticks);
    let started = Instant::now();
    let (received, lost) = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|c| {
                s.spawn(|| run_window(c, args.server, payload, args.packets, args.window, limit))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(r, l), (got, missing)| (r + got, l + missing))
    });
    let elapsed = started.elapsed().as_secs_f64();
    let pps = received as f64 / elapsed;
    let cpu = args
        .server_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let busy = busy_threads(args.server_pid, threads_before.as_ref(), elapsed);

    // Latency: one in flight per client, all clients concurrently.
    let mut micros: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|c| {
                s.spawn(|| run_ping_pong(c, args.server, payload, args.latency_packets, limit))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    stop.store(true, Ordering::Relaxed);
    micros.sort_unstable();
    let (cpu_s, us_per_packet, per_core) = cpu_columns(&args, cpu, received);
    println!(
        "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
        args.label,
        args.clients,
        payload,
        pps,
        100.0 * lost as f64 / (received + lost).max(1) as f64,
        cpu_s,
        us_per_packet,
        per_core,
        common::percentile(&micros, 0.50),
        common::percentile(&micros, 0.99),
        micros.last().copied().unwrap_or(0),
        busy,
    );
}

/// Asks for 4 MiB socket buffers (the kernel caps them at `net.core.rmem_max`/`wmem_max`), as
/// the servers have, so a burst is not lost in the client's own receive queue.
/// The table's server CPU columns: seconds, µs per relayed packet, round trips per CPU second
/// ("-" without a CPU reading or without round trips).
fn cpu_columns(args: &Args, cpu: Option<f64>, received: u64) -> (String, String, String) {
    // A round trip is two relayed packets (there and back); client to client, four.
    let relayed_per_round_trip = if args.c2c { 4.0 } else { 2.0 };
    match cpu {
        Some(c) if c > 0.0 && received > 0 => (
            format!("{c:.2}"),
            format!(
                "{:.2}",
                c * 1e6 / (received as f64 * relayed_per_round_trip)
            ),
            format!("{:.0}", received as f64 / c),
        ),
        _ => ("-".into(), "-".into(), "-".into()),
    }
}

fn big_buffers(socket: &UdpSocket) {
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(socket, 4 << 20);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(socket, 4 << 20);
}

/// The open-loop row: every client sends its share of `--rate` paced over `--seconds` while a
/// second thread per client counts what comes back; what has not come back 500 ms after the
/// last send is lost.
fn open_loop(args: &Args, sockets: &[UdpSocket], payload: usize) {
    let per_client = args.rate as f64 / sockets.len().max(1) as f64;
    let duration = Duration::from_secs_f64(args.seconds);
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let threads_before = args.server_pid.map(thread_ticks);
    let (sent, received) = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|c| s.spawn(move || paced(c, args.server, payload, per_client, duration)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (sent, got)| (a + sent, b + got))
    });
    // CPU is read after the 500 ms grace (what was still queued gets relayed then) and divided
    // by the seconds of offered load.
    let elapsed = args.seconds;
    let cpu = args
        .server_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let busy = busy_threads(args.server_pid, threads_before.as_ref(), elapsed);
    let (cpu_s, us_per_packet, per_core) = cpu_columns(args, cpu, received);
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.3} | {} | {} | {} | {} |",
        args.label,
        args.clients,
        payload,
        args.rate,
        sent as f64 / args.seconds,
        received as f64 / args.seconds,
        sent.saturating_sub(received),
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
        cpu_s,
        us_per_packet,
        per_core,
        busy,
    );
}

/// One open-loop client: sends `rate` ChannelData per second for `duration` (what is due every
/// 200 µs), counting echoes on a second thread until 500 ms after the last send. Returns (sent,
/// received).
fn paced(
    sock: &UdpSocket,
    server: SocketAddr,
    payload: usize,
    rate: f64,
    duration: Duration,
) -> (u64, u64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut buf = vec![0u8; 2048];
            let mut received = 0u64;
            // Bounded: the sender sets `done` after `duration` + 500 ms; each read waits at most
            // the socket's 500 ms timeout.
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf)
                    && ChannelData::decode(&buf[..n])
                        .is_ok_and(|cd| cd.channel == ChannelNumber(CHANNEL))
                {
                    received += 1;
                }
            }
            received
        });
        let mut data = vec![0u8; payload];
        let started = Instant::now();
        let total = (rate * duration.as_secs_f64()) as u64;
        let mut sent = 0u64;
        while sent < total && started.elapsed() < duration + Duration::from_secs(1) {
            let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
            while sent < due {
                data[..8].copy_from_slice(&sent.to_be_bytes());
                let _ = sock.send_to(
                    &ChannelData::encode(ChannelNumber(CHANNEL), &data, false),
                    server,
                );
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        (sent, counter.join().unwrap())
    })
}

/// User + system clock ticks of each thread of `pid`, by thread id.
fn thread_ticks(pid: u32) -> std::collections::HashMap<u32, u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((tid, ticks))
    })
    .collect()
}

/// The CPU of each server thread that used at least 5 % of a core over `secs`, busiest first,
/// as "97 / 95" (percent of one core); "-" without `--server-pid`.
fn busy_threads(
    pid: Option<u32>,
    before: Option<&std::collections::HashMap<u32, u64>>,
    secs: f64,
) -> String {
    let (Some(pid), Some(before)) = (pid, before) else {
        return "-".into();
    };
    let mut busy: Vec<f64> = thread_ticks(pid)
        .into_iter()
        .map(|(tid, t)| {
            // USER_HZ is 100: a tick is 1 % of a core-second.
            t.saturating_sub(before.get(&tid).copied().unwrap_or(0)) as f64 / secs.max(1e-3)
        })
        .filter(|&p| p >= 5.0)
        .collect();
    busy.sort_by(|a, b| b.total_cmp(a));
    if busy.is_empty() {
        return "-".into();
    }
    busy.iter()
        .map(|p| format!("{p:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A TURN client with an allocation. Allocations of earlier runs live on (600 s), so a reused
/// ephemeral port can meet one of them (437): then another socket is tried.
fn allocated_client(args: &Args, user: &str) -> (common::TurnClient, SocketAddr) {
    for _ in 0..20 {
        let mut client =
            common::TurnClient::rest(args.server, &args.secret, user, common::unix_now() + 3600);
        let reply = client.allocate();
        if reply.is_success() {
            let relayed = reply
                .xor(switchboard_relay::stun::attributes::XOR_RELAYED_ADDRESS)
                .expect("XOR-RELAYED-ADDRESS");
            return (client, relayed);
        }
        assert_eq!(reply.code(), Some(437), "{user}: allocate refused");
    }
    panic!("{user}: no free 5-tuple after 20 attempts");
}

/// User + system CPU seconds of `pid` (all its threads), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

/// One client-to-client pair: allocations A and B, each with a channel to the other's relayed
/// address; B echoes every ChannelData back through the server. Returns A's socket.
fn c2c_pair(args: &Args, i: usize, stop: Arc<AtomicBool>) -> UdpSocket {
    let (mut a, a_relay) = allocated_client(args, &format!("c2c{i}a"));
    let (mut b, b_relay) = allocated_client(args, &format!("c2c{i}b"));
    for (what, reply) in [
        ("A channel", a.bind_channel(CHANNEL, b_relay)),
        ("B channel", b.bind_channel(CHANNEL, a_relay)),
    ] {
        assert!(
            reply.is_success(),
            "pair {i}: {what} refused: {:?}",
            reply.code()
        );
    }
    let server = args.server;
    let b_socket = b.socket;
    b_socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = b_socket.recv(&mut buf) {
                // The same ChannelData (same channel number on B's side) goes back.
                let _ = b_socket.send_to(&buf[..n], server);
            }
        }
    });
    a.socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    a.socket
}

/// A plain UDP echo server (batched receive and send) and the same closed-loop client with
/// ChannelData-sized datagrams: how fast this machine's loopback and this client go without TURN.
fn raw_echo(args: &Args, payload: usize, limit: Duration) {
    use switchboard_relay::net::batch::{Outbox, Receiver, Source};
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let addr = server.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut rx = Receiver::new().unwrap();
        let mut out = Outbox::default();
        while !stop_server.load(Ordering::Relaxed) {
            match rx.recv(&server) {
                Ok(n) => {
                    let grams: Vec<_> = rx.datagrams(n).collect();
                    for (from, range) in grams {
                        out.push_received(Source::Listener(0), from, None, range);
                    }
                    out.flush(&rx, |_| Some(&server));
                }
                // Wait for readiness, as the relay's event loop does (bounded, to see `stop`).
                Err(_) => {
                    let mut fds = [rustix::event::PollFd::new(
                        &server,
                        rustix::event::PollFlags::IN,
                    )];
                    let timeout = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&timeout));
                }
            }
        }
    });
    let sockets: Vec<UdpSocket> = (0..args.clients)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    let (received, lost) = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .map(|c| s.spawn(|| run_window(c, addr, payload, args.packets, args.window, limit)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(r, l), (got, missing)| (r + got, l + missing))
    });
    let pps = received as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    println!(
        "| {} | {} | {} | {:.0} | {:.2} | - | - | - | - | - | - | - |",
        args.label,
        args.clients,
        payload,
        pps,
        100.0 * lost as f64 / (received + lost).max(1) as f64,
    );
}

/// Sends `packets` ChannelData messages keeping `window` in flight; returns (received, lost).
fn run_window(
    sock: &UdpSocket,
    server: SocketAddr,
    payload: usize,
    packets: u64,
    window: u64,
    limit: Duration,
) -> (u64, u64) {
    let started = Instant::now();
    let mut data = vec![0u8; payload];
    let mut buf = vec![0u8; 2048];
    let (mut sent, mut received, mut timeouts) = (0u64, 0u64, 0u64);
    while received + timeouts < packets && started.elapsed() < limit {
        while sent < packets && sent - received - timeouts < window {
            data[..8].copy_from_slice(&sent.to_be_bytes());
            sock.send_to(
                &ChannelData::encode(ChannelNumber(CHANNEL), &data, false),
                server,
            )
            .unwrap();
            sent += 1;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                if ChannelData::decode(&buf[..n])
                    .is_ok_and(|cd| cd.channel == ChannelNumber(CHANNEL))
                {
                    received += 1;
                }
            }
            // A lost datagram frees its window slot after the read timeout.
            Err(_) => timeouts += sent - received - timeouts,
        }
    }
    (received, sent - received)
}

/// One packet in flight at a time; returns each round-trip time in µs.
fn run_ping_pong(
    sock: &UdpSocket,
    server: SocketAddr,
    payload: usize,
    packets: u64,
    limit: Duration,
) -> Vec<u64> {
    let started = Instant::now();
    let mut data = vec![0u8; payload];
    let mut buf = vec![0u8; 2048];
    let mut rtts = Vec::new();
    for i in 0..packets {
        if started.elapsed() > limit {
            break;
        }
        data[..8].copy_from_slice(&(u64::MAX - i).to_be_bytes());
        let t = Instant::now();
        sock.send_to(
            &ChannelData::encode(ChannelNumber(CHANNEL), &data, false),
            server,
        )
        .unwrap();
        // Skip stragglers from the throughput phase until this packet comes back;
        // a read timeout counts it as lost (no RTT recorded).
        while let Ok(n) = sock.recv(&mut buf) {
            let back = ChannelData::decode(&buf[..n])
                .ok()
                .and_then(|cd| cd.data.get(..8).map(<[u8]>::to_vec));
            if back.as_deref() == Some(&data[..8]) {
                rtts.push(t.elapsed().as_micros() as u64);
                break;
            }
        }
    }
    rtts
}

/// Creates `--hold` allocations and prints the server's resident memory per allocation.
fn hold(args: &Args) {
    let pid = args.server_pid.expect("--hold needs --server-pid");
    let before = rss_kib(pid).expect("the server's VmRSS");
    let started = Instant::now();
    let limit = Duration::from_secs(args.max_seconds);
    let (mut held, mut attempts) = (0usize, 0usize);
    while held < args.hold && started.elapsed() < limit {
        // The allocation outlives the client socket (until its lifetime ends),
        // so sockets are opened and dropped one at a time. Sources spread over
        // 127.0.0.0/16 so a reused ephemeral port rarely meets an existing
        // allocation's 5-tuple; when it does (437), the next attempt moves on.
        attempts += 1;
        let source = Ipv4Addr::new(
            127,
            0,
            (attempts / 250 % 250) as u8,
            (attempts % 250 + 1) as u8,
        );
        let mut client = common::TurnClient::rest_from(
            source,
            args.server,
            &args.secret,
            &format!("hold{held}"),
            common::unix_now() + 3600,
        );
        let reply = client.allocate();
        match reply.code() {
            None if reply.is_success() => held += 1,
            Some(437) if attempts < args.hold * 2 => {}
            code => panic!("allocation {held}: {code:?}"),
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
