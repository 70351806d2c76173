//! SFU forwarding cost, against a direct str0m <-> str0m connection measured in the same run.
//!
//! - DataChannel over loopback UDP: two str0m peers busy-polled by the bench thread, connected
//!   directly, then through the relay's SFU thread (`sfu::shell`, its own socket and event loop,
//!   as the binary runs it). One-way wall-time latency p50/p99 of single 200-byte messages, and
//!   messages/s for a burst. The difference is the latency the relay adds. Every socket (the
//!   relay's, with the binary's default `--socket-buffer`, and the clients') has 4 MiB of buffer;
//!   the datagrams the kernel still dropped at full receive buffers during each burst are
//!   printed (each costs an SCTP retransmission, at worst a 1 s timeout: they decide burst rates;
//!   docs/BENCHMARKS.md, "Relay SFU").
//! - DataChannel in process (no sockets): the same, with the `Sfu` core on an in-memory network;
//!   this isolates the CPU cost of forwarding from the kernel and thread wake-ups (latency only;
//!   throughput in virtual time would measure the bench's clock steps).
//! - Media: one publisher at 500 kbit/s video (VP8-sized frames at 30 fps) and N subscribers;
//!   frames forwarded per CPU-second of the core, and the share of a core per session.
//! - Memory: live heap bytes the core holds per session, opened and connected-idle (a counting
//!   global allocator; the clients are dropped before counting); then the CPU the core spends on
//!   those idle sessions' timers (ICE, SCTP, BWE pacing) per session and second.
//!
//! `cargo bench -p switchboard-relay --bench sfu_forwarding` (SFU_BENCH_SMOKE=1 for a short run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark: failures should be loud"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
use switchboard_proto::sfu_token::Claims;
use switchboard_proto::{PeerId, RoomName};
use switchboard_relay::sfu::core::CONTROL_LABEL;
use switchboard_relay::sfu::{Output, Sfu, SfuConfig};

const RELAY: &str = "10.0.0.1:5000";

#[path = "shared/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live;

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    chat: Option<ChannelId>,
    control: Option<ChannelId>,
    video: Option<Mid>,
    received: usize,
    frames: usize,
}

fn client(
    port: u16,
    video: bool,
    now: Instant,
) -> (Client, String, str0m::change::SdpPendingOffer) {
    let mut rtc = Rtc::builder()
        .set_sctp_max_buffered_amount(1 << 20)
        .build(now);
    let addr: SocketAddr = format!("10.0.{}.{}:{}", port / 250, port % 250 + 2, 6000)
        .parse()
        .unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_channel("chat".into());
    change.add_channel(CONTROL_LABEL.into());
    let video =
        video.then(|| change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
    let (offer, pending) = change.apply().unwrap();
    let c = Client {
        rtc,
        addr,
        chat: None,
        control: None,
        video,
        received: 0,
        frames: 0,
    };
    (c, offer.to_sdp_string(), pending)
}

fn feed(rtc: &mut Rtc, t: &Transmit, now: Instant) {
    let input = Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: t.source,
            destination: t.destination,
            contents: (&*t.contents).try_into().unwrap(),
        },
    );
    rtc.handle_input(input).unwrap();
}

/// Drains a client, handing its datagrams to `out`.
fn poll(c: &mut Client, out: &mut Vec<Transmit>) {
    loop {
        match c.rtc.poll_output().unwrap() {
            RtcOutput::Timeout(_) => return,
            RtcOutput::Transmit(t) => out.push(t),
            RtcOutput::Event(Event::ChannelOpen(id, l)) => {
                if l == "chat" {
                    c.chat = Some(id);
                } else {
                    c.control = Some(id);
                }
            }
            RtcOutput::Event(Event::ChannelData(d)) => {
                if Some(d.id) == c.control {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    let offer =
                        str0m::change::SdpOffer::from_sdp_string(v["sdp"].as_str().unwrap())
                            .unwrap();
                    let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                    let reply = serde_json::json!({"type":"answer","sdp":answer.to_sdp_string()})
                        .to_string();
                    let id = c.control.unwrap();
                    let _ = c
                        .rtc
                        .channel(id)
                        .unwrap()
                        .write(false, reply.as_bytes())
                        .unwrap();
                } else {
                    c.received += 1;
                }
            }
            RtcOutput::Event(Event::MediaData(_)) => c.frames += 1,
            RtcOutput::Event(_) => {}
        }
    }
}

/// The relay core and its clients, stepped until quiet.
struct Room {
    sfu: Sfu,
    clients: Vec<Client>,
    now: Instant,
}

impl Room {
    fn new(max: usize) -> Room {
        Room {
            sfu: Sfu::new(SfuConfig {
                candidates: vec![RELAY.parse().unwrap()],
                tcp_candidates: Vec::new(),
                max_sessions: max,
                max_queue_bytes: 64 << 20,
            }),
            clients: Vec::new(),
            now: Instant::now(),
        }
    }

    fn join(&mut self, video: bool) -> usize {
        let i = self.clients.len();
        let (mut c, offer, pending) = client(i as u16, video, self.now);
        let claims = Claims {
            room: RoomName::parse("bench").unwrap(),
            peer_id: PeerId::parse(&format!("p{i}")).unwrap(),
            exp: u64::MAX,
        };
        let mut rnd = [0u8; 32];
        rnd[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        rnd[16..24].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let (_, answer) = self
            .sfu
            .handle_offer(&claims, &offer, rnd, self.now)
            .unwrap();
        c.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        self.clients.push(c);
        let end = self.now + Duration::from_secs(10);
        while self.clients[i].chat.is_none() || self.clients[i].control.is_none() {
            assert!(self.now < end, "client {i} never connected");
            self.step(Duration::from_millis(5));
        }
        i
    }

    /// Advances time by `dt` and moves datagrams until nothing is in flight.
    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        self.sfu.handle_timeout(now);
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        self.settle();
    }

    fn settle(&mut self) {
        let now = self.now;
        let mut to_relay = Vec::new();
        loop {
            for c in &mut self.clients {
                poll(c, &mut to_relay);
            }
            let moved = !to_relay.is_empty();
            for t in to_relay.drain(..) {
                self.sfu
                    .handle_datagram(Protocol::Udp, t.source, t.destination, &t.contents, now);
            }
            let mut any = false;
            loop {
                match self.sfu.poll_output() {
                    Output::Transmit(t) => {
                        any = true;
                        if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                            feed(&mut c.rtc, &t, now);
                            poll(c, &mut to_relay);
                        }
                    }
                    Output::Closed(..) => {}
                    Output::Timeout(_) | Output::Idle => break,
                }
            }
            if !moved && !any && to_relay.is_empty() {
                return;
            }
        }
    }
}

/// Two clients connected directly, no relay.
struct Direct {
    a: Client,
    b: Client,
    now: Instant,
}

impl Direct {
    fn new() -> Direct {
        let now = Instant::now();
        let (mut a, offer, pending) = client(0, false, now);
        let (mut b, _, _) = client(1, false, now);
        let answer = b
            .rtc
            .sdp_api()
            .accept_offer(str0m::change::SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap();
        a.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let mut d = Direct { a, b, now };
        let end = now + Duration::from_secs(10);
        while d.b.chat.is_none() || d.a.chat.is_none() {
            assert!(d.now < end, "direct peers never connected");
            d.step(Duration::from_millis(5));
        }
        d
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        for c in [&mut self.a, &mut self.b] {
            c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
        }
        self.settle();
    }

    fn settle(&mut self) {
        let now = self.now;
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        poll(&mut self.a, &mut to_b);
        poll(&mut self.b, &mut to_a);
        // str0m wants its outputs drained after every input.
        while !to_a.is_empty() || !to_b.is_empty() {
            for t in std::mem::take(&mut to_b) {
                feed(&mut self.b.rtc, &t, now);
                poll(&mut self.b, &mut to_a);
            }
            for t in std::mem::take(&mut to_a) {
                feed(&mut self.a.rtc, &t, now);
                poll(&mut self.a, &mut to_b);
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// In process, virtual time: CPU cost only (message throughput is measured over loopback,
/// where time is real).
fn datachannel(samples: usize) {
    let msg = vec![0x5a; 200];
    // Direct.
    let mut d = Direct::new();
    let mut direct = Vec::with_capacity(samples);
    for _ in 0..samples {
        let want = d.b.received + 1;
        let t0 = Instant::now();
        let id = d.a.chat.unwrap();
        assert!(d.a.rtc.channel(id).unwrap().write(true, &msg).unwrap());
        d.settle();
        direct.push(t0.elapsed());
        assert_eq!(d.b.received, want);
        d.step(Duration::from_millis(1));
    }

    // Through the relay core.
    let mut r = Room::new(10);
    let a = r.join(false);
    let b = r.join(false);
    let mut relayed = Vec::with_capacity(samples);
    for _ in 0..samples {
        let want = r.clients[b].received + 1;
        let t0 = Instant::now();
        let id = r.clients[a].chat.unwrap();
        assert!(
            r.clients[a]
                .rtc
                .channel(id)
                .unwrap()
                .write(true, &msg)
                .unwrap()
        );
        r.settle();
        relayed.push(t0.elapsed());
        assert_eq!(r.clients[b].received, want);
        r.step(Duration::from_millis(1));
    }

    direct.sort();
    relayed.sort();
    println!(
        "DataChannel, 200-byte binary messages, one way, CPU time in process ({samples} samples):"
    );
    println!(
        "  {:<28} p50 {:>7.1} us   p99 {:>7.1} us",
        "direct str0m<->str0m",
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99)),
    );
    println!(
        "  {:<28} p50 {:>7.1} us   p99 {:>7.1} us",
        "through the SFU core",
        us(percentile(&relayed, 0.5)),
        us(percentile(&relayed, 0.99)),
    );
    println!(
        "  added by the relay:          p50 {:>7.1} us   p99 {:>7.1} us",
        us(percentile(&relayed, 0.5)) - us(percentile(&direct, 0.5)),
        us(percentile(&relayed, 0.99)) - us(percentile(&direct, 0.99))
    );
}

fn media(subscribers: usize, seconds: u64) {
    let mut r = Room::new(subscribers + 1);
    let publisher = r.join(true);
    for _ in 0..subscribers {
        r.join(false);
    }
    // Let renegotiation finish for every subscriber.
    for _ in 0..400 {
        r.step(Duration::from_millis(5));
    }
    let mid = r.clients[publisher].video.unwrap();
    let pt = {
        let w = r.clients[publisher].rtc.writer(mid).unwrap();
        w.payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt()
    };
    // 500 kbit/s at 30 fps: ~2,083-byte frames.
    let mut frame = vec![0x10, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
    frame.resize(500_000 / 8 / 30, 0x55);
    let before = r.sfu.stats().media_frames_forwarded;
    let frames_before: usize = r.clients.iter().map(|c| c.frames).sum();
    let mut core = Duration::ZERO;
    let total = Instant::now();
    for n in 0..(seconds * 30) {
        let now = r.now;
        let w = r.clients[publisher].rtc.writer(mid).unwrap();
        w.write(pt, now, MediaTime::from_90khz(n * 3000), frame.clone())
            .unwrap();
        // Time only the relay core: feed the publisher's datagrams and the subscribers' feedback.
        // The frame interval is walked in 1 ms steps, as the SFU thread's timer (tokio, 1 ms
        // resolution) wakes the core for its pacers and retransmissions.
        for step in 0..33u64 {
            let mut to_relay = Vec::new();
            r.now += if step == 32 {
                Duration::from_micros(1_333)
            } else {
                Duration::from_millis(1)
            };
            let now = r.now;
            for c in &mut r.clients {
                c.rtc.handle_input(Input::Timeout(now)).unwrap();
                poll(c, &mut to_relay);
            }
            let t0 = Instant::now();
            r.sfu.handle_timeout(now);
            for t in &to_relay {
                r.sfu
                    .handle_datagram(Protocol::Udp, t.source, t.destination, &t.contents, now);
            }
            let mut out = Vec::new();
            loop {
                match r.sfu.poll_output() {
                    Output::Transmit(t) => out.push(t),
                    Output::Closed(..) => {}
                    Output::Timeout(_) | Output::Idle => break,
                }
            }
            core += t0.elapsed();
            for t in &out {
                if let Some(c) = r.clients.iter_mut().find(|c| c.addr == t.destination) {
                    feed(&mut c.rtc, t, now);
                }
            }
            r.settle();
        }
    }
    // Untimed: what the pacers still hold reaches the subscribers.
    let wall = total.elapsed();
    for _ in 0..300 {
        r.step(Duration::from_millis(1));
    }
    let forwarded = r.sfu.stats().media_frames_forwarded - before;
    let received: usize = r.clients.iter().map(|c| c.frames).sum::<usize>() - frames_before;
    let per_s = forwarded as f64 / core.as_secs_f64();
    let sessions = subscribers + 1;
    let core_share = core.as_secs_f64() / seconds as f64;
    println!(
        "Media, 1 publisher at 500 kbit/s VP8 30 fps, {subscribers} subscribers, {seconds} s of media: \
         {forwarded} frames forwarded ({received} decoded by subscribers), core CPU {:.1} ms \
         ({:.2} % of a core), {:.0} frames/s per core, ~{:.0} such sessions per core \
         (bench wall time {:.1} s)",
        core.as_secs_f64() * 1e3,
        core_share * 100.0,
        per_s,
        sessions as f64 / core_share,
        wall.as_secs_f64()
    );
}

/// Heap the core holds per session: sessions opened (offer accepted), then connected (ICE, DTLS,
/// SCTP up, two DataChannels open) and idle, with the clients dropped before counting.
fn memory(n: usize) {
    let mut r = Room::new(n);
    let now = r.now;
    let offers: Vec<String> = (0..n)
        .map(|i| client(i as u16 + 1000, true, now).1)
        .collect();
    let before_open = live();
    for (i, offer) in offers.iter().enumerate() {
        let claims = Claims {
            room: RoomName::parse(&format!("r{}", i / 4)).unwrap(),
            peer_id: PeerId::parse(&format!("q{i}")).unwrap(),
            exp: u64::MAX,
        };
        let mut rnd = [0u8; 32];
        rnd[..8].copy_from_slice(&(i as u64 + 1_000_000).to_be_bytes());
        rnd[16..24].copy_from_slice(&(i as u64 + 1_000_000).to_be_bytes());
        r.sfu.handle_offer(&claims, offer, rnd, now).unwrap();
    }
    while !matches!(r.sfu.poll_output(), Output::Timeout(_) | Output::Idle) {}
    let opened = live() - before_open;
    drop(offers);
    drop(r);
    let mut r = Room::new(n);
    let start = live();
    for _ in 0..n {
        r.join(false);
    }
    r.clients.clear();
    while !matches!(r.sfu.poll_output(), Output::Timeout(_) | Output::Idle) {}
    let connected = live() - start;
    assert_eq!(r.sfu.session_count(), n);
    println!(
        "Memory (live heap held by the core): {n} sessions opened, not connected: {:.1} KiB per session; \
         {n} sessions connected and idle (2 DataChannels each): {:.1} KiB per session",
        opened as f64 / n as f64 / 1024.0,
        connected as f64 / n as f64 / 1024.0
    );
    // Idle cost: the core's own timers (str0m's ICE, SCTP, BWE/pacer) for these sessions over
    // 10 s of virtual time, nothing arriving (well within the 15 s ICE consent lifetime).
    let mut now = r.now;
    let end = now + Duration::from_secs(10);
    let (mut wakeups, mut iterations) = (0u64, 0u64);
    let t0 = Instant::now();
    while iterations < 50_000_000 {
        iterations += 1;
        match r.sfu.poll_output() {
            Output::Timeout(t) if t < end => {
                now = t.max(now);
                r.sfu.handle_timeout(now);
                wakeups += 1;
            }
            Output::Timeout(_) | Output::Idle => break,
            Output::Transmit(_) | Output::Closed(..) => {}
        }
    }
    let cpu = t0.elapsed();
    assert_eq!(r.sfu.session_count(), n, "idle sessions stay");
    let per_session_per_s = cpu.as_secs_f64() / n as f64 / 10.0;
    println!(
        "Idle (connected, nothing sent), {n} sessions, 10 s of virtual time: {} core wake-ups \
         (one per {:.1} ms, each handling every session then due), core CPU {:.1} ms: \
         {:.1} us per session per second, ~{:.0} idle sessions per core",
        wakeups,
        10_000.0 / wakeups.max(1) as f64,
        cpu.as_secs_f64() * 1e3,
        per_session_per_s * 1e6,
        1.0 / per_session_per_s
    );
}

/// SO_RCVBUF/SO_SNDBUF of the bench's client sockets, as the relay's default `--socket-buffer`.
const CLIENT_SOCKET_BUFFER: usize = 4 << 20;

/// A str0m peer on a real loopback UDP socket, pumped by the bench thread (busy polling).
struct UdpPeer {
    c: Client,
    socket: std::net::UdpSocket,
}

impl UdpPeer {
    fn new(video: bool) -> (UdpPeer, String, str0m::change::SdpPendingOffer) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        // One thread polls both peers: while it serves one, the other's socket must hold what
        // arrives (a browser reads on its own network thread). With the kernel's default buffer
        // the datagrams lost there, each an SCTP retransmission, decided the burst rates.
        rustix::net::sockopt::set_socket_recv_buffer_size(&socket, CLIENT_SOCKET_BUFFER).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&socket, CLIENT_SOCKET_BUFFER).unwrap();
        let addr = socket.local_addr().unwrap();
        let now = Instant::now();
        let mut rtc = Rtc::builder()
            .set_sctp_max_buffered_amount(1 << 20)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        change.add_channel("chat".into());
        let video = video
            .then(|| change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
        let (offer, pending) = change.apply().unwrap();
        let c = Client {
            rtc,
            addr,
            chat: None,
            control: None,
            video,
            received: 0,
            frames: 0,
        };
        (UdpPeer { c, socket }, offer.to_sdp_string(), pending)
    }

    fn pump(&mut self) {
        let mut out = Vec::new();
        self.c
            .rtc
            .handle_input(Input::Timeout(Instant::now()))
            .unwrap();
        poll(&mut self.c, &mut out);
        let mut buf = [0u8; 2048];
        loop {
            for t in out.drain(..) {
                let _ = self.socket.send_to(&t.contents, t.destination);
            }
            let Ok((n, source)) = self.socket.recv_from(&mut buf) else {
                return;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.c.addr,
                    contents: (&buf[..n]).try_into().unwrap(),
                },
            );
            self.c.rtc.handle_input(input).unwrap();
            poll(&mut self.c, &mut out);
        }
    }
}

/// UDP datagrams the kernel dropped because a socket's receive buffer was full (`RcvbufErrors`
/// of /proc/net/snmp, counted per network namespace); `None` where it cannot be read.
fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// One-way latency and throughput of 200-byte messages a -> b over loopback UDP, and the
/// datagrams lost to full receive buffers during the burst.
fn measure(
    a: &mut UdpPeer,
    b: &mut UdpPeer,
    samples: usize,
    burst: usize,
) -> (Vec<Duration>, f64, Option<u64>) {
    let end = Instant::now() + Duration::from_secs(15);
    while a.c.chat.is_none() || b.c.chat.is_none() {
        assert!(Instant::now() < end, "peers never connected");
        a.pump();
        b.pump();
    }
    let msg = vec![0x5a; 200];
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let want = b.c.received + 1;
        let id = a.c.chat.unwrap();
        let t0 = Instant::now();
        assert!(a.c.rtc.channel(id).unwrap().write(true, &msg).unwrap());
        while b.c.received < want {
            assert!(t0.elapsed() < Duration::from_secs(5), "message lost");
            a.pump();
            b.pump();
        }
        lat.push(t0.elapsed());
        // Let acks settle between samples.
        let pause = Instant::now();
        while pause.elapsed() < Duration::from_micros(300) {
            a.pump();
            b.pump();
        }
    }
    let start = b.c.received;
    let dropped_before = rcvbuf_errors();
    let t0 = Instant::now();
    let mut sent = 0;
    while b.c.received < start + burst {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "burst never completed"
        );
        let id = a.c.chat.unwrap();
        while sent < burst && a.c.rtc.channel(id).unwrap().write(true, &msg).unwrap() {
            sent += 1;
        }
        a.pump();
        b.pump();
    }
    let rate = burst as f64 / t0.elapsed().as_secs_f64();
    let dropped = rcvbuf_errors()
        .zip(dropped_before)
        .map(|(n, m)| n.saturating_sub(m));
    lat.sort();
    (lat, rate, dropped)
}

fn datachannel_loopback(samples: usize, burst: usize) {
    use switchboard_relay::sfu::shell::{self, Command};
    // Direct.
    let (mut a, offer, pending) = UdpPeer::new(false);
    let (mut b, _, _) = UdpPeer::new(false);
    let answer =
        b.c.rtc
            .sdp_api()
            .accept_offer(str0m::change::SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap();
    a.c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    let (direct, direct_rate, direct_dropped) = measure(&mut a, &mut b, samples, burst);

    // Through the relay's SFU thread (its own socket and event loop, as in the binary).
    // With the binary's default --socket-buffer (4 MiB), as the clients' sockets.
    let socket = shell::bind("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
    let addr = socket.local_addr().unwrap();
    let handle = shell::spawn(
        socket,
        None,
        SfuConfig {
            candidates: vec![addr],
            tcp_candidates: Vec::new(),
            max_sessions: 10,
            max_queue_bytes: 64 << 20,
        },
    )
    .unwrap();
    let join = |peer: &str| {
        let (mut p, offer, pending) = UdpPeer::new(false);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let claims = Claims {
            room: RoomName::parse("bench").unwrap(),
            peer_id: PeerId::parse(peer).unwrap(),
            exp: u64::MAX,
        };
        assert!(handle.try_send(Command::Offer {
            claims,
            sdp: offer,
            reply: tx
        }));
        let (_, answer) = rx.blocking_recv().unwrap().unwrap();
        p.c.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        p
    };
    let mut a = join("a");
    let mut b = join("b");
    let (relayed, relay_rate, relay_dropped) = measure(&mut a, &mut b, samples, burst);
    println!(
        "DataChannel over loopback UDP, 200-byte messages, one way, wall time ({samples} samples):"
    );
    println!(
        "  {:<28} p50 {:>7.1} us   p99 {:>7.1} us   {:>8.0} msg/s (burst of {burst})",
        "direct str0m<->str0m",
        us(percentile(&direct, 0.5)),
        us(percentile(&direct, 0.99)),
        direct_rate
    );
    println!(
        "  {:<28} p50 {:>7.1} us   p99 {:>7.1} us   {:>8.0} msg/s",
        "through the relay SFU",
        us(percentile(&relayed, 0.5)),
        us(percentile(&relayed, 0.99)),
        relay_rate
    );
    println!(
        "  added by the relay:          p50 {:>7.1} us   p99 {:>7.1} us",
        us(percentile(&relayed, 0.5)) - us(percentile(&direct, 0.5)),
        us(percentile(&relayed, 0.99)) - us(percentile(&direct, 0.99))
    );
    let shown = |d: Option<u64>| d.map_or("?".to_owned(), |n| n.to_string());
    println!(
        "  datagrams lost to full socket receive buffers during the burst: direct {}, relayed {} \
         (each costs an SCTP retransmission and a congestion-window cut)",
        shown(direct_dropped),
        shown(relay_dropped)
    );
    // Where the added time goes: the relay's own histogram (a datagram's receipt to the sending
    // of everything it caused, inside the SFU thread) against the wall time above, whose rest is
    // the kernel and the SFU thread's wake-up (scheduling on a shared box).
    std::thread::sleep(Duration::from_millis(1_100)); // published once a second
    let text = handle.metrics.render();
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("switchboard_relay_sfu_forward_latency_seconds_bucket{le=\"")
        })
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((le.to_owned(), n.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0, |(_, n)| *n);
    let within = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n as f64 >= q * total as f64)
            .map_or("?".to_owned(), |(le, _)| le.clone())
    };
    println!(
        "  inside the SFU thread (its forward-latency histogram, {total} datagrams): \
         p50 <= {} s, p99 <= {} s",
        within(0.5),
        within(0.99)
    );
}

fn main() {
    let smoke = std::env::var_os("SFU_BENCH_SMOKE").is_some();
    let (samples, burst, subs, secs, idle) = if smoke {
        (200, 1000, 3, 2, 50)
    } else {
        (3000, 20000, 20, 10, 200)
    };
    datachannel_loopback(samples, burst);
    datachannel(samples);
    media(subs, secs);
    memory(idle);
}
