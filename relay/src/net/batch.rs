//! Batched UDP IO for the event loop: one `recvmmsg` (through quinn-udp) drains up to [`BATCH`]
//! datagrams from a socket, and the datagrams the TURN core produced meanwhile are flushed with
//! one `sendmmsg` per destination socket instead of one `sendto` each.
//!
//! Sends bypass tokio (a plain non-blocking system call on the socket's descriptor), so they are
//! not gated by tokio's cached write readiness, which a freshly bound relay socket lacks until the
//! reactor has run.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per receive system call (quinn-udp's `recvmmsg` batch: 32 on Linux, 1 where the
/// platform has no batched receive).
pub const BATCH: usize = quinn_udp::BATCH_SIZE;

/// Room for one datagram: more than the largest UDP payload (65,507 bytes over IPv4, 65,527 over
/// IPv6), so a datagram is never truncated.
const SLOT: usize = 1 << 16;

/// The receive side: buffers for one batch and what the last receive filled in.
pub struct Receiver {
    /// Only the platform's receive path is used from this; see [`Receiver::new`].
    state: UdpSocketState,
    /// `BATCH` slots of `SLOT` bytes, allocated zeroed so untouched pages cost no memory.
    bufs: Box<[u8]>,
    meta: Box<[RecvMeta]>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("batch", &BATCH)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Receive buffers for one batch.
    ///
    /// quinn-udp's receive is a plain `recvmmsg` that decodes whatever control messages arrive;
    /// it needs no option on the socket it reads. Its `UdpSocketState::new` does set options
    /// (PMTU probing and DF on every send, GRO, receive timestamps) that would change how our
    /// listeners and relayed sockets send, so the state is made on a private, unbound socket and
    /// the sockets we serve keep their options.
    pub fn new() -> io::Result<Self> {
        let probe = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let state = UdpSocketState::new((&probe).into())?;
        Ok(Self {
            state,
            bufs: vec![0; BATCH * SLOT].into_boxed_slice(),
            meta: vec![RecvMeta::default(); BATCH].into_boxed_slice(),
        })
    }

    /// Receives up to [`BATCH`] datagrams from `socket` without blocking; `WouldBlock` when none
    /// is waiting (which also clears tokio's readiness, so the next `readable()` waits).
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut slots = self.bufs.chunks_exact_mut(SLOT);
        let mut iovs: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
        let (state, meta) = (&self.state, &mut *self.meta);
        socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut iovs, meta)
        })
    }

    /// The datagrams of the last [`Receiver::recv`] that returned `n`, with their senders. A
    /// slot holding several datagrams (GRO) is split at its stride.
    pub fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta
            .iter()
            .zip(self.bufs.chunks_exact(SLOT))
            .take(n)
            .flat_map(|(m, slot)| {
                let filled = slot.get(..m.len).unwrap_or_default();
                let stride = if m.stride == 0 { m.len } else { m.stride };
                let mut segments = filled.chunks(stride.max(1));
                // An empty slot is still one (zero-length) datagram.
                let first = segments.next().unwrap_or_default();
                std::iter::once(first)
                    .chain(segments)
                    .map(move |d| (m.addr, d))
            })
    }
}

/// One datagram waiting to be sent.
#[derive(Debug)]
struct Outgoing {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    payload: Vec<u8>,
}

/// Datagrams produced while handling a batch, sent together by [`Outbox::flush`].
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Vec<Outgoing>,
}

impl Outbox {
    /// Queues `payload` for `to` from `socket`. Holding the socket keeps it open until the flush
    /// even if its allocation ends in the same batch.
    pub fn push(&mut self, socket: Arc<UdpSocket>, to: SocketAddr, payload: Vec<u8>) {
        self.pending.push(Outgoing {
            socket,
            to,
            payload,
        });
    }

    /// Sends everything queued, one `sendmmsg` per socket (and per [`BATCH`]); returns how many
    /// datagrams the kernel refused (full send buffer, DF and too big, unreachable, ...).
    pub fn flush(&mut self) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        // A stable sort groups datagrams by socket and keeps each socket's order.
        self.pending.sort_by_key(|o| Arc::as_ptr(&o.socket).addr());
        let failed = self
            .pending
            .chunk_by(|a, b| Arc::ptr_eq(&a.socket, &b.socket))
            .flat_map(|run| run.chunks(BATCH))
            .map(send_run)
            .sum();
        self.pending.clear();
        failed
    }
}

/// Sends datagrams that all leave from the same socket; returns how many failed.
#[cfg(target_os = "linux")]
fn send_run(run: &[Outgoing]) -> u64 {
    use rustix::io::Errno;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

    let Some(first) = run.first() else {
        return 0;
    };
    let addrs: Vec<SocketAddrAny> = run.iter().map(|o| o.to.into()).collect();
    let iovs: Vec<[io::IoSlice<'_>; 1]> =
        run.iter().map(|o| [io::IoSlice::new(&o.payload)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        run.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    let mut failed = 0;
    let mut start = 0;
    // Each pass sends at least one datagram or gives one up, so this ends within `run.len()`.
    while let Some(rest) = msgs.get_mut(start..).filter(|r| !r.is_empty()) {
        match sendmmsg(&*first.socket, rest, SendFlags::empty()) {
            Ok(n) if n > 0 => start += n,
            // The send buffer is full: the rest would fail the same way.
            Err(Errno::AGAIN) => {
                failed += rest.len() as u64;
                break;
            }
            // The first datagram of `rest` was refused (sendmmsg reports an error only when it
            // sent nothing); skip it and go on with the others.
            Ok(_) | Err(_) => {
                failed += 1;
                start += 1;
            }
        }
    }
    failed
}

/// Sends datagrams one `sendto` each where the platform has no `sendmmsg`.
#[cfg(not(target_os = "linux"))]
fn send_run(run: &[Outgoing]) -> u64 {
    use rustix::net::{SendFlags, sendto};

    run.iter()
        .filter(|o| sendto(&*o.socket, &o.payload, SendFlags::empty(), &o.to).is_err())
        .count() as u64
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    async fn socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    /// Waits (bounded) until `rx` has received `want` datagrams from `socket`.
    async fn receive_all(rx: &mut Receiver, socket: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..100 {
            if got.len() >= want {
                break;
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(50), socket.readable()).await;
            match rx.recv(socket) {
                Ok(n) => got.extend(rx.datagrams(n).map(|(_, d)| d.to_vec())),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        got
    }

    #[tokio::test]
    async fn outbox_sends_in_order_per_socket_and_receiver_batches() {
        let (a, b, sink) = (socket().await, socket().await, socket().await);
        let to = sink.local_addr().unwrap();
        let mut outbox = Outbox::default();
        // More than one batch, interleaved over two sockets, sizes from 1 byte to the largest
        // IPv4 UDP payload.
        let sizes: Vec<usize> = (0..BATCH * 2 + 3)
            .map(|i| if i == 5 { 65_507 } else { i + 1 })
            .collect();
        for (i, &len) in sizes.iter().enumerate() {
            let from = if i % 2 == 0 { &a } else { &b };
            let mut payload = vec![0u8; len];
            payload[0] = u8::try_from(i).unwrap();
            outbox.push(from.clone(), to, payload);
        }
        // A zero-length datagram is data too (a peer may send one); it must not vanish.
        outbox.push(a.clone(), to, Vec::new());
        assert_eq!(outbox.flush(), 0);
        assert!(outbox.pending.is_empty());

        let mut rx = Receiver::new().unwrap();
        let mut got = receive_all(&mut rx, &sink, sizes.len() + 1).await;
        assert_eq!(got.len(), sizes.len() + 1);
        let empty = got
            .iter()
            .position(Vec::is_empty)
            .expect("the empty datagram");
        got.remove(empty);
        // Each source socket's datagrams arrive whole and in the order they were queued.
        for parity in 0..2 {
            let order: Vec<usize> = got
                .iter()
                .map(|d| usize::from(d[0]))
                .filter(|i| i % 2 == parity)
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted);
        }
        for d in &got {
            assert_eq!(d.len(), sizes[usize::from(d[0])]);
        }
        assert!(matches!(rx.recv(&sink), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

    #[tokio::test]
    async fn a_refused_datagram_does_not_stop_the_others() {
        let (a, sink) = (socket().await, socket().await);
        let to = sink.local_addr().unwrap();
        let mut outbox = Outbox::default();
        outbox.push(a.clone(), to, vec![1]);
        // Larger than any UDP datagram: the kernel refuses it (EMSGSIZE).
        outbox.push(a.clone(), to, vec![2; 70_000]);
        outbox.push(a.clone(), to, vec![3]);
        assert_eq!(outbox.flush(), 1);
        let mut rx = Receiver::new().unwrap();
        let got = receive_all(&mut rx, &sink, 2).await;
        assert_eq!(got, vec![vec![1], vec![3]]);
    }
}
