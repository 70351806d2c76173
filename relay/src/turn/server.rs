//! The TURN server core (RFC 8656): owns allocations, permissions, channel bindings and
//! reservations. It performs no IO and reads no clock: the shell feeds it bytes, answers to its
//! requests for relay sockets, and time, and drains [`Output`]s with [`Server::poll_output`].
//! Control requests live in `control.rs` (dispatch, authentication, responses), `allocate.rs`
//! and `permission.rs`, the data path in `data.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::allocate::PendingAllocate;
use super::allocation::Allocation;
use super::auth::{Credentials, NonceIssuer, UserId};
use super::config::{ServerConfig, Stats};
use super::quota::{Quotas, Reservations, Shared};
use super::types::{BindId, DeleteReason, Event, FiveTuple, Forward, Millis, Output};
use crate::stun::message::{Message, TransactionId};

/// Something that may be due at a deadline. Entries are not removed when a refresh moves the
/// deadline: a popped entry is checked against the current state and skipped if stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// An allocation's lifetime.
    Allocation(FiveTuple),
    /// An EVEN-PORT reservation's hold.
    Reservation([u8; 8]),
}

/// The sans-IO TURN server.
#[derive(Debug)]
pub struct Server {
    pub(super) config: ServerConfig,
    pub(super) credentials: Credentials,
    pub(super) nonces: NonceIssuer,
    pub(super) allocations: HashMap<FiveTuple, Allocation>,
    pub(super) by_relay: HashMap<SocketAddr, FiveTuple>,
    /// Allocation quotas, shared with the other event loops' cores.
    pub(super) quotas: Arc<Quotas>,
    /// EVEN-PORT reservations, shared with the other event loops' cores.
    pub(super) reservations: Arc<Reservations>,
    /// Allocates waiting for the shell's relay socket.
    pub(super) pending: HashMap<BindId, PendingAllocate>,
    next_bind: u64,
    counter: u64,
    outputs: VecDeque<Output>,
    /// Deadlines, earliest first: expiry costs O(log n) per allocation, never a full sweep.
    deadlines: BinaryHeap<Reverse<(Millis, Due)>>,
    pub(super) stats: Stats,
    /// Set by [`Server::start_draining`]: new allocations are refused, existing ones served.
    pub(super) draining: bool,
}

impl Server {
    /// A server with no allocations, and quotas and reservations of its own.
    pub fn new(config: ServerConfig, credentials: Credentials) -> Self {
        let shared = Shared::new(config.max_allocations_per_user, config.max_allocations);
        Self::with_shared(config, credentials, shared)
    }

    /// A server with no allocations sharing quotas and reservations with other loops' cores.
    pub fn with_shared(config: ServerConfig, credentials: Credentials, shared: Shared) -> Self {
        let nonces = NonceIssuer::new(config.secret_key, config.nonce_lifetime);
        Self {
            config,
            credentials,
            nonces,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            quotas: shared.quotas,
            reservations: shared.reservations,
            pending: HashMap::new(),
            next_bind: 0,
            counter: 0,
            outputs: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            stats: Stats::default(),
            draining: false,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Replaces the accepted credentials. Allocations made with a credential no longer accepted
    /// stop relaying at once; their next request gets 401 and ends them, or they expire.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        for a in self.allocations.values_mut() {
            a.revoked = !credentials.accepts(a.credential);
        }
        self.credentials = credentials;
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stops taking new allocations (graceful shutdown): Allocate gets 508 from now on, while
    /// existing allocations keep working until they are released, expire, or the shell stops.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Whether [`Server::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The allocation owned by a 5-tuple, for inspection.
    pub fn allocation(&self, five_tuple: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(five_tuple)
    }

    /// The next thing for the shell to do; [`Output::Timeout`] once nothing else is queued.
    pub fn poll_output(&mut self) -> Output {
        match self.outputs.pop_front() {
            Some(o) => o,
            None => Output::Timeout(self.deadlines.peek().map(|Reverse((at, _))| *at)),
        }
    }

    pub(super) fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    /// A datagram (UDP) or one framed message (TCP/TLS) from a client. Relayed data comes back
    /// at once as a [`Forward`] borrowing `bytes`; everything else is queued for
    /// [`Server::poll_output`].
    pub fn handle_datagram<'a>(
        &mut self,
        from: FiveTuple,
        bytes: &'a [u8],
        now: Millis,
    ) -> Option<Forward<'a>> {
        match bytes.first().map(|b| b >> 6) {
            Some(0b01) => self.client_channel_data(from, bytes, now),
            Some(0b00) => match Message::decode(bytes) {
                Ok(msg) => self.handle_message(from, &msg, now),
                Err(_) => {
                    self.stats.malformed += 1;
                    None
                }
            },
            _ => {
                self.stats.malformed += 1;
                None
            }
        }
    }

    /// The client's TCP/TLS connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, five_tuple: FiveTuple) {
        if self.allocations.contains_key(&five_tuple) {
            self.delete(five_tuple, DeleteReason::ConnectionClosed);
        }
        for p in self.pending.values_mut().filter(|p| p.ft == five_tuple) {
            p.cancelled = true;
        }
    }

    /// Runs what is due at `now`: allocations past their lifetime end, reservations lapse.
    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some(Reverse((at, due))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            match due {
                Due::Allocation(ft) => {
                    if self.allocations.get(&ft).is_some_and(|a| a.expires <= now) {
                        self.delete(ft, DeleteReason::Expired);
                    }
                }
                Due::Reservation(token) => {
                    if let Some(r) = self.reservations.take_lapsed(&token, now) {
                        self.push(Output::ReleaseRelay(r.relay));
                    }
                }
            }
        }
    }

    pub(super) fn schedule(&mut self, at: Millis, due: Due) {
        self.deadlines.push(Reverse((at, due)));
    }

    pub(super) fn next_bind_id(&mut self) -> BindId {
        self.next_bind = self.next_bind.wrapping_add(1);
        BindId(self.next_bind)
    }

    /// splitmix64 over a private seed: unpredictable enough for indication transaction ids and
    /// cheap enough for the data path.
    pub(super) fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let seed = u64::from_le_bytes(
            self.config
                .secret_key
                .first_chunk::<8>()
                .copied()
                .unwrap_or_default(),
        );
        let mut z = self.counter ^ seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn next_transaction_id(&mut self) -> TransactionId {
        let (a, b) = (self.next_u64().to_le_bytes(), self.next_u64().to_le_bytes());
        let mut tid = [0u8; 12];
        tid.iter_mut()
            .zip(a.iter().chain(b.iter()))
            .for_each(|(t, s)| *t = *s);
        TransactionId(tid)
    }

    /// Ends an allocation: the relay socket is released and the quota given back.
    pub(super) fn delete(&mut self, ft: FiveTuple, reason: DeleteReason) {
        let Some(a) = self.allocations.remove(&ft) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        self.release_quota(&a.user);
        self.push(Output::ReleaseRelay(a.relay));
        self.push(Output::Event(Event::AllocationDeleted {
            five_tuple: ft,
            relay: a.relay,
            reason,
            trace_id: super::auth::trace_id_of(&a.username),
        }));
    }

    pub(super) fn release_quota(&mut self, user: &UserId) {
        self.quotas.give_back(user);
    }

    /// Deadline for an allocation that lives `lifetime` from `now`.
    pub(super) fn expire_at(&mut self, ft: FiveTuple, now: Millis, lifetime: Duration) -> Millis {
        let at = now.saturating_add(lifetime);
        self.schedule(at, Due::Allocation(ft));
        at
    }
}
