//! The IO shell: one event loop owns every socket and the TURN core. Sockets are watched through
//! per-socket readiness futures in a single `FuturesUnordered`, so a wake-up names the socket that
//! is ready and the loop drains it in batches (`recvmmsg`) until it would block, then flushes what
//! the core produced with one `sendmmsg` per socket — no task per allocation and no lock on the
//! packet path.

pub mod batch;
pub mod bind;
pub mod relay_ports;

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use relay_ports::{PortRange, RelayPorts};

use crate::http::Metrics;
use crate::stun::channel_data::{Frame, next_frame};
use crate::turn::{Credentials, Event, FiveTuple, Server, Timestamp, Transmit, Transport};

/// Stream reads, and batched UDP datagrams, taken from one socket before other sockets get a turn.
const RECV_BATCH: usize = 64;
/// `recvmmsg` calls per UDP wake-up: about [`RECV_BATCH`] datagrams.
const RECV_CALLS: usize = RECV_BATCH.div_ceil(batch::BATCH);
/// Stream bytes buffered for a slow TCP client before relayed data is dropped.
const MAX_TCP_BACKLOG: usize = 1 << 20;
/// RFC 8656 §5: a connection without an allocation is closed after a while.
const TCP_IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
/// Pause before accepting again after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Open client TCP/TLS connections at most.
const MAX_TCP_CONNECTIONS: usize = 10_000;

/// Redacts a client address for logs: the host part is dropped (/24 for IPv4, /48 for IPv6).
pub fn redact(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{c}.x")
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
    }
}

/// Wall clock as [`Timestamp`], never going backwards.
#[derive(Debug, Default)]
struct Clock {
    last: Timestamp,
}

impl Clock {
    fn now(&mut self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last = self.last.max(Timestamp::from_millis(ms));
        self.last
    }
}

/// Which socket became ready.
#[derive(Debug)]
enum Ready {
    Udp(usize),
    Relay(SocketAddr),
    TcpRead(u64),
    TcpWrite(u64),
    Accept(usize, io::Result<(TcpStream, SocketAddr)>),
    Cancelled,
}

type ReadyFuture = Pin<Box<dyn Future<Output = Ready> + Send>>;

fn abortable(fut: impl Future<Output = Ready> + Send + 'static) -> (ReadyFuture, AbortHandle) {
    let (handle, reg) = AbortHandle::new_pair();
    let fut = Abortable::new(fut, reg);
    (
        Box::pin(async move { fut.await.unwrap_or(Ready::Cancelled) }),
        handle,
    )
}

/// A client TCP or TLS connection.
struct Conn {
    stream: Arc<TcpStream>,
    five_tuple: FiveTuple,
    tls: Option<Box<rustls::ServerConnection>>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    read_abort: Option<AbortHandle>,
    write_abort: Option<AbortHandle>,
    last_activity: Instant,
}

/// A UDP listening socket: tokio for readiness; receives and sends are batched system calls.
struct UdpListener {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
}

/// A listening TCP socket, plain or TLS.
struct StreamListener {
    listener: Arc<TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Cancels the pending accept, which holds the other reference to the listener.
    accept_abort: Option<AbortHandle>,
}

/// What the signal handler asks of the event loop, in escalating order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shutdown {
    /// Keep serving.
    #[default]
    Run,
    /// Graceful shutdown: refuse new allocations and connections, exit once no allocation is
    /// left or the drain timeout passes.
    Drain,
    /// Exit now.
    Now,
}

/// What the event loop listens on.
#[derive(Debug, Default)]
pub struct Listeners {
    /// UDP and TCP on each of these.
    pub plain: Vec<SocketAddr>,
    /// TLS over TCP on each of these.
    pub tls: Vec<SocketAddr>,
}

/// The event loop: sockets plus the sans-IO core.
pub struct EventLoop {
    server: Server,
    relays: RelayPorts,
    udp: Vec<UdpListener>,
    stream_listeners: Vec<StreamListener>,
    conns: HashMap<u64, Conn>,
    conn_by_tuple: HashMap<FiveTuple, u64>,
    next_conn: u64,
    ready: FuturesUnordered<ReadyFuture>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Stream read buffer.
    buf: Vec<u8>,
    /// Datagram receive buffers, shared by every UDP socket (one is drained at a time).
    rx: batch::Receiver,
    /// Datagrams waiting for the end of the current batch.
    outbox: batch::Outbox,
    send_errors: u64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("udp", &self.udp.len())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Binds every listener; fails if any address cannot be bound.
    pub async fn bind(
        server: Server,
        relays: RelayPorts,
        listeners: &Listeners,
        tls: Option<Arc<rustls::ServerConfig>>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let mut udp = Vec::new();
        let mut stream_listeners = Vec::new();
        for addr in &listeners.plain {
            let socket = UdpSocket::from_std(bind::udp(*addr)?)?;
            let local = socket.local_addr()?;
            info!(%local, "listening (UDP)");
            udp.push(UdpListener {
                socket: Arc::new(socket),
                local,
            });
            let listener = TcpListener::from_std(bind::tcp(*addr)?)?;
            info!(local = %listener.local_addr()?, "listening (TCP)");
            stream_listeners.push(StreamListener {
                listener: Arc::new(listener),
                tls: None,
                accept_abort: None,
            });
        }
        for addr in &listeners.tls {
            let config = tls
                .clone()
                .ok_or_else(|| io::Error::other("--tls-listen needs --tls-cert and --tls-key"))?;
            let listener = TcpListener::from_std(bind::tcp(*addr)?)?;
            info!(local = %listener.local_addr()?, "listening (TLS)");
            stream_listeners.push(StreamListener {
                listener: Arc::new(listener),
                tls: Some(config),
                accept_abort: None,
            });
        }
        let mut this = Self {
            server,
            relays,
            udp,
            stream_listeners,
            conns: HashMap::new(),
            conn_by_tuple: HashMap::new(),
            next_conn: 0,
            ready: FuturesUnordered::new(),
            clock: Clock::default(),
            metrics,
            buf: vec![0; 65_536],
            rx: batch::Receiver::new()?,
            outbox: batch::Outbox::default(),
            send_errors: 0,
        };
        for i in 0..this.udp.len() {
            this.watch_udp(i);
        }
        for i in 0..this.stream_listeners.len() {
            this.watch_accept(i, Duration::ZERO);
        }
        Ok(this)
    }

    fn watch_udp(&mut self, i: usize) {
        if let Some(l) = self.udp.get(i) {
            let socket = l.socket.clone();
            self.ready.push(Box::pin(async move {
                let _ = socket.readable().await;
                Ready::Udp(i)
            }));
        }
    }

    /// Accepts the next connection on listener `i`, after `delay` (used to back off when accept
    /// fails, e.g. out of file descriptors, instead of spinning on a listener that stays ready).
    fn watch_accept(&mut self, i: usize, delay: Duration) {
        if let Some(l) = self.stream_listeners.get_mut(i) {
            let listener = l.listener.clone();
            let (fut, abort) = abortable(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ready::Accept(i, listener.accept().await)
            });
            l.accept_abort = Some(abort);
            self.ready.push(fut);
        }
    }

    fn watch_relay(&mut self, addr: SocketAddr) {
        let Some(s) = self.relays.sockets.get_mut(&addr) else {
            return;
        };
        let socket = s.socket.clone();
        let (fut, abort) = abortable(async move {
            let _ = socket.readable().await;
            Ready::Relay(addr)
        });
        s.abort = Some(abort);
        self.ready.push(fut);
    }

    fn watch_conn_read(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let stream = c.stream.clone();
        let (fut, abort) = abortable(async move {
            let _ = stream.readable().await;
            Ready::TcpRead(id)
        });
        c.read_abort = Some(abort);
        self.ready.push(fut);
    }

    fn watch_conn_write(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.write_abort.is_some() {
            return;
        }
        let stream = c.stream.clone();
        let (fut, abort) = abortable(async move {
            let _ = stream.writable().await;
            Ready::TcpWrite(id)
        });
        c.write_abort = Some(abort);
        self.ready.push(fut);
    }

    /// Runs until `shutdown` asks to stop; `credentials` carries reloaded secrets.
    /// [`Shutdown::Drain`] stops taking new allocations and TCP/TLS connections, keeps serving
    /// the existing allocations, and returns once none is left or `drain_timeout` has passed
    /// (at once if it is zero); [`Shutdown::Now`], or a dropped sender, returns at once.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<Shutdown>,
        mut credentials: watch::Receiver<Credentials>,
        drain_timeout: Duration,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reloads_open = true;
        let mut drain_deadline = None;
        loop {
            self.after_input();
            self.flush_udp();
            if drain_deadline.is_some() && self.server.allocation_count() == 0 {
                info!("drain complete: no allocations left");
                break;
            }
            let now = self.clock.now();
            let sleep = self
                .server
                .poll_timeout()
                .map(|t| tokio::time::Instant::now() + t.since(now));
            tokio::select! {
                changed = shutdown.changed() => {
                    let request = match changed {
                        Ok(()) => *shutdown.borrow_and_update(),
                        Err(_) => Shutdown::Now,
                    };
                    match request {
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
                                info!(allocations = self.server.allocation_count(), "second signal: stopping at once");
                            }
                            break;
                        }
                    }
                }
                () = sleep_until(drain_deadline) => {
                    info!(allocations = self.server.allocation_count(), "drain timeout reached: stopping");
                    break;
                }
                changed = credentials.changed(), if reloads_open => {
                    if changed.is_ok() {
                        let c = credentials.borrow_and_update().clone();
                        info!(secrets = c.secrets.len(), users = c.users.len(), "credentials reloaded");
                        self.server.set_credentials(c);
                    } else {
                        // No more reloads can come; stop polling a closed channel.
                        reloads_open = false;
                    }
                }
                Some(ready) = self.ready.next() => self.on_ready(ready),
                () = sleep_until(sleep) => {
                    let now = self.clock.now();
                    self.server.handle_timeout(now, &mut self.relays);
                }
                _ = tick.tick() => self.housekeeping(),
            }
        }
        info!(
            allocations = self.server.allocation_count(),
            "shutting down"
        );
        self.housekeeping();
    }

    /// Enters draining: the core refuses new allocations, the TCP/TLS listeners close (existing
    /// connections stay), and the metrics say so. Returns the drain deadline.
    fn start_draining(&mut self, timeout: Duration) -> tokio::time::Instant {
        self.server.start_draining();
        for l in self.stream_listeners.drain(..) {
            // The aborted accept drops the last other reference, which closes the socket.
            if let Some(abort) = l.accept_abort {
                abort.abort();
            }
        }
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
        tokio::time::Instant::now() + timeout
    }

    /// Sends the datagrams queued while handling input.
    fn flush_udp(&mut self) {
        self.send_errors += self.outbox.flush();
    }

    /// Queues or sends what the core produced, watches new relay sockets, logs lifecycle events.
    fn after_input(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            self.transmit(t);
        }
        for addr in std::mem::take(&mut self.relays.unwatched) {
            self.watch_relay(addr);
        }
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::AllocationCreated { five_tuple, relay } => {
                    debug!(client = %redact(five_tuple.client), transport = ?five_tuple.transport, %relay, "allocation created");
                }
                Event::AllocationDeleted {
                    five_tuple,
                    relay,
                    reason,
                } => {
                    debug!(client = %redact(five_tuple.client), %relay, %reason, "allocation deleted");
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                now.duration_since(c.last_activity) > TCP_IDLE_WITHOUT_ALLOCATION
                    && self.server.allocation(&c.five_tuple).is_none()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            self.close_conn(id);
        }
        self.metrics.publish(
            self.server.stats(),
            self.server.allocation_count(),
            self.conns.len(),
            self.send_errors,
        );
    }

    fn on_ready(&mut self, ready: Ready) {
        match ready {
            Ready::Udp(i) => self.drain_udp(i),
            Ready::Relay(addr) => self.drain_relay(addr),
            Ready::TcpRead(id) => self.read_conn(id),
            Ready::TcpWrite(id) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.write_abort = None;
                }
                self.flush_conn(id);
            }
            Ready::Accept(i, result) => {
                let delay = match result {
                    Ok((stream, peer)) => {
                        self.accept(i, stream, peer);
                        Duration::ZERO
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        ACCEPT_BACKOFF
                    }
                };
                self.watch_accept(i, delay);
            }
            Ready::Cancelled => {}
        }
    }

    fn drain_udp(&mut self, i: usize) {
        let Some((socket, local)) = self.udp.get(i).map(|l| (l.socket.clone(), l.local)) else {
            return;
        };
        for _ in 0..RECV_CALLS {
            let n = match self.rx.recv(&socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors surface here on Linux (e.g. connection refused): not fatal.
                Err(e) => {
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let now = self.clock.now();
            for (from, bytes) in self.rx.datagrams(n) {
                let ft = FiveTuple {
                    client: from,
                    server: local,
                    transport: Transport::Udp,
                };
                self.server
                    .handle_datagram(ft, bytes, now, &mut self.relays);
            }
            self.after_input();
            self.flush_udp();
        }
        self.watch_udp(i);
    }

    fn drain_relay(&mut self, addr: SocketAddr) {
        let Some(socket) = self.relays.sockets.get(&addr).map(|s| s.socket.clone()) else {
            return;
        };
        for _ in 0..RECV_CALLS {
            let n = match self.rx.recv(&socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(error = %e, "relay receive error");
                    continue;
                }
            };
            let now = self.clock.now();
            for (peer, bytes) in self.rx.datagrams(n) {
                self.server.handle_peer_datagram(addr, peer, bytes, now);
            }
            while let Some(t) = self.server.poll_transmit() {
                self.transmit(t);
            }
            self.flush_udp();
        }
        self.watch_relay(addr);
    }

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Client {
                five_tuple,
                payload,
            } => match five_tuple.transport {
                Transport::Udp => match self.udp.iter().find(|l| l.local == five_tuple.server) {
                    Some(l) => self
                        .outbox
                        .push(l.socket.clone(), five_tuple.client, payload),
                    None => self.send_errors += 1,
                },
                Transport::Tcp | Transport::Tls => {
                    let Some(id) = self.conn_by_tuple.get(&five_tuple).copied() else {
                        return;
                    };
                    self.write_conn(id, &payload);
                }
            },
            Transmit::Peer {
                relay,
                peer,
                payload,
            } => match self.relays.sockets.get(&relay) {
                Some(s) => self.outbox.push(s.socket.clone(), peer, payload),
                None => self.send_errors += 1,
            },
        }
    }

    fn accept(&mut self, i: usize, stream: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= MAX_TCP_CONNECTIONS {
            warn!("too many TCP connections; refusing one");
            return;
        }
        let Some(l) = self.stream_listeners.get(i) else {
            return;
        };
        let (Ok(local), tls) = (stream.local_addr(), l.tls.clone()) else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let tls = match tls.map(rustls::ServerConnection::new).transpose() {
            Ok(tls) => tls.map(Box::new),
            Err(e) => {
                warn!(error = %e, "TLS session setup failed");
                return;
            }
        };
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let five_tuple = FiveTuple {
            client: peer,
            server: local,
            transport,
        };
        let id = self.next_conn;
        self.next_conn += 1;
        debug!(client = %redact(peer), ?transport, "connection accepted");
        self.conns.insert(
            id,
            Conn {
                stream: Arc::new(stream),
                five_tuple,
                tls,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                read_abort: None,
                write_abort: None,
                last_activity: Instant::now(),
            },
        );
        self.conn_by_tuple.insert(five_tuple, id);
        self.watch_conn_read(id);
    }

    fn read_conn(&mut self, id: u64) {
        let mut closed = false;
        {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            c.last_activity = Instant::now();
            for _ in 0..RECV_BATCH {
                match c.stream.try_read(&mut self.buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        let data = self.buf.get(..n).unwrap_or_default();
                        match c.tls.as_deref_mut() {
                            None => c.rbuf.extend_from_slice(data),
                            Some(tls) => {
                                if tls_ingest(tls, data, &mut c.rbuf, &mut c.wbuf).is_err() {
                                    closed = true;
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        // Hand complete frames to the core even if the peer closed right after sending them.
        if self.process_frames(id).is_err() {
            closed = true;
        }
        if closed {
            self.close_conn(id);
        } else {
            self.flush_conn(id);
            self.watch_conn_read(id);
        }
    }

    /// Splits the read buffer into STUN / ChannelData frames (RFC 8656 §12.5).
    fn process_frames(&mut self, id: u64) -> Result<(), ()> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let ft = c.five_tuple;
        let mut rbuf = std::mem::take(&mut c.rbuf);
        let mut start = 0;
        let result = loop {
            let rest = rbuf.get(start..).unwrap_or_default();
            match next_frame(rest) {
                Ok(Some(frame)) => {
                    let (len, consumed) = match frame {
                        Frame::Stun(n) => (n, n),
                        Frame::ChannelData { len, consumed } => (len, consumed),
                    };
                    let now = self.clock.now();
                    let bytes = rest.get(..len).unwrap_or_default();
                    self.server
                        .handle_datagram(ft, bytes, now, &mut self.relays);
                    start += consumed;
                }
                Ok(None) => break Ok(()),
                Err(_) => {
                    debug!(client = %redact(ft.client), "stream framing error; closing");
                    break Err(());
                }
            }
        };
        rbuf.drain(..start.min(rbuf.len()));
        if let Some(c) = self.conns.get_mut(&id) {
            c.rbuf = rbuf;
        }
        self.after_input();
        result
    }

    fn write_conn(&mut self, id: u64, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.wbuf.len() > MAX_TCP_BACKLOG {
            self.send_errors += 1;
            return;
        }
        match c.tls.as_deref_mut() {
            None => c.wbuf.extend_from_slice(payload),
            Some(tls) => {
                if tls.writer().write_all(payload).is_err() {
                    self.send_errors += 1;
                    return;
                }
                while tls.wants_write() {
                    if tls.write_tls(&mut c.wbuf).is_err() {
                        break;
                    }
                }
            }
        }
        self.flush_conn(id);
    }

    fn flush_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < c.wbuf.len() {
            match c
                .stream
                .try_write(c.wbuf.get(written..).unwrap_or_default())
            {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        let pending = !c.wbuf.is_empty();
        if failed {
            self.close_conn(id);
        } else if pending {
            self.watch_conn_write(id);
        }
    }

    fn close_conn(&mut self, id: u64) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        for abort in [c.read_abort, c.write_abort].into_iter().flatten() {
            abort.abort();
        }
        self.conn_by_tuple.remove(&c.five_tuple);
        debug!(client = %redact(c.five_tuple.client), "connection closed");
        self.server
            .handle_connection_closed(c.five_tuple, &mut self.relays);
        self.after_input();
    }
}

/// Feeds ciphertext to rustls, appending plaintext to `plain` and handshake bytes to `out`.
fn tls_ingest(
    tls: &mut rustls::ServerConnection,
    mut data: &[u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    while !data.is_empty() {
        tls.read_tls(&mut data)?;
        tls.process_new_packets().map_err(io::Error::other)?;
        let mut chunk = [0u8; 4096];
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => plain.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
    while tls.wants_write() {
        tls.write_tls(out)?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn client_addresses_are_redacted() {
        assert_eq!(
            redact(
                "203.0.113.77:5000"
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            ),
            "203.0.113.x"
        );
        let v6 = redact(
            "[2001:db8:1234:5678::9]:5000"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(v6, "2001:db8:1234::x");
    }
}
