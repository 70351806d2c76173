//! `loadgen`: N WebSocket clients across M rooms against Switchboard (protocol v1, optionally
//! v1.1 `cseq`), the echo floor, or PeerJS server. Every client sends probes (send time and a
//! per-stream number in the payload) at a fixed rate; receivers compute latency and detect lost
//! and duplicated probes exactly. Prints a JSON summary. Loopback only; bounded in count and time.

mod client;
mod procstat;
mod track;
mod wire;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use client::{Client, Config, GoingAway, Mode, Pattern, Phase, Report, Shared};
use track::{ClientIdx, Percentiles, Received, Sent};

/// Load generator for Switchboard signaling, the echo floor and PeerJS server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server protocol.
    #[arg(long, value_enum, default_value = "v1")]
    mode: Mode,
    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:8787")]
    target: SocketAddr,
    /// Clients.
    #[arg(long, default_value_t = 100)]
    clients: u32,
    /// Rooms (default: clients / 2, i.e. two-peer rooms). Clients fill rooms in order.
    #[arg(long)]
    rooms: Option<u32>,
    /// Whom each probe goes to.
    #[arg(long, value_enum, default_value = "signal")]
    pattern: Pattern,
    /// Probes per second per client (0: connect and hold only).
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Probe payload size in bytes (200 makes ~270-byte `signal` frames).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait after sending for the last deliveries (ends early when all arrived).
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Joins started per second.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Timeout of one connect (TCP, upgrade, welcome), seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Hard deadline of the whole run, seconds (default: joins + duration + drain + 30).
    #[arg(long)]
    deadline: Option<f64>,
    /// Send `ack` after this many sequenced frames (and, when behind, every
    /// `welcome.limits.ack_delay_ms`, or every second if the room announces none).
    #[arg(long, default_value_t = 16)]
    ack_every: u32,
    /// Protocol v1.1 acked client frames: `cseq` on every frame, an outbox resent after resume.
    #[arg(long)]
    cseq: bool,
    /// Join with `presence=off` (large rooms): no presence is sent to the clients, which learn
    /// their partners' peer ids from each other inside this process instead, so a client's
    /// destinations are the members of its room that this loadgen process runs (`--mode v1`,
    /// `--pattern signal` only).
    #[arg(long)]
    presence_off: bool,
    /// Each client drops its connection every this many seconds (plus up to half of it, random)
    /// and resumes with `resume` + `last_seq`.
    #[arg(long)]
    drop_every: Option<f64>,
    /// Heartbeat period in ms instead of `welcome.heartbeat_ms` (the echo floor: none by default).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Reconnect attempts after a drop before a client gives up.
    #[arg(long, default_value_t = 20)]
    reconnect_attempts: u32,
    /// Room name prefix (default: `lg-` and random hex, so runs never share rooms).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Index of this process's first client (several loadgen processes in one run).
    #[arg(long, default_value_t = 0)]
    first_client: u32,
    /// Source address of client 0; later clients use the next addresses of 127.0.0.0/8.
    #[arg(long, default_value = "127.16.0.1")]
    src_base: Ipv4Addr,
    /// Clients sharing one source address (each address has its own ephemeral ports).
    #[arg(long, default_value_t = 64)]
    clients_per_ip: u32,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Process groups of the server (repeatable): CPU and RSS from /proc over the send window.
    #[arg(long)]
    server_pgid: Vec<u32>,
    /// Write this file when every client joined or failed.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// After joining, wait (heartbeating) until this file exists before sending.
    #[arg(long)]
    go_file: Option<PathBuf>,
    /// Also write the JSON summary here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Include every 4003 close and its resume in the summary.
    #[arg(long)]
    going_away_events: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Exit with status 1 unless the run was correct: every client joined, every probe delivered
    /// exactly once, no `error` frame, no sequence gap, no failed resume (no speed criteria).
    #[arg(long)]
    check: bool,
    /// Print CPU/RSS of the `--server-pgid` processes as JSON and exit.
    #[arg(long)]
    procstat: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    mode: Mode,
    target: SocketAddr,
    pattern: Pattern,
    cseq: bool,
    clients: u32,
    rooms: u32,
    rate_per_client: f64,
    payload_bytes: usize,
    started_unix_ms: u64,
    deadline_hit: bool,
    connect: ConnectSummary,
    msgs: MsgSummary,
    latency_ms: Percentiles,
    /// Latency by the second of the send phase the probe was sent in.
    latency_by_second: Vec<track::SecondLatency>,
    errors_by_code: BTreeMap<String, u64>,
    connection_ends: BTreeMap<String, u64>,
    reconnects: u64,
    reconnect_failures: BTreeMap<String, u64>,
    gave_up: BTreeMap<String, u64>,
    resume_failed: u64,
    seq_gaps: u64,
    seq_repeats: u64,
    going_away: GoingAwaySummary,
    server: Option<ServerSummary>,
    /// loadgen's own CPU over the same window as the server's (it shares the machine).
    loadgen_cpu: LoadgenCpu,
    rlimit_nofile: u64,
}

#[derive(Debug, Serialize)]
struct LoadgenCpu {
    cpu_ms: f64,
    cpu_us_per_delivered_msg: f64,
}

#[derive(Debug, Serialize)]
struct ConnectSummary {
    connected: u64,
    failed: u64,
    failed_by_reason: BTreeMap<String, u64>,
    seconds: f64,
    join_ms: Percentiles,
}

#[derive(Debug, Serialize)]
struct MsgSummary {
    send_seconds: f64,
    sent: u64,
    expected: u64,
    delivered: u64,
    sent_per_s: f64,
    delivered_per_s: f64,
    lost: u64,
    duplicated: u64,
    unexpected: u64,
    resent: u64,
    unacked: u64,
    no_peer: u64,
    foreign: u64,
    all_delivered: bool,
}

#[derive(Debug, Serialize)]
struct GoingAwaySummary {
    count: u64,
    resumed: u64,
    first_close_unix_ms: Option<f64>,
    /// Reconnect start times relative to the first 4003 close, ms, sorted.
    reconnect_offsets_ms: Vec<f64>,
    events: Vec<GoingAway>,
}

#[derive(Debug, Serialize)]
struct ServerSummary {
    window_seconds: f64,
    processes: Vec<procstat::ProcDelta>,
    cpu_ms: f64,
    cpu_us_per_delivered_msg: f64,
    rss_kib: u64,
    rss_kib_after_connect: u64,
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let mut up = lim;
    up.current = lim.maximum;
    if setrlimit(Resource::Nofile, up).is_ok() {
        lim.maximum.unwrap_or(u64::MAX)
    } else {
        lim.current.unwrap_or(u64::MAX)
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.procstat {
        let s = procstat::sample(&args.server_pgid, Some(args.target.port()));
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return std::process::ExitCode::SUCCESS;
    }
    if args.presence_off && (args.pattern != Pattern::Signal || args.mode != Mode::V1) {
        // A broadcast reaches every member, and a client without presence knows only the
        // members of its own process: the expected deliveries could not be counted.
        eprintln!("loadgen: --presence-off needs --mode v1 and --pattern signal");
        return std::process::ExitCode::from(2);
    }
    let nofile = raise_nofile();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let summary = rt.block_on(run(&args, nofile));
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    println!("{json}");
    if let Some(path) = &args.out
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        eprintln!("loadgen: writing {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    if args.check {
        let mut problems = violations(&summary, args.rate > 0.0);
        if args.drop_every.is_some() && summary.reconnects == 0 {
            problems.push("--drop-every was given but no client reconnected".into());
        }
        if !problems.is_empty() {
            eprintln!("loadgen --check failed: {}", problems.join("; "));
            return std::process::ExitCode::FAILURE;
        }
        eprintln!(
            "loadgen --check: {} clients joined, {} probes delivered exactly once, no errors",
            summary.connect.connected, summary.msgs.delivered
        );
    }
    std::process::ExitCode::SUCCESS
}

/// What makes a run incorrect (for `--check`).
fn violations(s: &Summary, sending: bool) -> Vec<String> {
    let mut v = Vec::new();
    if s.connect.failed > 0 || s.connect.connected != u64::from(s.clients) {
        v.push(format!(
            "{} of {} clients joined ({:?})",
            s.connect.connected, s.clients, s.connect.failed_by_reason
        ));
    }
    let m = &s.msgs;
    if sending && m.expected == 0 {
        v.push("no probe was sent".into());
    }
    if m.lost > 0 || m.expected != m.delivered {
        v.push(format!("{} of {} probes not delivered", m.lost, m.expected));
    }
    if m.duplicated > 0 || m.unexpected > 0 {
        v.push(format!(
            "{} duplicated, {} unexpected probes",
            m.duplicated, m.unexpected
        ));
    }
    if m.unacked > 0 {
        v.push(format!("{} frames never acknowledged", m.unacked));
    }
    if !s.errors_by_code.is_empty() {
        v.push(format!("error frames {:?}", s.errors_by_code));
    }
    if s.seq_gaps > 0 || s.seq_repeats > 0 {
        v.push(format!(
            "seq gaps {}, seq repeats {}",
            s.seq_gaps, s.seq_repeats
        ));
    }
    if s.resume_failed > 0 || !s.gave_up.is_empty() {
        v.push(format!(
            "{} resumes failed, gave up {:?}",
            s.resume_failed, s.gave_up
        ));
    }
    if s.deadline_hit {
        v.push("the hard deadline was hit".into());
    }
    v
}

fn random_hex() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn run(args: &Args, nofile: u64) -> Summary {
    let started_unix_ms = client::unix_us() / 1000;
    let n = args.clients;
    let rooms = args.rooms.unwrap_or((n / 2).max(1)).clamp(1, n.max(1));
    let room_size = n.div_ceil(rooms).max(1);
    let prefix = args
        .room_prefix
        .clone()
        .unwrap_or_else(|| format!("lg-{}", random_hex()));
    let cfg = Arc::new(Config {
        mode: args.mode,
        target: args.target,
        pattern: args.pattern,
        rate: args.rate.max(0.0),
        pad: wire::pad_for(args.payload_bytes),
        ack_every: args.ack_every.max(1),
        cseq: args.cseq,
        presence_off: args.presence_off,
        drop_every: args
            .drop_every
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout.max(0.1)),
        src_base: args.src_base,
        clients_per_ip: args.clients_per_ip,
        heartbeat_override: args
            .heartbeat_ms
            .map(|ms| Duration::from_millis(ms.max(100))),
        reconnect_attempts: args.reconnect_attempts,
        id_prefix: prefix.clone(),
    });
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let connect_rate = args.connect_rate.max(1.0);
    let join_secs = f64::from(n) / connect_rate;
    let deadline_secs = args
        .deadline
        .unwrap_or(join_secs + args.connect_timeout + args.duration + args.drain_secs + 30.0);
    let t0 = Instant::now();
    let hard_deadline = t0 + Duration::from_secs_f64(deadline_secs.max(1.0));

    let progress = progress_bar(args.quiet, n);

    // Joins at the connect rate; client i is in room (first_client + i) / room_size.
    let spawner = {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let phase_rx = phase_rx.clone();
        let first = args.first_client;
        let prefix = prefix.clone();
        async move {
            let mut handles = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for i in 0..n {
                let at = t0 + Duration::from_secs_f64(f64::from(i) / connect_rate);
                tokio::time::sleep_until(at).await;
                let idx = first + i;
                let room_no = i / room_size;
                let members =
                    first + room_no * room_size..first + ((room_no + 1) * room_size).min(n);
                let c = Client::new(
                    cfg.clone(),
                    shared.clone(),
                    phase_rx.clone(),
                    idx,
                    format!("{prefix}-{room_no}"),
                    members,
                );
                handles.push(tokio::spawn(c.run()));
            }
            handles
        }
    };
    let spawn_handle = tokio::spawn(spawner);

    // Connect phase: until every client joined or failed (or the deadline).
    let settled = |s: &Shared| s.connected.load(Relaxed) + s.failed.load(Relaxed) >= u64::from(n);
    while !settled(&shared) && Instant::now() < hard_deadline {
        tokio::select! {
            () = shared.settled.notified() => {}
            () = sleep(Duration::from_millis(200)) => {}
        }
        update(&progress, &shared, "joining");
    }
    let connect_seconds = t0.elapsed().as_secs_f64();
    let proxy_port = Some(args.target.port());
    let rss_after_connect: u64 = procstat::sample(&args.server_pgid, proxy_port)
        .iter()
        .map(|p| p.rss_kib)
        .sum();
    if let Some(path) = &args.ready_file {
        let _ = std::fs::write(path, format!("{}\n", shared.connected.load(Relaxed)));
    }
    if let Some(go) = &args.go_file {
        while !go.exists() && Instant::now() < hard_deadline {
            sleep(Duration::from_millis(50)).await;
            update(&progress, &shared, "holding");
        }
    }

    // Send phase.
    let cpu_before = procstat::sample(&args.server_pgid, proxy_port);
    let own_cpu_before = procstat::own_cpu_ms();
    let send_start = Instant::now();
    let send_start_unix_ms = client::unix_us() / 1000;
    let _ = phase_tx.send(Phase::Send);
    let send_end =
        (send_start + Duration::from_secs_f64(args.duration.max(0.0))).min(hard_deadline);
    while Instant::now() < send_end {
        sleep(Duration::from_millis(100).min(send_end.saturating_duration_since(Instant::now())))
            .await;
        update(&progress, &shared, "sending");
    }
    let send_seconds = send_start.elapsed().as_secs_f64();
    let _ = phase_tx.send(Phase::Drain);
    let drain_end =
        (Instant::now() + Duration::from_secs_f64(args.drain_secs.max(0.0))).min(hard_deadline);
    // Drain: until every expected delivery arrived and every v1.1 frame could be acked, or time is up.
    while Instant::now() < drain_end {
        // `sending` first: a client still sending may yet raise `expected`.
        if shared.sending.load(std::sync::atomic::Ordering::Acquire) == 0
            && shared.delivered.load(Relaxed) >= shared.expected.load(Relaxed)
            && shared.unacked.load(Relaxed) == 0
        {
            break;
        }
        sleep(Duration::from_millis(20)).await;
        update(&progress, &shared, "draining");
    }
    let cpu_after = procstat::sample(&args.server_pgid, proxy_port);
    let own_cpu_ms = procstat::own_cpu_ms() - own_cpu_before;
    let window = send_start.elapsed().as_secs_f64();
    let _ = phase_tx.send(Phase::Stop);
    update(&progress, &shared, "closing");

    // Collect reports (bounded by the hard deadline plus a grace period for closes).
    let mut reports: Vec<Report> = Vec::new();
    let collect_until = hard_deadline.max(Instant::now()) + Duration::from_secs(5);
    let mut deadline_hit = Instant::now() >= hard_deadline;
    if let Ok(Ok(handles)) = tokio::time::timeout_at(collect_until, spawn_handle).await {
        for h in handles {
            match tokio::time::timeout_at(collect_until, h).await {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(_)) => {}
                Err(_) => deadline_hit = true,
            }
        }
    } else {
        deadline_hit = true;
    }
    progress.finish_and_clear();

    summarize(SummaryInput {
        args,
        rooms,
        started_unix_ms,
        send_start_unix_ms,
        deadline_hit,
        connect_seconds,
        send_seconds,
        window,
        reports,
        cpu_before,
        cpu_after,
        own_cpu_ms,
        rss_after_connect,
        nofile,
        sent_msgs: shared.sent.load(Relaxed),
    })
}

fn progress_bar(quiet: bool, n: u32) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(u64::from(n));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} {bar:24} {pos}/{len} joined  {msg}",
    ) {
        pb.set_style(style);
    }
    pb
}

fn update(pb: &indicatif::ProgressBar, s: &Shared, phase: &str) {
    pb.set_position(s.connected.load(Relaxed));
    pb.set_message(format!(
        "{phase}: failed {} sent {} delivered {}/{} errors {} reconnects {}",
        s.failed.load(Relaxed),
        s.sent.load(Relaxed),
        s.delivered.load(Relaxed),
        s.expected.load(Relaxed),
        s.errors.load(Relaxed),
        s.reconnects.load(Relaxed),
    ));
}

struct SummaryInput<'a> {
    args: &'a Args,
    rooms: u32,
    started_unix_ms: u64,
    send_start_unix_ms: u64,
    deadline_hit: bool,
    connect_seconds: f64,
    send_seconds: f64,
    window: f64,
    reports: Vec<Report>,
    cpu_before: Vec<procstat::ProcSample>,
    cpu_after: Vec<procstat::ProcSample>,
    own_cpu_ms: f64,
    rss_after_connect: u64,
    nofile: u64,
    sent_msgs: u64,
}

fn add(map: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *map.entry(k.clone()).or_default() += v;
    }
}

#[allow(clippy::cast_precision_loss)] // counts to rates
fn summarize(i: SummaryInput<'_>) -> Summary {
    let args = i.args;
    let mut sent: BTreeMap<ClientIdx, Sent> = BTreeMap::new();
    let mut received: BTreeMap<ClientIdx, Received> = BTreeMap::new();
    let mut lat: Vec<u32> = Vec::new();
    let mut lat_sent: Vec<u64> = Vec::new();
    let mut join: Vec<u32> = Vec::new();
    let mut failed_by_reason = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let mut rfail = BTreeMap::new();
    let mut gave_up = BTreeMap::new();
    let (
        mut reconnects,
        mut resume_failed,
        mut gaps,
        mut repeats,
        mut resent,
        mut unacked,
        mut no_peer,
    ) = (0, 0, 0, 0, 0, 0, 0);
    let mut foreign = 0;
    let mut going: Vec<GoingAway> = Vec::new();
    let mut connected = 0u64;
    let sent_msgs = i.sent_msgs;
    for mut r in i.reports {
        if let Some(reason) = r.failed.take() {
            *failed_by_reason.entry(reason).or_default() += 1;
        } else {
            connected += 1;
        }
        join.extend(r.join_us);
        lat.append(&mut r.latencies_us);
        lat_sent.append(&mut r.sent_unix_ms);
        add(&mut errors, &r.errors);
        add(&mut ends, &r.ends);
        add(&mut rfail, &r.reconnect_failures);
        if let Some(g) = r.gave_up.take() {
            *gave_up.entry(g).or_default() += 1;
        }
        reconnects += r.reconnects;
        resume_failed += r.resume_failed;
        gaps += r.seq_gaps;
        repeats += r.seq_repeats;
        resent += r.resent;
        unacked += r.unacked;
        no_peer += r.no_peer;
        foreign += r.foreign;
        going.append(&mut r.going_away);
        sent.insert(r.idx, std::mem::take(&mut r.sent));
        received.insert(r.idx, std::mem::take(&mut r.received));
    }
    let failed: u64 = failed_by_reason.values().sum();
    let missing = u64::from(args.clients).saturating_sub(connected + failed);
    if missing > 0 {
        *failed_by_reason
            .entry("no_report_before_deadline".into())
            .or_default() += missing;
    }
    let t = track::tally(&sent, &received);
    let send_s = i.send_seconds.max(1e-9);
    let first_close = going.iter().map(|g| g.closed_unix_ms).reduce(f64::min);
    let mut offsets: Vec<f64> = going
        .iter()
        .filter_map(|g| first_close.map(|f| g.reconnect_unix_ms - f))
        .collect();
    offsets.sort_by(f64::total_cmp);
    let server = (!args.server_pgid.is_empty()).then(|| {
        let processes = procstat::delta(&i.cpu_before, &i.cpu_after);
        let cpu_ms: f64 = processes.iter().map(|p| p.cpu_ms).sum();
        ServerSummary {
            window_seconds: i.window,
            cpu_us_per_delivered_msg: if t.delivered > 0 {
                cpu_ms * 1000.0 / t.delivered as f64
            } else {
                0.0
            },
            rss_kib: processes.iter().map(|p| p.rss_kib).sum(),
            rss_kib_after_connect: i.rss_after_connect,
            processes,
            cpu_ms,
        }
    });
    Summary {
        mode: args.mode,
        target: args.target,
        pattern: args.pattern,
        cseq: args.cseq,
        clients: args.clients,
        rooms: i.rooms,
        rate_per_client: args.rate,
        payload_bytes: args.payload_bytes,
        started_unix_ms: i.started_unix_ms,
        deadline_hit: i.deadline_hit,
        connect: ConnectSummary {
            connected,
            failed: failed + missing,
            failed_by_reason,
            seconds: i.connect_seconds,
            join_ms: track::percentiles(&mut join),
        },
        msgs: MsgSummary {
            send_seconds: i.send_seconds,
            sent: sent_msgs,
            expected: t.expected,
            delivered: t.delivered,
            sent_per_s: sent_msgs as f64 / send_s,
            delivered_per_s: t.delivered as f64 / send_s,
            lost: t.lost,
            duplicated: t.duplicated,
            unexpected: t.unexpected,
            resent,
            unacked,
            no_peer,
            foreign,
            all_delivered: t.lost == 0 && t.expected == t.delivered,
        },
        latency_by_second: track::by_second(&lat, &lat_sent, i.send_start_unix_ms),
        latency_ms: track::percentiles(&mut lat),
        errors_by_code: errors,
        connection_ends: ends,
        reconnects,
        reconnect_failures: rfail,
        gave_up,
        resume_failed,
        seq_gaps: gaps,
        seq_repeats: repeats,
        going_away: GoingAwaySummary {
            count: going.len() as u64,
            resumed: going.iter().filter(|g| g.resumed).count() as u64,
            first_close_unix_ms: first_close,
            reconnect_offsets_ms: offsets,
            events: if args.going_away_events {
                going
            } else {
                Vec::new()
            },
        },
        server,
        loadgen_cpu: LoadgenCpu {
            cpu_ms: i.own_cpu_ms,
            cpu_us_per_delivered_msg: if t.delivered > 0 {
                i.own_cpu_ms * 1000.0 / t.delivered as f64
            } else {
                0.0
            },
        },
        rlimit_nofile: i.nofile,
    }
}
