//! TCP and TLS client connections (RFC 8656 §3.1): accepted on the listeners, framed into STUN
//! messages and ChannelData (RFC 8656 §12.5), written back with backpressure.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::epoll;
use tracing::{debug, warn};

use super::batch::Source;
use super::event_loop::{ACCEPT_BACKOFF, EventLoop, KIND_ACCEPT, KIND_CONN, token};
use super::redact;
use crate::stun::channel_data::{Frame, next_frame};
use crate::turn::{FiveTuple, Forward, Transport};

/// Stream reads taken from one connection before other sockets get a turn.
const READS_PER_WAKE: usize = 64;
/// Connections accepted per wake-up of a listener.
const ACCEPTS_PER_WAKE: usize = 64;
/// Stream bytes buffered for a slow TCP client before relayed data is dropped.
const MAX_TCP_BACKLOG: usize = 1 << 20;
/// RFC 8656 §5: a connection without an allocation is closed after a while.
const TCP_IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
/// Open client TCP/TLS connections per loop at most.
const MAX_TCP_CONNECTIONS: usize = 10_000;

/// A client TCP or TLS connection.
#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    five_tuple: FiveTuple,
    tls: Option<Box<rustls::ServerConnection>>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Whether the epoll registration includes writability (while `wbuf` waits).
    watching_write: bool,
    last_activity: Instant,
}

impl EventLoop {
    /// Accepts what listener `i` has waiting.
    pub(super) fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let Some(Some(l)) = self.stream_listeners.get(i) else {
                return;
            };
            let (stream, peer) = match l.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    self.pause_accepting();
                    return;
                }
            };
            let tls = l.tls.clone();
            self.add_conn(stream, peer, tls);
        }
    }

    /// Takes every listener out of the epoll set for [`ACCEPT_BACKOFF`].
    fn pause_accepting(&mut self) {
        for l in self.stream_listeners.iter().flatten() {
            let _ = epoll::delete(&self.epoll, &l.listener);
        }
        self.accept_paused = Some(Instant::now() + ACCEPT_BACKOFF);
    }

    /// Puts the listeners back after [`EventLoop::pause_accepting`].
    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused = None;
        for (i, l) in self.stream_listeners.iter().enumerate() {
            if let Some(l) = l {
                let _ = epoll::add(
                    &self.epoll,
                    &l.listener,
                    token(KIND_ACCEPT, i),
                    epoll::EventFlags::IN,
                );
            }
        }
    }

    fn add_conn(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) {
        if self.conn_by_tuple.len() >= MAX_TCP_CONNECTIONS {
            warn!("too many TCP connections; refusing one");
            return;
        }
        let Ok(local) = stream.local_addr() else {
            return;
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
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
        let slot = self.free_conns.pop().unwrap_or(self.conns.len());
        if epoll::add(
            &self.epoll,
            &stream,
            token(KIND_CONN, slot),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )
        .is_err()
        {
            self.free_conns.push(slot);
            return;
        }
        debug!(client = %redact(peer), ?transport, "connection accepted");
        let conn = Some(Conn {
            stream,
            five_tuple,
            tls,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            watching_write: false,
            last_activity: Instant::now(),
        });
        match self.conns.get_mut(slot) {
            Some(c) => *c = conn,
            None => self.conns.push(conn),
        }
        self.conn_by_tuple.insert(five_tuple, slot);
    }

    /// A connection is readable or writable.
    pub(super) fn conn_ready(&mut self, slot: usize) {
        self.flush_conn(slot);
        self.read_conn(slot);
    }

    fn read_conn(&mut self, slot: usize) {
        let mut closed = false;
        {
            let Some(Some(c)) = self.conns.get_mut(slot) else {
                return;
            };
            c.last_activity = Instant::now();
            for _ in 0..READS_PER_WAKE {
                match (&c.stream).read(&mut self.buf) {
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
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        // Hand complete frames to the core even if the peer closed right after sending them.
        if self.process_frames(slot).is_err() {
            closed = true;
        }
        if closed {
            self.close_conn(slot);
        } else {
            self.flush_conn(slot);
        }
    }

    /// Splits the read buffer into STUN / ChannelData frames (RFC 8656 §12.5).
    fn process_frames(&mut self, slot: usize) -> Result<(), ()> {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let ft = c.five_tuple;
        let rbuf = std::mem::take(&mut c.rbuf);
        let mut start = 0;
        let now = self.clock.now();
        let result = loop {
            let rest = rbuf.get(start..).unwrap_or_default();
            match next_frame(rest) {
                Ok(Some(frame)) => {
                    let (len, consumed) = match frame {
                        Frame::Stun(n) => (n, n),
                        Frame::ChannelData { len, consumed } => (len, consumed),
                    };
                    let bytes = rest.get(..len).unwrap_or_default();
                    if let Some(Forward::ToPeer {
                        relay,
                        peer,
                        payload,
                    }) = self.server.handle_datagram(ft, bytes, now)
                    {
                        if self.relays.slot_of(&peer).is_some() {
                            // Short-circuit, as on the UDP path (see `udp.rs`).
                            self.short_circuited += 1;
                            if let Some(f) =
                                self.server.handle_peer_datagram(peer, relay, payload, now)
                            {
                                self.stream_out.push(f.to_transmit());
                            }
                        } else {
                            match self.relays.slot_of(&relay) {
                                Some(s) => {
                                    self.outbox.push_owned(
                                        Source::Relay(s),
                                        peer,
                                        payload.to_vec(),
                                    );
                                }
                                None => self.send_errors += 1,
                            }
                        }
                    }
                    start += consumed;
                }
                Ok(None) => break Ok(()),
                Err(_) => {
                    debug!(client = %redact(ft.client), "stream framing error; closing");
                    break Err(());
                }
            }
        };
        let mut rbuf = rbuf;
        rbuf.drain(..start.min(rbuf.len()));
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            c.rbuf = rbuf;
        }
        self.after_input(now);
        self.flush();
        result
    }

    /// Writes a message to the TCP/TLS client of `five_tuple`, if still connected.
    pub(super) fn write_to_client(&mut self, five_tuple: FiveTuple, payload: &[u8]) {
        if let Some(slot) = self.conn_by_tuple.get(&five_tuple).copied() {
            self.write_conn(slot, payload);
        }
    }

    fn write_conn(&mut self, slot: usize, payload: &[u8]) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
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
        self.flush_conn(slot);
    }

    fn flush_conn(&mut self, slot: usize) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < c.wbuf.len() {
            match (&c.stream).write(c.wbuf.get(written..).unwrap_or_default()) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        let pending = !c.wbuf.is_empty();
        if pending != c.watching_write {
            let flags = if pending {
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::OUT
            } else {
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP
            };
            if epoll::modify(&self.epoll, &c.stream, token(KIND_CONN, slot), flags).is_ok() {
                c.watching_write = pending;
            }
        }
        if failed {
            self.close_conn(slot);
        }
    }

    fn close_conn(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free_conns.push(slot);
        self.conn_by_tuple.remove(&c.five_tuple);
        debug!(client = %redact(c.five_tuple.client), "connection closed");
        // Dropping the stream closes it, which takes it out of the epoll set.
        drop(c.stream);
        self.server.handle_connection_closed(c.five_tuple);
        let now = self.clock.now();
        self.after_input(now);
    }

    /// RFC 8656 §5: connections that never got (or no longer have) an allocation are closed
    /// after a while.
    pub(super) fn close_idle_connections(&mut self) {
        let now = Instant::now();
        let idle: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| {
                now.duration_since(c.last_activity) > TCP_IDLE_WITHOUT_ALLOCATION
                    && self.server.allocation(&c.five_tuple).is_none()
            })
            .map(|(i, _)| i)
            .collect();
        for slot in idle {
            self.close_conn(slot);
        }
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
