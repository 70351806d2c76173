//! The packet path: datagrams from UDP listeners (clients) and relay sockets (peers) go through
//! the core; relayed data leaves from the receive buffers without a copy.

use std::io;

use tracing::debug;

use super::batch::Source;
use super::event_loop::EventLoop;
use crate::turn::{FiveTuple, Forward, Transport};

/// `recvmmsg` calls per wake-up before other sockets get a turn (the epoll set is level
/// triggered, so a socket left with data is reported again).
const RECV_CALLS: usize = 2;

impl EventLoop {
    /// Drains one UDP socket: up to [`RECV_CALLS`] batches, each handed to the core and flushed
    /// before the buffers are reused. A batch shorter than the receive batch means the socket is
    /// empty: no extra call just to see EAGAIN.
    pub(super) fn drain_datagrams(&mut self, source: Source) {
        for _ in 0..RECV_CALLS {
            let (socket, local) = match source {
                Source::Listener(i) => match self.udp.get(i) {
                    Some(l) => (&l.socket, l.local),
                    None => return,
                },
                Source::Relay(i) => match self.relays.get(i) {
                    Some(r) => (&r.socket, r.addr),
                    None => return,
                },
            };
            let n = match self.rx.recv(socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors surface here on Linux (e.g. connection refused): not fatal.
                Err(e) => {
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let now = self.clock.now();
            let Self {
                server,
                rx,
                outbox,
                relays,
                udp,
                stream_out,
                send_errors,
                short_circuited,
                ..
            } = self;
            for (from, range) in rx.datagrams(n) {
                let bytes = rx.bytes(range);
                let forward = match source {
                    Source::Listener(_) => {
                        let ft = FiveTuple {
                            client: from,
                            server: local,
                            transport: Transport::Udp,
                        };
                        server.handle_datagram(ft, bytes, now)
                    }
                    Source::Relay(_) => server.handle_peer_datagram(local, from, bytes, now),
                };
                let Some(mut forward) = forward else {
                    continue;
                };
                // Short-circuit: data for the relayed address of another allocation of this
                // loop goes straight to that allocation's peer-side handling (which checks its
                // permissions), instead of out of one relay socket and back in through another.
                // What its client receives is the same, byte for byte.
                if let Forward::ToPeer {
                    relay,
                    peer,
                    payload,
                } = forward
                    && relays.slot_of(&peer).is_some()
                {
                    *short_circuited += 1;
                    match server.handle_peer_datagram(peer, relay, payload, now) {
                        Some(f) => forward = f,
                        None => continue,
                    }
                }
                match forward {
                    Forward::ToPeer {
                        relay,
                        peer,
                        payload,
                    } => match (relays.slot_of(&relay), rx.range_of(payload)) {
                        (Some(slot), Some(range)) => {
                            outbox.push_received(Source::Relay(slot), peer, None, range);
                        }
                        _ => *send_errors += 1,
                    },
                    Forward::ToClient {
                        five_tuple,
                        header,
                        payload,
                        ..
                    } if five_tuple.transport == Transport::Udp => {
                        let listener = udp.iter().position(|l| l.local == five_tuple.server);
                        match (listener, rx.range_of(payload)) {
                            (Some(i), Some(range)) => outbox.push_received(
                                Source::Listener(i),
                                five_tuple.client,
                                Some(header),
                                range,
                            ),
                            _ => *send_errors += 1,
                        }
                    }
                    Forward::ToClient { .. } => stream_out.push(forward.to_transmit()),
                }
            }
            self.after_input(now);
            self.flush();
            if n < Self::batch() {
                return;
            }
        }
    }
}
