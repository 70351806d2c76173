//! The TURN server core (RFC 8656): authenticates requests, owns allocations, permissions and
//! channel bindings, and turns client and peer datagrams into [`Transmit`]s. It performs no IO and
//! reads no clock: the shell feeds it bytes and time and drains its queues.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::allocation::{Allocation, Bandwidth, ChannelBinding};
use super::auth::{CredentialTag, Credentials, Lookup, NonceCheck, NonceIssuer, UserId};
use super::policy::PeerPolicy;
use super::types::{
    DeleteReason, Event, FiveTuple, PortRequest, RelayAllocator, Timestamp, Transmit,
};
use crate::stun::attributes::{self as attr, AddressFamily, AttributeType, ErrorCode};
use crate::stun::channel_data::ChannelData;
use crate::stun::message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use crate::stun::{ChannelNumber, IntegrityKey, IntegrityKind};

/// How often expired state is swept; packet handling also checks deadlines, so this only bounds
/// how long dead state lingers in memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// ERROR-CODE reason phrase of the 508 answering Allocate while draining, so an operator reading
/// a client's log can tell a shutdown from a full relay.
const DRAINING_REASON: &str = "Server Is Draining";

/// Comprehension-required attributes understood in TURN requests. DONT-FRAGMENT is understood
/// only when the relay-port pool can set DF (see `handle_request`).
const KNOWN_TURN: &[AttributeType] = &[
    attr::DONT_FRAGMENT,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::CHANNEL_NUMBER,
];

/// Comprehension-required attributes understood in Binding requests (ICE checks carry these).
const KNOWN_BINDING: &[AttributeType] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
];

/// Server policy and limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// REALM for long-term credentials.
    pub realm: String,
    /// SOFTWARE attribute in responses, if any.
    pub software: Option<String>,
    /// Address advertised in XOR-RELAYED-ADDRESS instead of the bound one (NAT, `--external-ip`).
    pub external_ip: Option<IpAddr>,
    /// RFC 8656 §7.2: 600 s.
    pub default_lifetime: Duration,
    /// Cap on requested lifetimes (3600 s).
    pub max_lifetime: Duration,
    /// RFC 8656 §9: 300 s.
    pub permission_lifetime: Duration,
    /// RFC 8656 §12: 600 s.
    pub channel_lifetime: Duration,
    /// How long a NONCE stays valid before 438.
    pub nonce_lifetime: Duration,
    /// How long an EVEN-PORT reservation is held (RFC 8656 §7.2 suggests about 30 s).
    pub reservation_lifetime: Duration,
    /// Total allocations (then 508).
    pub max_allocations: usize,
    /// Allocations per user (then 486).
    pub max_allocations_per_user: usize,
    /// Permissions per allocation (then 508).
    pub max_permissions: usize,
    /// Channel bindings per allocation (then 508).
    pub max_channels: usize,
    /// Relayed bytes per second per allocation, both directions; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Which peers may be relayed to.
    pub peer_policy: PeerPolicy,
    /// Server-private key for nonces, reservation tokens and indication transaction ids.
    pub secret_key: [u8; 32],
}

impl ServerConfig {
    /// RFC defaults with the given realm and private key.
    pub fn new(realm: impl Into<String>, secret_key: [u8; 32]) -> Self {
        Self {
            realm: realm.into(),
            software: Some(concat!("switchboard-relay/", env!("CARGO_PKG_VERSION")).to_owned()),
            external_ip: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            max_allocations: 10_000,
            max_allocations_per_user: 32,
            max_permissions: 64,
            max_channels: 64,
            bandwidth_bytes_per_sec: 0,
            peer_policy: PeerPolicy::default(),
            secret_key,
        }
    }
}

/// Authentication failures by reason (metric labels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthFailures {
    /// No MESSAGE-INTEGRITY: the normal first round trip, answered with a challenge.
    pub missing_integrity: u64,
    /// NONCE expired or not ours (438).
    pub stale_nonce: u64,
    /// REALM differs from ours.
    pub wrong_realm: u64,
    /// Username not known.
    pub unknown_user: u64,
    /// REST username past its expiry.
    pub expired: u64,
    /// MESSAGE-INTEGRITY did not verify with any accepted key.
    pub bad_integrity: u64,
    /// Username differs from the allocation's (441).
    pub wrong_credentials: u64,
}

/// Counters for metrics; the shell publishes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations ever created.
    pub allocations_created: u64,
    /// Packets relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Packets relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
    /// Authentication failures.
    pub auth_failures: AuthFailures,
    /// Requests refused with 403 because of the peer policy.
    pub denied_peers: u64,
    /// Allocations refused by quota (486) or capacity (508).
    pub quota_rejections: u64,
    /// Data dropped: no allocation, permission or channel.
    pub dropped_no_permission: u64,
    /// Data dropped by the bandwidth cap.
    pub dropped_rate_limited: u64,
    /// Datagrams that were neither STUN nor ChannelData, or malformed.
    pub malformed: u64,
}

/// RFC 8656 §7.2 leaves the lifetime to the server: an allocation made with a TURN REST
/// credential never outlives that credential.
fn capped_by_credential(
    lifetime: Duration,
    credential_expires: Option<Timestamp>,
    now: Timestamp,
) -> Duration {
    credential_expires.map_or(lifetime, |e| lifetime.min(e.since(now)))
}

/// LIFETIME in whole seconds; a live allocation never announces 0 (which means "deleted").
fn lifetime_secs(lifetime: Duration) -> u32 {
    match u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX) {
        0 if !lifetime.is_zero() => 1,
        s => s,
    }
}

/// Whether `auth` is a REST credential for the same subject (`<expiry>:<id>` with the same
/// `<id>`) as the one `a` was made with: a newer credential of the same user may refresh it.
fn same_rest_subject(a: &Allocation, auth: &Authenticated) -> bool {
    a.credential_expires.is_some()
        && auth.expires.is_some()
        && a.user == auth.user
        && a.username.split_once(':').map(|(_, id)| id)
            == auth.username.split_once(':').map(|(_, id)| id)
}

/// A request that passed long-term authentication.
struct Authenticated {
    key: IntegrityKey,
    kind: IntegrityKind,
    username: Box<str>,
    user: UserId,
    tag: CredentialTag,
    expires: Option<Timestamp>,
}

/// An EVEN-PORT reservation (RFC 8656 §7.2: R bit).
#[derive(Debug, Clone, Copy)]
struct Reservation {
    relay: SocketAddr,
    expires: Timestamp,
}

/// The sans-IO TURN server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    credentials: Credentials,
    nonces: NonceIssuer,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<UserId, usize>,
    reservations: HashMap<[u8; 8], Reservation>,
    counter: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_sweep: Option<Timestamp>,
    stats: Stats,
    /// Set by [`Server::start_draining`]: new allocations are refused, existing ones served.
    draining: bool,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticated(..)")
    }
}

impl Server {
    /// A server with no allocations.
    pub fn new(config: ServerConfig, credentials: Credentials) -> Self {
        let nonces = NonceIssuer::new(config.secret_key, config.nonce_lifetime);
        Self {
            config,
            credentials,
            nonces,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            counter: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_sweep: None,
            stats: Stats::default(),
            draining: false,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Replaces the accepted credentials; allocations made with a credential no longer accepted
    /// are revoked at their next request (401), or expire at the end of their lifetime.
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

    /// Next outgoing datagram.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next lifecycle event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.next_sweep
    }

    /// A datagram (UDP) or one framed message (TCP/TLS) from a client.
    pub fn handle_datagram(
        &mut self,
        from: FiveTuple,
        bytes: &[u8],
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) {
        match bytes.first().map(|b| b >> 6) {
            Some(0b01) => self.client_channel_data(from, bytes, now),
            Some(0b00) => match Message::decode(bytes) {
                Ok(msg) => self.handle_message(from, &msg, now, ports),
                Err(_) => self.stats.malformed += 1,
            },
            _ => self.stats.malformed += 1,
        }
    }

    /// A datagram that arrived at relayed address `relay` from `peer`.
    pub fn handle_peer_datagram(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        bytes: &[u8],
        now: Timestamp,
    ) {
        let Some(ft) = self.by_relay.get(&relay).copied() else {
            return;
        };
        let rate = self.config.bandwidth_bytes_per_sec;
        let Some(a) = self.allocations.get_mut(&ft).filter(|a| a.is_live(now)) else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        // RFC 8656 §10.3: data from a peer without a permission is silently discarded.
        if !a.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if !a.bandwidth.take(bytes.len(), rate, now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let payload = match a.channel_for_peer(peer, now) {
            Some(ch) => ChannelData::encode(ch.number, bytes, ft.transport.is_stream()),
            None => {
                let tid = self.next_transaction_id();
                MessageBuilder::new(MessageType::new(Method::DATA, Class::Indication), tid)
                    .xor_address(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, bytes)
                    .finish()
            }
        };
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += bytes.len() as u64;
        self.transmits.push_back(Transmit::Client {
            five_tuple: ft,
            payload,
        });
    }

    /// The client's TCP/TLS connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn handle_connection_closed(
        &mut self,
        five_tuple: FiveTuple,
        ports: &mut impl RelayAllocator,
    ) {
        if self.allocations.contains_key(&five_tuple) {
            self.delete(five_tuple, DeleteReason::ConnectionClosed, ports);
        }
    }

    /// Expires allocations, permissions, channels and reservations due at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp, ports: &mut impl RelayAllocator) {
        if self.next_sweep.is_none_or(|t| t > now) {
            return;
        }
        let expired: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(ft, _)| *ft)
            .collect();
        for ft in expired {
            self.delete(ft, DeleteReason::Expired, ports);
        }
        for a in self.allocations.values_mut() {
            a.sweep(now);
        }
        let lapsed: Vec<[u8; 8]> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in lapsed {
            if let Some(r) = self.reservations.remove(&token) {
                ports.release(r.relay);
            }
        }
        self.next_sweep = (!self.allocations.is_empty() || !self.reservations.is_empty())
            .then(|| now.plus(SWEEP_INTERVAL));
    }

    fn arm_sweep(&mut self, now: Timestamp) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now.plus(SWEEP_INTERVAL));
        }
    }

    /// splitmix64 over a private seed: unpredictable enough for indication transaction ids and
    /// cheap enough for the data path.
    fn next_u64(&mut self) -> u64 {
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

    fn next_transaction_id(&mut self) -> TransactionId {
        let (a, b) = (self.next_u64().to_le_bytes(), self.next_u64().to_le_bytes());
        let mut tid = [0u8; 12];
        tid.iter_mut()
            .zip(a.iter().chain(b.iter()))
            .for_each(|(t, s)| *t = *s);
        TransactionId(tid)
    }

    /// RESERVATION-TOKEN: a MAC of a counter, so tokens cannot be guessed.
    fn mint_reservation_token(&mut self) -> [u8; 8] {
        let n = self.next_u64();
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.config.secret_key) else {
            return n.to_be_bytes();
        };
        mac.update(&n.to_be_bytes());
        mac.finalize()
            .into_bytes()
            .first_chunk::<8>()
            .copied()
            .unwrap_or(n.to_be_bytes())
    }

    fn handle_message(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) {
        // RFC 8489 §7.3: a wrong FINGERPRINT means the message is not STUN after all.
        if msg.has_fingerprint() && !msg.verify_fingerprint() {
            self.stats.malformed += 1;
            return;
        }
        match msg.typ.class {
            Class::Request => self.handle_request(ft, msg, now, ports),
            Class::Indication if msg.typ.method == Method::SEND => self.handle_send(ft, msg, now),
            // Responses and other indications are not addressed to a server.
            _ => {}
        }
    }

    fn handle_request(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) {
        let method = msg.typ.method;
        if method == Method::BINDING {
            let unknown = msg.unknown_required(KNOWN_BINDING);
            if !unknown.is_empty() {
                return self.error(ft, msg, None, ErrorCode::UNKNOWN_ATTRIBUTE, &unknown);
            }
            return self.respond(ft, msg, Class::Success, None, |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
            });
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return self.error(ft, msg, None, ErrorCode::BAD_REQUEST, &[]);
        }
        let Some(auth) = self.authenticate(ft, msg, now, ports) else {
            return;
        };
        let mut unknown = msg.unknown_required(KNOWN_TURN);
        // RFC 8656 §7.2: a server that cannot set DF treats DONT-FRAGMENT as unknown.
        if method == Method::ALLOCATE
            && msg.get(attr::DONT_FRAGMENT).is_some()
            && !ports.supports_dont_fragment()
        {
            unknown.push(attr::DONT_FRAGMENT);
        }
        if !unknown.is_empty() {
            return self.error(ft, msg, Some(&auth), ErrorCode::UNKNOWN_ATTRIBUTE, &unknown);
        }
        let result = match method {
            // A retransmitted Allocate of a live allocation is still answered as the first time.
            Method::ALLOCATE
                if self.draining && self.allocations.get(&ft).is_none_or(|a| a.expires <= now) =>
            {
                self.stats.quota_rejections += 1;
                return self.respond(ft, msg, Class::Error, Some(&auth), |b| {
                    b.attr(
                        attr::ERROR_CODE,
                        &attr::encode_error_code_with_reason(
                            ErrorCode::INSUFFICIENT_CAPACITY,
                            DRAINING_REASON,
                        ),
                    );
                });
            }
            Method::ALLOCATE => self.allocate(ft, msg, &auth, now, ports),
            Method::REFRESH => self.refresh(ft, msg, &auth, now, ports),
            Method::CREATE_PERMISSION => self.create_permission(ft, msg, &auth, now),
            _ => self.channel_bind(ft, msg, &auth, now),
        };
        if let Err(code) = result {
            self.error(ft, msg, Some(&auth), code, &[]);
        }
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order.
    fn authenticate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) -> Option<Authenticated> {
        let Some(kind) = msg.integrity_kind() else {
            self.stats.auth_failures.missing_integrity += 1;
            self.challenge(ft, msg, now, ErrorCode::UNAUTHENTICATED);
            return None;
        };
        let text = |t| msg.get(t).and_then(|v| attr::decode_text(v, t).ok());
        let (Some(username), Some(realm), Some(nonce)) = (
            text(attr::USERNAME),
            text(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.error(ft, msg, None, ErrorCode::BAD_REQUEST, &[]);
            return None;
        };
        if self.nonces.check(nonce, ft.client, now) == NonceCheck::Stale {
            self.stats.auth_failures.stale_nonce += 1;
            self.challenge(ft, msg, now, ErrorCode::STALE_NONCE);
            return None;
        }
        if realm != self.config.realm {
            self.stats.auth_failures.wrong_realm += 1;
            self.challenge(ft, msg, now, ErrorCode::UNAUTHENTICATED);
            return None;
        }
        let (candidates, user, expires) =
            match self.credentials.lookup(username, &self.config.realm, now) {
                Lookup::Keys {
                    candidates,
                    user,
                    expires,
                } => (candidates, user, expires),
                Lookup::Expired => {
                    // The credential's lifetime bounds the allocation's: end it now.
                    self.stats.auth_failures.expired += 1;
                    self.revoke_if_owned(ft, username, false, ports);
                    self.challenge(ft, msg, now, ErrorCode::UNAUTHENTICATED);
                    return None;
                }
                Lookup::Unknown => {
                    self.stats.auth_failures.unknown_user += 1;
                    self.challenge(ft, msg, now, ErrorCode::UNAUTHENTICATED);
                    return None;
                }
            };
        let Some(found) = candidates
            .into_iter()
            .find(|c| msg.verify_integrity(&c.key))
        else {
            self.stats.auth_failures.bad_integrity += 1;
            // Only an allocation already marked revoked is ended: a forged MAC must not be able
            // to tear down someone else's allocation.
            self.revoke_if_owned(ft, username, true, ports);
            self.challenge(ft, msg, now, ErrorCode::UNAUTHENTICATED);
            return None;
        };
        Some(Authenticated {
            key: found.key,
            kind,
            username: username.into(),
            user,
            tag: found.tag,
            expires,
        })
    }

    fn revoke_if_owned(
        &mut self,
        ft: FiveTuple,
        username: &str,
        only_if_revoked: bool,
        ports: &mut impl RelayAllocator,
    ) {
        let owned = self
            .allocations
            .get(&ft)
            .is_some_and(|a| &*a.username == username && (a.revoked || !only_if_revoked));
        if owned {
            self.delete(ft, DeleteReason::Revoked, ports);
        }
    }

    /// RFC 8656 §7.2.
    fn allocate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) -> Result<(), ErrorCode> {
        // An allocation past its lifetime but not yet swept is gone as far as the client knows.
        if self.allocations.get(&ft).is_some_and(|a| a.expires <= now) {
            self.delete(ft, DeleteReason::Expired, ports);
        }
        if let Some(a) = self.allocations.get(&ft) {
            if a.allocate_tid == msg.transaction_id && *a.username == *auth.username {
                // A retransmission: answer as the first time, with the time left.
                let (relay, left) = (a.relay, a.expires.since(now));
                self.allocate_success(ft, msg, auth, relay, left, None);
                return Ok(());
            }
            return Err(ErrorCode::ALLOCATION_MISMATCH);
        }
        let bad = |_| ErrorCode::BAD_REQUEST;
        let transport = msg
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or(ErrorCode::BAD_REQUEST)?;
        if attr::decode_requested_transport(transport).map_err(bad)? != attr::TRANSPORT_UDP {
            return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL);
        }
        let token = msg
            .get(attr::RESERVATION_TOKEN)
            .map(attr::decode_reservation_token)
            .transpose()
            .map_err(bad)?;
        let even = msg
            .get(attr::EVEN_PORT)
            .map(attr::decode_even_port)
            .transpose()
            .map_err(bad)?;
        let family = msg
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .map(|v| attr::decode_address_family(v, attr::REQUESTED_ADDRESS_FAMILY))
            .transpose()
            .map_err(|_| ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED)?;
        // RFC 8656 §7.2: RESERVATION-TOKEN excludes both EVEN-PORT and REQUESTED-ADDRESS-FAMILY.
        if token.is_some() && (even.is_some() || family.is_some()) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let family = family.unwrap_or(AddressFamily::V4);
        if !ports.supports(family) {
            return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        }
        let lifetime = self.desired_lifetime(msg)?;
        let lifetime = if lifetime.is_zero() {
            self.config.default_lifetime
        } else {
            lifetime
        };
        let lifetime = capped_by_credential(lifetime, auth.expires, now);
        if self.per_user.get(&auth.user).copied().unwrap_or(0)
            >= self.config.max_allocations_per_user
        {
            self.stats.quota_rejections += 1;
            return Err(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        if self.allocations.len() >= self.config.max_allocations {
            self.stats.quota_rejections += 1;
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let request = match (token, even) {
            (Some(token), _) => match self.reservations.remove(&token) {
                Some(r) if r.expires > now => PortRequest::Reserved(r.relay),
                Some(r) => {
                    ports.release(r.relay);
                    return Err(ErrorCode::INSUFFICIENT_CAPACITY);
                }
                None => return Err(ErrorCode::INSUFFICIENT_CAPACITY),
            },
            (None, Some(reserve_next)) => PortRequest::Even {
                family,
                reserve_next,
            },
            (None, None) => PortRequest::Any(family),
        };
        let relay = ports
            .allocate(request)
            .ok_or(ErrorCode::INSUFFICIENT_CAPACITY)?;
        if msg.get(attr::DONT_FRAGMENT).is_some() && !ports.set_dont_fragment(relay) {
            ports.release(relay);
            if let (
                PortRequest::Even {
                    reserve_next: true, ..
                },
                Some(port),
            ) = (request, relay.port().checked_add(1))
            {
                ports.release(SocketAddr::new(relay.ip(), port));
            }
            return Err(ErrorCode::SERVER_ERROR);
        }
        let reservation = match request {
            PortRequest::Even {
                reserve_next: true, ..
            } => match relay.port().checked_add(1) {
                Some(port) => {
                    let token = self.mint_reservation_token();
                    let r = Reservation {
                        relay: SocketAddr::new(relay.ip(), port),
                        expires: now.plus(self.config.reservation_lifetime),
                    };
                    self.reservations.insert(token, r);
                    Some(token)
                }
                None => None,
            },
            _ => None,
        };
        let allocation = Allocation {
            five_tuple: ft,
            relay,
            username: auth.username.clone(),
            user: auth.user.clone(),
            credential: auth.tag,
            credential_expires: auth.expires,
            revoked: false,
            expires: now.plus(lifetime),
            allocate_tid: msg.transaction_id,
            permissions: Vec::new(),
            channels: Vec::new(),
            bandwidth: Bandwidth::new(self.config.bandwidth_bytes_per_sec, now),
        };
        self.allocations.insert(ft, allocation);
        self.by_relay.insert(relay, ft);
        *self.per_user.entry(auth.user.clone()).or_insert(0) += 1;
        self.stats.allocations_created += 1;
        self.events.push_back(Event::AllocationCreated {
            five_tuple: ft,
            relay,
        });
        self.arm_sweep(now);
        self.allocate_success(ft, msg, auth, relay, lifetime, reservation);
        Ok(())
    }

    fn allocate_success(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        relay: SocketAddr,
        lifetime: Duration,
        reservation: Option<[u8; 8]>,
    ) {
        let advertised =
            SocketAddr::new(self.config.external_ip.unwrap_or(relay.ip()), relay.port());
        let secs = lifetime_secs(lifetime);
        self.respond(ft, msg, Class::Success, Some(auth), |b| {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, advertised)
                .u32_attr(attr::LIFETIME, secs);
            if let Some(token) = reservation {
                b.attr(attr::RESERVATION_TOKEN, &token);
            }
            b.xor_address(attr::XOR_MAPPED_ADDRESS, ft.client);
        });
    }

    /// RFC 8656 §7.2/§8: min(requested, max), but never below the default; zero stays zero.
    fn desired_lifetime(&self, msg: &Message<'_>) -> Result<Duration, ErrorCode> {
        let Some(v) = msg.get(attr::LIFETIME) else {
            return Ok(self.config.default_lifetime);
        };
        let secs = attr::decode_u32(v, attr::LIFETIME).map_err(|_| ErrorCode::BAD_REQUEST)?;
        if secs == 0 {
            return Ok(Duration::ZERO);
        }
        Ok(Duration::from_secs(u64::from(secs))
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime))
    }

    /// The caller's allocation, checked against the request's username (437, 441).
    fn owned_allocation(
        &mut self,
        ft: FiveTuple,
        auth: &Authenticated,
        now: Timestamp,
    ) -> Result<&mut Allocation, ErrorCode> {
        let a = self
            .allocations
            .get_mut(&ft)
            .filter(|a| a.expires > now)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if *a.username != *auth.username && !same_rest_subject(a, auth) {
            self.stats.auth_failures.wrong_credentials += 1;
            return Err(ErrorCode::WRONG_CREDENTIALS);
        }
        Ok(a)
    }

    /// RFC 8656 §8.
    fn refresh(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Timestamp,
        ports: &mut impl RelayAllocator,
    ) -> Result<(), ErrorCode> {
        let lifetime = self.desired_lifetime(msg)?;
        let a = self.owned_allocation(ft, auth, now)?;
        if let Some(v) = msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            let family = attr::decode_address_family(v, attr::REQUESTED_ADDRESS_FAMILY)
                .map_err(|_| ErrorCode::BAD_REQUEST)?;
            if family != AddressFamily::of(a.relay) {
                return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
            }
        }
        let lifetime = if lifetime.is_zero() {
            self.delete(ft, DeleteReason::Refreshed, ports);
            lifetime
        } else {
            // A Refresh with a newer REST credential of the same user moves the allocation onto
            // it, so a client that fetched fresh credentials keeps its relayed address.
            let lifetime = capped_by_credential(lifetime, auth.expires, now);
            a.expires = now.plus(lifetime);
            a.username.clone_from(&auth.username);
            a.credential = auth.tag;
            a.credential_expires = auth.expires;
            a.revoked = false;
            lifetime
        };
        let secs = lifetime_secs(lifetime);
        self.respond(ft, msg, Class::Success, Some(auth), |b| {
            b.u32_attr(attr::LIFETIME, secs);
        });
        Ok(())
    }

    /// Decodes XOR-PEER-ADDRESS values and applies the family (443) and peer policy (403) checks.
    fn checked_peers(
        &mut self,
        msg: &Message<'_>,
        relay: SocketAddr,
    ) -> Result<Vec<SocketAddr>, ErrorCode> {
        let peers = msg
            .get_all(attr::XOR_PEER_ADDRESS)
            .map(|v| attr::decode_xor_address(v, &msg.transaction_id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ErrorCode::BAD_REQUEST)?;
        if peers.is_empty() {
            return Err(ErrorCode::BAD_REQUEST);
        }
        if peers
            .iter()
            .any(|p| AddressFamily::of(*p) != AddressFamily::of(relay))
        {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if peers
            .iter()
            .any(|p| !self.config.peer_policy.is_allowed(p.ip()))
        {
            self.stats.denied_peers += 1;
            return Err(ErrorCode::FORBIDDEN);
        }
        Ok(peers)
    }

    /// RFC 8656 §9: all peers are validated before any permission is installed.
    fn create_permission(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Timestamp,
    ) -> Result<(), ErrorCode> {
        let relay = self.owned_allocation(ft, auth, now)?.relay;
        let peers = self.checked_peers(msg, relay)?;
        let expires = now.plus(self.config.permission_lifetime);
        let max = self.config.max_permissions;
        let a = self.owned_allocation(ft, auth, now)?;
        a.sweep(now);
        let new = peers.iter().filter(|p| !a.permits(p.ip(), now)).count();
        if a.permissions.len() + new > max {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        for p in &peers {
            a.permit(p.ip(), expires, max);
        }
        self.respond(ft, msg, Class::Success, Some(auth), |_| {});
        Ok(())
    }

    /// RFC 8656 §11.2.
    fn channel_bind(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Timestamp,
    ) -> Result<(), ErrorCode> {
        let relay = self.owned_allocation(ft, auth, now)?.relay;
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .map(attr::decode_channel_number)
            .transpose()
            .map_err(|_| ErrorCode::BAD_REQUEST)?
            .map(ChannelNumber)
            .filter(|n| n.is_valid())
            .ok_or(ErrorCode::BAD_REQUEST)?;
        if msg.get_all(attr::XOR_PEER_ADDRESS).count() != 1 {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let peer = self
            .checked_peers(msg, relay)?
            .first()
            .copied()
            .ok_or(ErrorCode::BAD_REQUEST)?;
        let (channel_expires, permission_expires) = (
            now.plus(self.config.channel_lifetime),
            now.plus(self.config.permission_lifetime),
        );
        let (max_channels, max_permissions) =
            (self.config.max_channels, self.config.max_permissions);
        let a = self.owned_allocation(ft, auth, now)?;
        a.sweep(now);
        // RFC 8656 §11.2: a number is bound to one peer and a peer to one number.
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        if by_number != by_peer {
            return Err(ErrorCode::BAD_REQUEST);
        }
        if by_number.is_none() && a.channels.len() >= max_channels {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        if !a.permit(peer.ip(), permission_expires, max_permissions) {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        match by_number.and_then(|i| a.channels.get_mut(i)) {
            Some(c) => c.expires = channel_expires,
            None => a.bind(ChannelBinding {
                number,
                peer,
                expires: channel_expires,
            }),
        }
        self.respond(ft, msg, Class::Success, Some(auth), |_| {});
        Ok(())
    }

    /// RFC 8656 §10.2: Send indications are never answered; problems mean a silent drop.
    fn handle_send(&mut self, ft: FiveTuple, msg: &Message<'_>, now: Timestamp) {
        let rate = self.config.bandwidth_bytes_per_sec;
        let Some(a) = self.allocations.get_mut(&ft).filter(|a| a.is_live(now)) else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        let (Some(Ok(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.malformed += 1;
            return;
        };
        if AddressFamily::of(peer) != AddressFamily::of(a.relay) || !a.permits(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if !a.bandwidth.take(data.len(), rate, now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        self.transmits.push_back(Transmit::Peer {
            relay: a.relay,
            peer,
            payload: data.to_vec(),
        });
    }

    /// RFC 8656 §12.6: ChannelData on an unbound channel or without permission is dropped.
    fn client_channel_data(&mut self, ft: FiveTuple, bytes: &[u8], now: Timestamp) {
        let Ok(cd) = ChannelData::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let rate = self.config.bandwidth_bytes_per_sec;
        let Some(a) = self.allocations.get_mut(&ft).filter(|a| a.is_live(now)) else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        let Some(peer) = a
            .channel(cd.channel, now)
            .map(|c| c.peer)
            .filter(|p| a.permits(p.ip(), now))
        else {
            self.stats.dropped_no_permission += 1;
            return;
        };
        if !a.bandwidth.take(cd.data.len(), rate, now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += cd.data.len() as u64;
        self.transmits.push_back(Transmit::Peer {
            relay: a.relay,
            peer,
            payload: cd.data.to_vec(),
        });
    }

    fn delete(&mut self, ft: FiveTuple, reason: DeleteReason, ports: &mut impl RelayAllocator) {
        let Some(a) = self.allocations.remove(&ft) else {
            return;
        };
        self.by_relay.remove(&a.relay);
        if let Some(n) = self.per_user.get_mut(&a.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&a.user);
            }
        }
        ports.release(a.relay);
        self.events.push_back(Event::AllocationDeleted {
            five_tuple: ft,
            relay: a.relay,
            reason,
        });
    }

    fn respond(
        &mut self,
        ft: FiveTuple,
        req: &Message<'_>,
        class: Class,
        auth: Option<&Authenticated>,
        build: impl FnOnce(&mut MessageBuilder),
    ) {
        let mut b =
            MessageBuilder::new(MessageType::new(req.typ.method, class), req.transaction_id);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        build(&mut b);
        if let Some(a) = auth {
            b.integrity(a.kind, &a.key);
        }
        // RFC 8489 §7.3: answer with FINGERPRINT when the request used it.
        if req.has_fingerprint() {
            b.fingerprint();
        }
        self.transmits.push_back(Transmit::Client {
            five_tuple: ft,
            payload: b.finish(),
        });
    }

    fn error(
        &mut self,
        ft: FiveTuple,
        req: &Message<'_>,
        auth: Option<&Authenticated>,
        code: ErrorCode,
        unknown: &[AttributeType],
    ) {
        self.respond(ft, req, Class::Error, auth, |b| {
            b.error_code(code);
            if !unknown.is_empty() {
                b.unknown_attributes(unknown);
            }
        });
    }

    /// 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4).
    fn challenge(&mut self, ft: FiveTuple, req: &Message<'_>, now: Timestamp, code: ErrorCode) {
        let nonce = self.nonces.mint(ft.client, now);
        let realm = self.config.realm.clone();
        self.respond(ft, req, Class::Error, None, |b| {
            b.error_code(code)
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
        });
    }
}
