//! Batched UDP IO for the event loop: one `recvmmsg` (through quinn-udp) drains up to [`BATCH`]
//! datagrams from a socket (more when the socket has `UDP_GRO`: a slot then holds several
//! datagrams of one sender), and the datagrams produced meanwhile are flushed with one
//! `sendmmsg` per source socket. Relayed data is not copied: an [`Outbox`] entry may point into
//! the receive buffers (ChannelData header and payload go out as two iovecs), which stay
//! untouched until the flush that follows every receive.
//!
//! Runs of datagrams from one socket to one destination, all of one size (the last may be
//! shorter), go out as one `UDP_SEGMENT` (GSO) send where the kernel supports it: the kernel
//! walks its stack once for the run and splits it into datagrams at the end (or hands it whole
//! to a receiver with `UDP_GRO`). The run is copied into one buffer for that send (a GSO send
//! is one contiguous message through quinn-udp); the datagrams on the wire are the same.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;

use quinn_udp::{RecvMeta, UdpSocketState};

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
    /// quinn-udp's receive is a plain `recvmmsg` that decodes whatever control messages arrive
    /// (a GRO segment size among them); it needs no option on the socket it reads, and its GSO
    /// send passes the segment size with each message. Its `UdpSocketState::new` does set options
    /// (PMTU probing and DF on every send, GRO, receive timestamps) that would change how our
    /// relayed sockets send, so the state is made on a private, unbound socket and the sockets we
    /// serve keep their options (listeners get GRO from [`super::bind::udp_listener`]).
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

    /// Receives up to [`BATCH`] datagrams from a non-blocking `socket`; `WouldBlock` when none
    /// is waiting. Returns how many slots were filled.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut slots = self.bufs.chunks_exact_mut(SLOT);
        let mut iovs: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
        self.state.recv(socket.into(), &mut iovs, &mut self.meta)
    }

    /// The datagrams of the last [`Receiver::recv`] that returned `n`: each sender with where
    /// its bytes lie in the receive buffers (see [`Receiver::bytes`]). A slot holding several
    /// datagrams (GRO) is split at its stride.
    pub fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, Range<usize>)> + '_ {
        self.meta.iter().take(n).enumerate().flat_map(|(i, m)| {
            let base = i * SLOT;
            let len = m.len.min(SLOT);
            let stride = if m.stride == 0 { len } else { m.stride }.max(1);
            // An empty slot is still one (zero-length) datagram.
            let count = len.div_ceil(stride).max(1);
            (0..count).map(move |k| {
                let start = base + k * stride;
                (m.addr, start..(start + stride).min(base + len))
            })
        })
    }

    /// How many datagrams one GSO send may carry here: 1 where the kernel has no `UDP_SEGMENT`
    /// or a GSO send has failed (quinn-udp then turns it off), else at most [`BATCH`].
    pub fn gso_segments(&self) -> usize {
        self.state.max_gso_segments().min(BATCH)
    }

    /// The bytes at `range` (from [`Receiver::datagrams`]).
    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        self.bufs.get(range).unwrap_or_default()
    }

    /// Where `slice` (a part of [`Receiver::bytes`]) lies in the receive buffers.
    pub fn range_of(&self, slice: &[u8]) -> Option<Range<usize>> {
        let start = slice
            .as_ptr()
            .addr()
            .checked_sub(self.bufs.as_ptr().addr())?;
        let end = start.checked_add(slice.len())?;
        (end <= self.bufs.len()).then_some(start..end)
    }
}

/// A socket of the event loop a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Listener number `n` (to clients).
    Listener(usize),
    /// Relay socket in slot `n` (to peers).
    Relay(usize),
}

/// What a queued datagram carries.
#[derive(Debug)]
enum Data {
    /// Bytes in the receive buffers, after an optional 4-byte ChannelData header.
    Received {
        header: Option<[u8; 4]>,
        range: Range<usize>,
    },
    /// A message built for this datagram (responses, Data indications).
    Owned(Vec<u8>),
}

#[derive(Debug)]
struct Outgoing {
    source: Source,
    to: SocketAddr,
    data: Data,
}

/// Datagrams produced while handling a batch, sent together by [`Outbox::flush`]. Its storage
/// is reused from batch to batch.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Vec<Outgoing>,
    /// One GSO run, copied together for its send.
    segments: Vec<u8>,
}

impl Outbox {
    /// Queues a message built for this datagram.
    pub fn push_owned(&mut self, source: Source, to: SocketAddr, payload: Vec<u8>) {
        self.pending.push(Outgoing {
            source,
            to,
            data: Data::Owned(payload),
        });
    }

    /// Queues bytes that are still in the receive buffers, after an optional header.
    pub fn push_received(
        &mut self,
        source: Source,
        to: SocketAddr,
        header: Option<[u8; 4]>,
        range: Range<usize>,
    ) {
        self.pending.push(Outgoing {
            source,
            to,
            data: Data::Received { header, range },
        });
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything queued, one `sendmmsg` per source socket (and per [`BATCH`]); returns
    /// how many datagrams could not be sent (full send buffer, DF and too big, unreachable,
    /// socket gone, ...). `rx` holds the received bytes entries point to.
    pub fn flush<'s>(
        &mut self,
        rx: &Receiver,
        socket: impl Fn(Source) -> Option<&'s UdpSocket>,
    ) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        // A stable sort groups datagrams by socket and keeps each socket's order.
        self.pending.sort_by_key(|o| o.source);
        let segments = &mut self.segments;
        let failed = self
            .pending
            .chunk_by(|a, b| a.source == b.source)
            .flat_map(|run| run.chunks(BATCH))
            .map(|run| match run.first().and_then(|o| socket(o.source)) {
                Some(s) => send_segmented_runs(s, run, rx, segments),
                None => run.len() as u64,
            })
            .sum();
        self.pending.clear();
        failed
    }
}

/// The largest datagram sent in a GSO run: a segment must fit the outgoing device's MTU (the
/// kernel refuses the whole send otherwise), and 1452 bytes fit a 1500-byte MTU over IPv4 and
/// IPv6. Larger datagrams go out one by one, as before, so IP fragmentation still applies to them.
const GSO_MAX_SEGMENT: usize = 1452;

/// The most bytes one UDP send can carry (IPv4: 65,535 less the IP and UDP headers).
const GSO_MAX_BYTES: usize = 65_507;

/// Length of one queued datagram.
fn len_of(o: &Outgoing) -> usize {
    match &o.data {
        Data::Owned(v) => v.len(),
        Data::Received { header, range } => header.map_or(0, |h| h.len()) + range.len(),
    }
}

/// How many datagrams at the start of `run` can go out as one GSO send: all to the first one's
/// destination, all of its size except a shorter last one, at most `max` and [`GSO_MAX_BYTES`].
fn gso_run_len(run: &[Outgoing], max: usize) -> usize {
    let Some(first) = run.first() else {
        return 0;
    };
    let size = len_of(first);
    if max < 2 || size == 0 || size > GSO_MAX_SEGMENT {
        return 1;
    }
    let limit = max.min(GSO_MAX_BYTES / size);
    let mut n = 1;
    for o in run.iter().skip(1).take(limit.saturating_sub(1)) {
        if o.to != first.to {
            break;
        }
        let len = len_of(o);
        if len == size {
            n += 1;
        } else {
            // A shorter datagram may end the run.
            if len > 0 && len < size {
                n += 1;
            }
            break;
        }
    }
    n
}

/// Sends datagrams that all leave from `socket`: runs to one destination as GSO sends, the
/// others with `sendmmsg`, in queue order. Returns how many failed.
fn send_segmented_runs(
    socket: &UdpSocket,
    run: &[Outgoing],
    rx: &Receiver,
    segments: &mut Vec<u8>,
) -> u64 {
    let max = rx.gso_segments();
    if max < 2 {
        return send_run(socket, run, rx);
    }
    let mut failed = 0;
    // Datagrams since the last GSO send, waiting for one `sendmmsg`.
    let mut singles = 0;
    let mut i = 0;
    while let Some(rest) = run.get(i..).filter(|r| !r.is_empty()) {
        let n = gso_run_len(rest, max);
        if n < 2 {
            singles += 1;
            i += 1;
            continue;
        }
        if let Some(before) = run.get(i - singles..i) {
            failed += send_run(socket, before, rx);
        }
        singles = 0;
        if let Some(group) = rest.get(..n) {
            failed += send_gso(socket, group, rx, segments);
        }
        i += n;
    }
    if let Some(before) = run.get(i - singles..i) {
        failed += send_run(socket, before, rx);
    }
    failed
}

/// Sends `group` (from [`gso_run_len`]) as one GSO send; if the kernel refuses it for another
/// reason than a full send buffer, the datagrams go out one by one instead (quinn-udp turns
/// GSO off for later sends when the refusal says the device cannot segment).
fn send_gso(socket: &UdpSocket, group: &[Outgoing], rx: &Receiver, segments: &mut Vec<u8>) -> u64 {
    let Some(first) = group.first() else {
        return 0;
    };
    segments.clear();
    for o in group {
        for part in iovecs(o, rx) {
            segments.extend_from_slice(&part);
        }
    }
    let transmit = quinn_udp::Transmit {
        destination: first.to,
        ecn: None,
        contents: segments,
        segment_size: Some(len_of(first)),
        src_ip: None,
    };
    match rx.state.try_send(socket.into(), &transmit) {
        Ok(()) => 0,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => group.len() as u64,
        Err(_) => send_run(socket, group, rx),
    }
}

/// The iovecs of one datagram: header (possibly empty) and payload.
fn iovecs<'a>(o: &'a Outgoing, rx: &'a Receiver) -> [IoSlice<'a>; 2] {
    match &o.data {
        Data::Owned(v) => [IoSlice::new(v), IoSlice::new(&[])],
        Data::Received { header, range } => [
            IoSlice::new(header.as_ref().map_or(&[][..], |h| &h[..])),
            IoSlice::new(rx.bytes(range.clone())),
        ],
    }
}

/// One message header's parts, kept together so the headers can borrow them.
#[cfg(target_os = "linux")]
struct Slot<'a> {
    addr: rustix::net::SocketAddrAny,
    iov: [IoSlice<'a>; 2],
    control: rustix::net::SendAncillaryBuffer<'a, 'a, 'a>,
}

/// Sends up to [`BATCH`] datagrams that all leave from `socket`; returns how many failed. The
/// message headers live on the stack: nothing is allocated per send.
#[cfg(target_os = "linux")]
fn send_run(socket: &UdpSocket, run: &[Outgoing], rx: &Receiver) -> u64 {
    use rustix::io::Errno;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};

    let Some(first) = run.first() else {
        return 0;
    };
    let run = run.get(..BATCH).unwrap_or(run);
    let mut items = run.iter();
    // Unused slots repeat the first address with no data; they are never passed to the kernel.
    let mut slots: [Slot<'_>; BATCH] = std::array::from_fn(|_| {
        let (addr, iov) = match items.next() {
            Some(o) => (o.to, iovecs(o, rx)),
            None => (first.to, [IoSlice::new(&[]), IoSlice::new(&[])]),
        };
        Slot {
            addr: addr.into(),
            iov,
            control: SendAncillaryBuffer::default(),
        }
    });
    let mut msgs = slots.each_mut().map(|slot| {
        let Slot { addr, iov, control } = slot;
        MMsgHdr::new_with_addr(addr, iov, control)
    });
    let mut failed = 0;
    let mut start = 0;
    // Each pass sends at least one datagram or gives one up, so this ends within `run.len()`.
    while let Some(rest) = msgs.get_mut(start..run.len()).filter(|r| !r.is_empty()) {
        match sendmmsg(socket, rest, SendFlags::empty()) {
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

/// Sends datagrams one `sendmsg` each where the platform has no `sendmmsg`.
#[cfg(not(target_os = "linux"))]
fn send_run(socket: &UdpSocket, run: &[Outgoing], rx: &Receiver) -> u64 {
    run.iter()
        .filter(|o| {
            let [h, p] = iovecs(o, rx);
            let mut buf = Vec::with_capacity(h.len() + p.len());
            buf.extend_from_slice(&h);
            buf.extend_from_slice(&p);
            socket.send_to(&buf, o.to).is_err()
        })
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

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// Receives (bounded) until `rx` has `want` datagrams from `socket`.
    fn receive_all(rx: &mut Receiver, socket: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..100 {
            if got.len() >= want {
                break;
            }
            match rx.recv(socket) {
                Ok(n) => got.extend(
                    rx.datagrams(n)
                        .map(|(_, r)| rx.bytes(r).to_vec())
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        got
    }

    #[test]
    fn outbox_sends_in_order_per_socket_and_receiver_batches() {
        let (a, b, sink) = (socket(), socket(), socket());
        let to = sink.local_addr().unwrap();
        let sockets = [&a, &b];
        let mut outbox = Outbox::default();
        let rx = Receiver::new().unwrap();
        // More than one batch, interleaved over two sockets, sizes from 1 byte to the largest
        // IPv4 UDP payload.
        let sizes: Vec<usize> = (0..BATCH * 2 + 3)
            .map(|i| if i == 5 { 65_507 } else { i + 1 })
            .collect();
        for (i, &len) in sizes.iter().enumerate() {
            let mut payload = vec![0u8; len];
            payload[0] = u8::try_from(i).unwrap();
            outbox.push_owned(Source::Listener(i % 2), to, payload);
        }
        // A zero-length datagram is data too (a peer may send one); it must not vanish.
        outbox.push_owned(Source::Listener(0), to, Vec::new());
        assert_eq!(
            outbox.flush(&rx, |s| match s {
                Source::Listener(i) => sockets.get(i).copied(),
                Source::Relay(_) => None,
            }),
            0
        );
        assert!(outbox.is_empty());

        let mut rx = Receiver::new().unwrap();
        let mut got = receive_all(&mut rx, &sink, sizes.len() + 1);
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

    #[test]
    fn received_bytes_go_out_with_a_header_without_a_copy() {
        let (from, relay, sink) = (socket(), socket(), socket());
        from.send_to(b"payload", relay.local_addr().unwrap())
            .unwrap();
        let mut rx = Receiver::new().unwrap();
        let got = receive_all(&mut rx, &relay, 1);
        assert_eq!(got, vec![b"payload".to_vec()]);
        // `receive_all` left the datagram in slot 0.
        let range = rx.range_of(rx.bytes(0..7)).unwrap();
        let mut outbox = Outbox::default();
        let to = sink.local_addr().unwrap();
        outbox.push_received(Source::Relay(0), to, Some([0x40, 0, 0, 7]), range.clone());
        outbox.push_received(Source::Relay(0), to, None, range);
        assert_eq!(outbox.flush(&rx, |_| Some(&relay)), 0);
        let mut rx2 = Receiver::new().unwrap();
        let got = receive_all(&mut rx2, &sink, 2);
        assert_eq!(
            got,
            vec![b"\x40\x00\x00\x07payload".to_vec(), b"payload".to_vec()]
        );
    }

    /// Datagrams of `sizes` from `source`, each starting with its index.
    fn queue(outbox: &mut Outbox, source: Source, to: SocketAddr, sizes: &[usize]) {
        for (i, &len) in sizes.iter().enumerate() {
            let mut payload = vec![0u8; len];
            payload[0] = u8::try_from(i).unwrap();
            outbox.push_owned(source, to, payload);
        }
    }

    #[test]
    fn a_gso_run_is_one_to_one_destination_of_one_size_with_a_shorter_last() {
        let to: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let item = |to, len| Outgoing {
            source: Source::Relay(0),
            to,
            data: Data::Owned(vec![0; len]),
        };
        let run = |items: &[(SocketAddr, usize)]| -> Vec<Outgoing> {
            items.iter().map(|&(t, l)| item(t, l)).collect()
        };
        let r = run(&[(to, 100), (to, 100), (to, 100), (to, 40), (to, 100)]);
        assert_eq!(gso_run_len(&r, 32), 4, "a shorter datagram ends the run");
        let r = run(&[(to, 100), (to, 100), (other, 100)]);
        assert_eq!(gso_run_len(&r, 32), 2, "another destination ends the run");
        let r = run(&[(to, 100), (to, 200)]);
        assert_eq!(gso_run_len(&r, 32), 1, "a longer datagram cannot follow");
        let r = run(&[(to, 100), (to, 0)]);
        assert_eq!(gso_run_len(&r, 32), 1, "nor an empty one");
        let r = run(&[(to, 100); 10]);
        assert_eq!(gso_run_len(&r, 4), 4, "at most what the kernel takes");
        assert_eq!(gso_run_len(&r, 1), 1, "no GSO here");
        let r = run(&[(to, 1500), (to, 1500)]);
        assert_eq!(gso_run_len(&r, 32), 1, "larger than a 1500-byte MTU allows");
        let r = run(&[(to, 1400); 60]);
        assert_eq!(gso_run_len(&r, 64), GSO_MAX_BYTES / 1400);
    }

    #[test]
    fn gso_runs_arrive_as_the_datagrams_queued_also_through_gro() {
        let rx = Receiver::new().unwrap();
        // This kernel has UDP_SEGMENT; the runs below must take the GSO path.
        assert!(rx.gso_segments() > 1, "no GSO on this kernel");
        let a = socket();
        // A plain receiver (the kernel splits GSO runs for it) and a listener with UDP_GRO (it
        // gets runs whole and `Receiver::datagrams` splits them).
        let plain = socket();
        let (gro, _, gro_on) =
            super::super::bind::udp_listener("127.0.0.1:0".parse().unwrap(), false, 1 << 20)
                .unwrap();
        assert!(gro_on, "no UDP_GRO on this kernel");
        // Runs: 5 × 100 + 40, then 1 × 7 (alone), then 3 × 1200 + 1199, then 2 × 1500 (too
        // big for GSO), interleaved with a datagram to the other destination.
        let sizes = [
            100, 100, 100, 100, 100, 40, 7, 1200, 1200, 1200, 1199, 1500, 1500,
        ];
        for sink in [&plain, &gro] {
            let to = sink.local_addr().unwrap();
            let elsewhere = socket();
            let mut outbox = Outbox::default();
            queue(&mut outbox, Source::Relay(0), to, &sizes[..6]);
            outbox.push_owned(Source::Relay(0), elsewhere.local_addr().unwrap(), vec![9]);
            for (i, &len) in sizes.iter().enumerate().skip(6) {
                let mut payload = vec![0u8; len];
                payload[0] = u8::try_from(i).unwrap();
                outbox.push_owned(Source::Relay(0), to, payload);
            }
            assert_eq!(outbox.flush(&rx, |_| Some(&a)), 0);
            let mut rx2 = Receiver::new().unwrap();
            let mut got = Vec::new();
            let mut slots = 0;
            for _ in 0..100 {
                if got.len() >= sizes.len() {
                    break;
                }
                match rx2.recv(sink) {
                    Ok(n) => {
                        slots += n;
                        got.extend(rx2.datagrams(n).map(|(_, r)| rx2.bytes(r).to_vec()));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            let lens: Vec<usize> = got.iter().map(Vec::len).collect();
            let order: Vec<usize> = got.iter().map(|d| usize::from(d[0])).collect();
            assert_eq!(lens, sizes, "sizes and order for {to}");
            assert_eq!(order, (0..sizes.len()).collect::<Vec<_>>());
            if std::ptr::eq(sink, &gro) {
                // Runs of 6 and 4 came as one slot each: 1 + 1 + 1 + 2 single ones.
                assert_eq!(slots, 5, "GRO kept the runs whole");
            } else {
                assert_eq!(slots, sizes.len());
            }
            assert_eq!(receive_all(&mut rx2, &elsewhere, 1), vec![vec![9]]);
        }
    }

    #[test]
    fn a_refused_datagram_does_not_stop_the_others() {
        let (a, sink) = (socket(), socket());
        let to = sink.local_addr().unwrap();
        let rx = Receiver::new().unwrap();
        let mut outbox = Outbox::default();
        outbox.push_owned(Source::Listener(0), to, vec![1]);
        // Larger than any UDP datagram: the kernel refuses it (EMSGSIZE).
        outbox.push_owned(Source::Listener(0), to, vec![2; 70_000]);
        outbox.push_owned(Source::Listener(0), to, vec![3]);
        // A socket that is gone counts as failed too.
        outbox.push_owned(Source::Relay(9), to, vec![4]);
        assert_eq!(
            outbox.flush(&rx, |s| (s == Source::Listener(0)).then_some(&a)),
            2
        );
        let mut rx = Receiver::new().unwrap();
        let got = receive_all(&mut rx, &sink, 2);
        assert_eq!(got, vec![vec![1], vec![3]]);
    }
}
