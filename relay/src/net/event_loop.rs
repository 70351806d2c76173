//! One event loop: an epoll set, the sockets registered in it, and the TURN core they feed.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use rustix::event::epoll;
use tracing::{debug, info, warn};

use super::batch::{self, Outbox, Receiver, Source};
use super::clock::Clock;
use super::relay_ports::RelayPorts;
use super::stream::Conn;
use super::{Control, Listeners, Shutdown, bind, redact};
use crate::http::Metrics;
use crate::turn::{Event, FiveTuple, Millis, Output, Server, Transmit, Transport};

/// Kinds of epoll registrations; the event's data is `kind << 56 | index`.
pub(super) const KIND_WAKE: u64 = 0;
pub(super) const KIND_UDP: u64 = 1;
pub(super) const KIND_ACCEPT: u64 = 2;
pub(super) const KIND_RELAY: u64 = 3;
pub(super) const KIND_CONN: u64 = 4;

/// The epoll data naming socket `index` of `kind`.
pub(super) fn token(kind: u64, index: usize) -> epoll::EventData {
    epoll::EventData::new_u64(kind << 56 | (index as u64 & ((1 << 56) - 1)))
}

/// Housekeeping (metrics, idle connections) runs this often.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Pause before accepting again after `accept` failed (e.g. out of file descriptors), instead of
/// spinning on a listener that stays ready.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A UDP listening socket.
#[derive(Debug)]
pub(super) struct UdpListener {
    pub(super) socket: UdpSocket,
    pub(super) local: SocketAddr,
}

/// A listening TCP socket, plain or TLS.
#[derive(Debug)]
pub(super) struct StreamListener {
    pub(super) listener: TcpListener,
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

/// How one loop is set up.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// This loop's number (0-based); names its waker and its metrics slot.
    pub id: usize,
    /// Addresses to listen on.
    pub listeners: Listeners,
    /// TLS configuration for the TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Share listeners with other loops (SO_REUSEPORT).
    pub reuse_port: bool,
    /// Socket buffer size for UDP sockets (0: kernel default).
    pub socket_buffer: usize,
}

/// The event loop: sockets plus the sans-IO core.
pub struct EventLoop {
    pub(super) id: usize,
    pub(super) epoll: OwnedFd,
    control: Arc<Control>,
    pub(super) server: Server,
    pub(super) relays: RelayPorts,
    pub(super) udp: Vec<UdpListener>,
    pub(super) stream_listeners: Vec<Option<StreamListener>>,
    /// When to re-arm listeners paused after an accept error.
    pub(super) accept_paused: Option<Instant>,
    pub(super) conns: Vec<Option<Conn>>,
    pub(super) free_conns: Vec<usize>,
    pub(super) conn_by_tuple: FxHashMap<FiveTuple, usize>,
    pub(super) clock: Clock,
    metrics: Arc<Metrics>,
    /// Stream read buffer.
    pub(super) buf: Vec<u8>,
    /// Datagram receive buffers, shared by every UDP socket (one is drained at a time).
    pub(super) rx: Receiver,
    /// Datagrams waiting for the end of the current batch.
    pub(super) outbox: Outbox,
    /// Relayed data for TCP/TLS clients from the current batch.
    pub(super) stream_out: Vec<Transmit>,
    pub(super) send_errors: u64,
    /// Datagrams relayed between two allocations of this loop without a system call.
    pub(super) short_circuited: u64,
    /// The core's next deadline.
    timeout: Option<Millis>,
    credentials_seen: u64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("id", &self.id)
            .field("udp", &self.udp.len())
            .field("conns", &self.conn_by_tuple.len())
            .finish_non_exhaustive()
    }
}

fn add(epoll: &OwnedFd, fd: impl std::os::fd::AsFd, data: epoll::EventData) -> io::Result<()> {
    epoll::add(epoll, fd, data, epoll::EventFlags::IN)?;
    Ok(())
}

impl EventLoop {
    /// Binds every listener and registers it; fails if any address cannot be bound.
    pub fn bind(
        config: LoopConfig,
        server: Server,
        relays: RelayPorts,
        control: Arc<Control>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let mut udp = Vec::new();
        let mut stream_listeners = Vec::new();
        for addr in &config.listeners.plain {
            let (socket, buffers, gro) =
                bind::udp_listener(*addr, config.reuse_port, config.socket_buffer)?;
            let local = socket.local_addr()?;
            if config.id == 0 {
                info!(%local, gro, "listening (UDP)");
                if buffers.recv < config.socket_buffer || buffers.send < config.socket_buffer {
                    warn!(
                        requested = config.socket_buffer,
                        recv = buffers.recv,
                        send = buffers.send,
                        "the kernel capped the UDP socket buffers; raise net.core.rmem_max and \
                         net.core.wmem_max (see docs/OPERATIONS.md)"
                    );
                } else {
                    info!(
                        recv = buffers.recv,
                        send = buffers.send,
                        "UDP socket buffers"
                    );
                }
            }
            add(&epoll, &socket, token(KIND_UDP, udp.len()))?;
            udp.push(UdpListener { socket, local });
            let listener = bind::tcp(*addr, config.reuse_port)?;
            if config.id == 0 {
                info!(local = %listener.local_addr()?, "listening (TCP)");
            }
            add(
                &epoll,
                &listener,
                token(KIND_ACCEPT, stream_listeners.len()),
            )?;
            stream_listeners.push(Some(StreamListener {
                listener,
                tls: None,
            }));
        }
        for addr in &config.listeners.tls {
            let tls = config
                .tls
                .clone()
                .ok_or_else(|| io::Error::other("--tls-listen needs --tls-cert and --tls-key"))?;
            let listener = bind::tcp(*addr, config.reuse_port)?;
            if config.id == 0 {
                info!(local = %listener.local_addr()?, "listening (TLS)");
            }
            add(
                &epoll,
                &listener,
                token(KIND_ACCEPT, stream_listeners.len()),
            )?;
            stream_listeners.push(Some(StreamListener {
                listener,
                tls: Some(tls),
            }));
        }
        if let Some(w) = control.waker(config.id) {
            add(&epoll, w, token(KIND_WAKE, 0))?;
        }
        let rx = Receiver::new()?;
        if config.id == 0 {
            // 1: no UDP_SEGMENT here, every datagram is its own send.
            info!(segments = rx.gso_segments(), "UDP GSO");
        }
        Ok(Self {
            id: config.id,
            epoll,
            control,
            server,
            relays,
            udp,
            stream_listeners,
            accept_paused: None,
            conns: Vec::new(),
            free_conns: Vec::new(),
            conn_by_tuple: FxHashMap::default(),
            clock: Clock::default(),
            metrics,
            buf: vec![0; 65_536],
            rx,
            outbox: Outbox::default(),
            stream_out: Vec::new(),
            send_errors: 0,
            short_circuited: 0,
            timeout: None,
            credentials_seen: 0,
        })
    }

    /// Runs until [`Control::request`] asks to stop. [`Shutdown::Drain`] stops taking new
    /// allocations and TCP/TLS connections, keeps serving the existing allocations, and returns
    /// once none is left or `drain_timeout` has passed (at once if it is zero);
    /// [`Shutdown::Now`] returns at once.
    ///
    /// The loop is handed back: its UDP listeners must stay open until every loop of the
    /// process has stopped, because closing one would change how SO_REUSEPORT spreads clients
    /// over the remaining loops and send clients of a loop still draining to another.
    pub fn run(mut self, drain_timeout: Duration) -> Self {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut drain_deadline: Option<Instant> = None;
        let mut drained = false;
        let now = self.clock.now();
        self.after_input(now);
        loop {
            match self.control.shutdown() {
                Shutdown::Run => {}
                Shutdown::Drain if drain_timeout.is_zero() => {
                    info!("drain timeout is 0: stopping at once");
                    break;
                }
                Shutdown::Drain => {
                    if drain_deadline.is_none() {
                        drain_deadline = Some(self.start_draining(drain_timeout));
                    }
                }
                Shutdown::Now => {
                    if drain_deadline.is_some() {
                        info!(
                            allocations = self.server.allocation_count(),
                            "second signal: stopping at once"
                        );
                    }
                    break;
                }
            }
            if let Some(c) = self.control.credentials_since(&mut self.credentials_seen) {
                if self.id == 0 {
                    info!(
                        secrets = c.secrets.len(),
                        users = c.users.len(),
                        "credentials reloaded"
                    );
                }
                self.server.set_credentials(c);
            }
            if drain_deadline.is_some() && self.server.allocation_count() == 0 {
                if !drained {
                    drained = true;
                    self.control.mark_drained();
                }
                if self.control.all_drained() {
                    info!("drain complete: no allocations left");
                    break;
                }
            }
            let instant = Instant::now();
            if drain_deadline.is_some_and(|d| instant >= d) {
                info!(
                    allocations = self.server.allocation_count(),
                    "drain timeout reached: stopping"
                );
                break;
            }
            if instant >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = instant + HOUSEKEEPING;
            }
            if self.accept_paused.is_some_and(|t| instant >= t) {
                self.resume_accepting();
            }
            let now = self.clock.now();
            if self.timeout.is_some_and(|t| t <= now) {
                self.server.handle_timeout(now);
                self.after_input(now);
                self.flush();
            }
            // Sleep until the first of: a socket is ready, the core's deadline, housekeeping,
            // the drain deadline, re-arming paused listeners.
            let mut wait = next_housekeeping.saturating_duration_since(instant);
            for t in [drain_deadline, self.accept_paused].into_iter().flatten() {
                wait = wait.min(t.saturating_duration_since(instant));
            }
            if let Some(t) = self.timeout {
                wait = wait.min(t.duration_since(now));
            }
            let timeout = rustix::event::Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    warn!(error = %e, "epoll_wait failed; stopping the loop");
                    break;
                }
            }
            for event in &events {
                self.on_ready(event.data.u64());
            }
        }
        info!(
            allocations = self.server.allocation_count(),
            "shutting down"
        );
        self.housekeeping();
        self
    }

    fn on_ready(&mut self, data: u64) {
        let index = usize::try_from(data & ((1 << 56) - 1)).unwrap_or(usize::MAX);
        match data >> 56 {
            KIND_WAKE => {
                if let Some(w) = self.control.waker(self.id) {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(w, &mut b);
                }
            }
            KIND_UDP => self.drain_datagrams(Source::Listener(index)),
            KIND_RELAY => self.drain_datagrams(Source::Relay(index)),
            KIND_ACCEPT => self.accept(index),
            KIND_CONN => self.conn_ready(index),
            _ => {}
        }
    }

    /// Enters draining: the core refuses new allocations, the TCP/TLS listeners close (existing
    /// connections stay), and the metrics say so. Returns the drain deadline.
    fn start_draining(&mut self, timeout: Duration) -> Instant {
        self.server.start_draining();
        // Closing a listener removes it from the epoll set.
        self.stream_listeners.clear();
        self.metrics.set_draining(true);
        self.housekeeping();
        let deadline_unix = SystemTime::now()
            .checked_add(timeout)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        info!(
            allocations = self.server.allocation_count(),
            timeout_s = timeout.as_secs(),
            deadline_unix,
            "draining: refusing new allocations and connections"
        );
        Instant::now() + timeout
    }

    /// Delivers relayed data for stream clients, sends the datagrams queued while handling
    /// input, then closes released relay sockets.
    pub(super) fn flush(&mut self) {
        for t in std::mem::take(&mut self.stream_out) {
            if let Transmit::Client {
                five_tuple,
                payload,
            } = t
            {
                match five_tuple.transport {
                    Transport::Udp => match self.listener_of(five_tuple.server) {
                        // A short-circuited datagram from a TCP client to a UDP one.
                        Some(i) => {
                            self.outbox
                                .push_owned(Source::Listener(i), five_tuple.client, payload);
                        }
                        None => self.send_errors += 1,
                    },
                    Transport::Tcp | Transport::Tls => self.write_to_client(five_tuple, &payload),
                }
            }
        }
        if !self.outbox.is_empty() {
            let (udp, relays) = (&self.udp, &self.relays);
            self.send_errors += self.outbox.flush(&self.rx, |s| match s {
                Source::Listener(i) => udp.get(i).map(|l| &l.socket),
                Source::Relay(i) => relays.get(i).map(|r| &r.socket),
            });
        }
        self.relays.close_released();
    }

    /// The listener a UDP 5-tuple's server address belongs to (a handful at most, so a scan).
    pub(super) fn listener_of(&self, server: SocketAddr) -> Option<usize> {
        self.udp.iter().position(|l| l.local == server)
    }

    /// Performs what the core asked for until it has nothing more; new relay sockets are
    /// registered once, here.
    pub(super) fn after_input(&mut self, now: Millis) {
        loop {
            match self.server.poll_output() {
                Output::Transmit(Transmit::Client {
                    five_tuple,
                    payload,
                }) => match five_tuple.transport {
                    Transport::Udp => match self.listener_of(five_tuple.server) {
                        Some(i) => {
                            self.outbox
                                .push_owned(Source::Listener(i), five_tuple.client, payload);
                        }
                        None => self.send_errors += 1,
                    },
                    Transport::Tcp | Transport::Tls => {
                        self.write_to_client(five_tuple, &payload);
                    }
                },
                Output::Transmit(Transmit::Peer {
                    relay,
                    peer,
                    payload,
                }) => match self.relays.slot_of(&relay) {
                    Some(slot) => self.outbox.push_owned(Source::Relay(slot), peer, payload),
                    None => self.send_errors += 1,
                },
                Output::BindRelay {
                    id,
                    request,
                    dont_fragment,
                } => {
                    let result = self.relays.bind_for(request, dont_fragment);
                    self.server.handle_relay_bound(id, result, now);
                }
                Output::ReleaseRelay(addr) => self.relays.release(addr),
                // The one log line of each (the core logs neither).
                Output::Event(Event::AllocationCreated {
                    five_tuple,
                    relay,
                    trace_id,
                    lifetime,
                }) => {
                    debug!(
                        trace_id = trace_id.map(|t| tracing::field::display(format!("{t:016x}"))),
                        client = %redact(five_tuple.client),
                        transport = ?five_tuple.transport,
                        %relay,
                        lifetime_s = lifetime.as_secs(),
                        event_loop = self.id,
                        "allocation created"
                    );
                }
                Output::Event(Event::AllocationDeleted {
                    five_tuple,
                    relay,
                    reason,
                    trace_id,
                }) => {
                    debug!(
                        trace_id = trace_id.map(|t| tracing::field::display(format!("{t:016x}"))),
                        client = %redact(five_tuple.client),
                        %relay,
                        %reason,
                        event_loop = self.id,
                        "allocation deleted"
                    );
                }
                Output::Timeout(t) => {
                    self.timeout = t;
                    break;
                }
            }
        }
        for slot in std::mem::take(&mut self.relays.unwatched) {
            if let Some(r) = self.relays.get(slot)
                && let Err(e) = add(&self.epoll, &r.socket, token(KIND_RELAY, slot))
            {
                warn!(error = %e, "cannot watch a relay socket");
            }
        }
    }

    fn housekeeping(&mut self) {
        self.close_idle_connections();
        self.metrics.publish_loop(
            self.id,
            self.server.stats(),
            self.server.allocation_count(),
            self.conn_by_tuple.len(),
            self.send_errors,
        );
        self.metrics
            .publish_short_circuited(self.id, self.short_circuited);
    }

    /// Datagrams per receive call, exposed for the drain loop.
    pub(super) const fn batch() -> usize {
        batch::BATCH
    }
}
