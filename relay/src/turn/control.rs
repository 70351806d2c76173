//! Control requests (RFC 8656 §7-§11): long-term authentication, Allocate, Refresh,
//! CreatePermission and ChannelBind, and the responses to them. Allocate asks the shell for a
//! relay socket through [`Output::BindRelay`] and finishes in [`Server::handle_relay_bound`].

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::allocation::{Allocation, Bandwidth, ChannelBinding};
use super::auth::{CredentialTag, Lookup, NonceCheck, UserId};
use super::quota::{QuotaExceeded, Reservation};
use super::server::{Due, Server};
use super::types::{
    BindFailure, BindId, DeleteReason, Event, FiveTuple, Forward, Millis, Output, PortRequest,
    Transmit,
};
use crate::stun::attributes::{self as attr, AddressFamily, AttributeType, ErrorCode};
use crate::stun::message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use crate::stun::{ChannelNumber, IntegrityKey, IntegrityKind};

/// ERROR-CODE reason phrase of the 508 answering Allocate while draining, so an operator reading
/// a client's log can tell a shutdown from a full relay.
const DRAINING_REASON: &str = "Server Is Draining";

/// Comprehension-required attributes understood in TURN requests. DONT-FRAGMENT is understood
/// only when the shell can set DF (see `handle_request`).
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

/// A request that passed long-term authentication.
#[derive(Clone)]
pub(super) struct Authenticated {
    key: IntegrityKey,
    kind: IntegrityKind,
    username: Box<str>,
    user: UserId,
    tag: CredentialTag,
    expires: Option<Millis>,
}

impl std::fmt::Debug for Authenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticated(..)")
    }
}

/// What a response needs of its request, kept when the answer is deferred.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyTo {
    method: Method,
    tid: TransactionId,
    /// RFC 8489 §7.3: answer with FINGERPRINT when the request used it.
    fingerprint: bool,
}

impl ReplyTo {
    fn of(msg: &Message<'_>) -> Self {
        Self {
            method: msg.typ.method,
            tid: msg.transaction_id,
            fingerprint: msg.has_fingerprint(),
        }
    }
}

/// An Allocate waiting for its relay socket.
#[derive(Debug)]
pub(super) struct PendingAllocate {
    pub(super) ft: FiveTuple,
    reply: ReplyTo,
    auth: Authenticated,
    lifetime: Duration,
    request: PortRequest,
    /// The client's connection closed meanwhile: release the socket when it comes.
    pub(super) cancelled: bool,
}

/// RFC 8656 §7.2 leaves the lifetime to the server: an allocation made with a TURN REST
/// credential never outlives that credential.
fn capped_by_credential(
    lifetime: Duration,
    credential_expires: Option<Millis>,
    now: Millis,
) -> Duration {
    credential_expires.map_or(lifetime, |e| lifetime.min(e.duration_since(now)))
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

impl Server {
    pub(super) fn handle_message<'a>(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'a>,
        now: Millis,
    ) -> Option<Forward<'a>> {
        // RFC 8489 §7.3: a wrong FINGERPRINT means the message is not STUN after all.
        if msg.has_fingerprint() && !msg.verify_fingerprint() {
            self.stats.malformed += 1;
            return None;
        }
        match msg.typ.class {
            Class::Request => {
                self.handle_request(ft, msg, now);
                None
            }
            Class::Indication if msg.typ.method == Method::SEND => self.handle_send(ft, msg, now),
            // Responses and other indications are not addressed to a server.
            _ => None,
        }
    }

    fn handle_request(&mut self, ft: FiveTuple, msg: &Message<'_>, now: Millis) {
        let method = msg.typ.method;
        let reply = ReplyTo::of(msg);
        if method == Method::BINDING {
            let unknown = msg.unknown_required(KNOWN_BINDING);
            if !unknown.is_empty() {
                return self.error(ft, reply, None, ErrorCode::UNKNOWN_ATTRIBUTE, &unknown);
            }
            return self.respond(ft, reply, Class::Success, None, |b| {
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
            return self.error(ft, reply, None, ErrorCode::BAD_REQUEST, &[]);
        }
        let Some(auth) = self.authenticate(ft, msg, now) else {
            return;
        };
        // Control requests only (never the data path): the span carries the Switchboard trace
        // from the username into every log line and exported span. The user id is not logged.
        let _span = tracing::info_span!(
            "turn.request",
            method = match method {
                Method::ALLOCATE => "allocate",
                Method::REFRESH => "refresh",
                Method::CREATE_PERMISSION => "create_permission",
                _ => "channel_bind",
            },
            trace_id = super::auth::parse_rest_username(&auth.username)
                .and_then(|u| u.trace)
                .map(tracing::field::display),
        )
        .entered();
        let mut unknown = msg.unknown_required(KNOWN_TURN);
        // RFC 8656 §7.2: a server that cannot set DF treats DONT-FRAGMENT as unknown.
        if method == Method::ALLOCATE
            && msg.get(attr::DONT_FRAGMENT).is_some()
            && !self.config.dont_fragment
        {
            unknown.push(attr::DONT_FRAGMENT);
        }
        if !unknown.is_empty() {
            return self.error(
                ft,
                reply,
                Some(&auth),
                ErrorCode::UNKNOWN_ATTRIBUTE,
                &unknown,
            );
        }
        let result = match method {
            // A retransmitted Allocate of a live allocation is still answered as the first time.
            Method::ALLOCATE
                if self.draining && self.allocations.get(&ft).is_none_or(|a| a.expires <= now) =>
            {
                self.stats.quota_rejections += 1;
                return self.respond(ft, reply, Class::Error, Some(&auth), |b| {
                    b.attr(
                        attr::ERROR_CODE,
                        &attr::encode_error_code_with_reason(
                            ErrorCode::INSUFFICIENT_CAPACITY,
                            DRAINING_REASON,
                        ),
                    );
                });
            }
            Method::ALLOCATE => self.allocate(ft, msg, &auth, now),
            Method::REFRESH => self.refresh(ft, msg, &auth, now),
            Method::CREATE_PERMISSION => self.create_permission(ft, msg, &auth, now),
            _ => self.channel_bind(ft, msg, &auth, now),
        };
        if let Err(code) = result {
            self.error(ft, reply, Some(&auth), code, &[]);
        }
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order.
    fn authenticate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Millis,
    ) -> Option<Authenticated> {
        let reply = ReplyTo::of(msg);
        let Some(kind) = msg.integrity_kind() else {
            self.stats.auth_failures.missing_integrity += 1;
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
            return None;
        };
        let text = |t| msg.get(t).and_then(|v| attr::decode_text(v, t).ok());
        let (Some(username), Some(realm), Some(nonce)) = (
            text(attr::USERNAME),
            text(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.error(ft, reply, None, ErrorCode::BAD_REQUEST, &[]);
            return None;
        };
        if self.nonces.check(nonce, ft.client, now) == NonceCheck::Stale {
            self.stats.auth_failures.stale_nonce += 1;
            self.challenge(ft, reply, now, ErrorCode::STALE_NONCE);
            return None;
        }
        if realm != self.config.realm {
            self.stats.auth_failures.wrong_realm += 1;
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
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
                    self.revoke_if_owned(ft, username, false);
                    self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
                    return None;
                }
                Lookup::Unknown => {
                    self.stats.auth_failures.unknown_user += 1;
                    self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
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
            self.revoke_if_owned(ft, username, true);
            self.challenge(ft, reply, now, ErrorCode::UNAUTHENTICATED);
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

    fn revoke_if_owned(&mut self, ft: FiveTuple, username: &str, only_if_revoked: bool) {
        let owned = self
            .allocations
            .get(&ft)
            .is_some_and(|a| &*a.username == username && (a.revoked || !only_if_revoked));
        if owned {
            self.delete(ft, DeleteReason::Revoked);
        }
    }

    /// RFC 8656 §7.2, up to the request for a relay socket.
    fn allocate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Millis,
    ) -> Result<(), ErrorCode> {
        // An allocation past its lifetime but not yet deleted is gone as far as the client knows.
        if self.allocations.get(&ft).is_some_and(|a| a.expires <= now) {
            self.delete(ft, DeleteReason::Expired);
        }
        if let Some(a) = self.allocations.get(&ft) {
            if a.allocate_tid == msg.transaction_id && *a.username == *auth.username {
                // A retransmission: answer as the first time, with the time left.
                let (relay, left) = (a.relay, a.expires.duration_since(now));
                self.allocate_success(ft, ReplyTo::of(msg), auth, relay, left, None);
                return Ok(());
            }
            return Err(ErrorCode::ALLOCATION_MISMATCH);
        }
        if self.pending.values().any(|p| p.ft == ft) {
            // A retransmission while the socket is being bound: the first one gets the answer.
            return Ok(());
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
        if !self.config.relay_families.contains(&family) {
            return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
        }
        let lifetime = self.desired_lifetime(msg)?;
        let lifetime = if lifetime.is_zero() {
            self.config.default_lifetime
        } else {
            lifetime
        };
        let lifetime = capped_by_credential(lifetime, auth.expires, now);
        let request = match (token, even) {
            (Some(token), _) => match self.reservations.take(&token) {
                Some(r) if r.expires > now => PortRequest::Reserved(r.relay),
                Some(r) => {
                    self.push(Output::ReleaseRelay(r.relay));
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
        // The quota counts the allocation from now on, so concurrent Allocates (on this loop or
        // another) cannot pass it.
        if let Err(e) = self.quotas.try_take(&auth.user) {
            self.stats.quota_rejections += 1;
            if e == QuotaExceeded::User {
                tracing::info!("allocation refused: per-user quota reached");
            }
            if let PortRequest::Reserved(relay) = request {
                self.push(Output::ReleaseRelay(relay));
            }
            return Err(match e {
                QuotaExceeded::User => ErrorCode::ALLOCATION_QUOTA_REACHED,
                QuotaExceeded::Total => ErrorCode::INSUFFICIENT_CAPACITY,
            });
        }
        let id = self.next_bind_id();
        self.pending.insert(
            id,
            PendingAllocate {
                ft,
                reply: ReplyTo::of(msg),
                auth: auth.clone(),
                lifetime,
                request,
                cancelled: false,
            },
        );
        self.push(Output::BindRelay {
            id,
            request,
            dont_fragment: msg.get(attr::DONT_FRAGMENT).is_some(),
        });
        Ok(())
    }

    /// The shell's answer to [`Output::BindRelay`]: the Allocate is completed and answered.
    pub fn handle_relay_bound(
        &mut self,
        id: BindId,
        result: Result<SocketAddr, BindFailure>,
        now: Millis,
    ) {
        let Some(p) = self.pending.remove(&id) else {
            // Not ours (any more): give the socket back.
            if let Ok(relay) = result {
                self.push(Output::ReleaseRelay(relay));
            }
            return;
        };
        let relay = match result {
            Ok(relay) if !p.cancelled => relay,
            other => {
                self.release_quota(&p.auth.user);
                if let Ok(relay) = other {
                    self.push(Output::ReleaseRelay(relay));
                    if let PortRequest::Even {
                        reserve_next: true, ..
                    } = p.request
                        && let Some(port) = relay.port().checked_add(1)
                    {
                        self.push(Output::ReleaseRelay(SocketAddr::new(relay.ip(), port)));
                    }
                    return;
                }
                let code = match other {
                    Err(BindFailure::DontFragment) => ErrorCode::SERVER_ERROR,
                    _ => ErrorCode::INSUFFICIENT_CAPACITY,
                };
                return self.error(p.ft, p.reply, Some(&p.auth), code, &[]);
            }
        };
        let reservation = match p.request {
            PortRequest::Even {
                reserve_next: true, ..
            } => match relay.port().checked_add(1) {
                Some(port) => {
                    let token = self.mint_reservation_token();
                    let expires = now.saturating_add(self.config.reservation_lifetime);
                    self.reservations.insert(
                        token,
                        Reservation {
                            relay: SocketAddr::new(relay.ip(), port),
                            expires,
                        },
                    );
                    self.schedule(expires, Due::Reservation(token));
                    Some(token)
                }
                None => None,
            },
            _ => None,
        };
        let ft = p.ft;
        let expires = self.expire_at(ft, now, p.lifetime);
        let allocation = Allocation {
            five_tuple: ft,
            relay,
            username: p.auth.username.clone(),
            user: p.auth.user.clone(),
            credential: p.auth.tag,
            credential_expires: p.auth.expires,
            revoked: false,
            expires,
            allocate_tid: p.reply.tid,
            permissions: Vec::new(),
            channels: Vec::new(),
            bandwidth: Bandwidth::new(self.config.bandwidth_bytes_per_sec, now),
        };
        self.allocations.insert(ft, allocation);
        self.by_relay.insert(relay, ft);
        self.stats.allocations_created += 1;
        // The port arrived after the request's span ended: name the trace here.
        tracing::debug!(
            trace_id = super::auth::parse_rest_username(&p.auth.username)
                .and_then(|u| u.trace)
                .map(tracing::field::display),
            %relay,
            lifetime_s = p.lifetime.as_secs(),
            "allocation created"
        );
        self.push(Output::Event(Event::AllocationCreated {
            five_tuple: ft,
            relay,
        }));
        self.allocate_success(ft, p.reply, &p.auth, relay, p.lifetime, reservation);
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

    fn allocate_success(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        auth: &Authenticated,
        relay: SocketAddr,
        lifetime: Duration,
        reservation: Option<[u8; 8]>,
    ) {
        let advertised =
            SocketAddr::new(self.config.external_ip.unwrap_or(relay.ip()), relay.port());
        let secs = lifetime_secs(lifetime);
        self.respond(ft, reply, Class::Success, Some(auth), |b| {
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
        now: Millis,
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
        now: Millis,
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
            self.delete(ft, DeleteReason::Refreshed);
            lifetime
        } else {
            // A Refresh with a newer REST credential of the same user moves the allocation onto
            // it, so a client that fetched fresh credentials keeps its relayed address.
            let lifetime = capped_by_credential(lifetime, auth.expires, now);
            a.username.clone_from(&auth.username);
            a.credential = auth.tag;
            a.credential_expires = auth.expires;
            a.revoked = false;
            let expires = self.expire_at(ft, now, lifetime);
            if let Some(a) = self.allocations.get_mut(&ft) {
                a.expires = expires;
            }
            lifetime
        };
        let secs = lifetime_secs(lifetime);
        self.respond(ft, ReplyTo::of(msg), Class::Success, Some(auth), |b| {
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
        now: Millis,
    ) -> Result<(), ErrorCode> {
        let relay = self.owned_allocation(ft, auth, now)?.relay;
        let peers = self.checked_peers(msg, relay)?;
        let expires = now.saturating_add(self.config.permission_lifetime);
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
        self.respond(ft, ReplyTo::of(msg), Class::Success, Some(auth), |_| {});
        Ok(())
    }

    /// RFC 8656 §11.2.
    fn channel_bind(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Millis,
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
            now.saturating_add(self.config.channel_lifetime),
            now.saturating_add(self.config.permission_lifetime),
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
        self.respond(ft, ReplyTo::of(msg), Class::Success, Some(auth), |_| {});
        Ok(())
    }

    fn respond(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        class: Class,
        auth: Option<&Authenticated>,
        build: impl FnOnce(&mut MessageBuilder),
    ) {
        let mut b = MessageBuilder::new(MessageType::new(reply.method, class), reply.tid);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        build(&mut b);
        if let Some(a) = auth {
            b.integrity(a.kind, &a.key);
        }
        if reply.fingerprint {
            b.fingerprint();
        }
        self.push(Output::Transmit(Transmit::Client {
            five_tuple: ft,
            payload: b.finish(),
        }));
    }

    fn error(
        &mut self,
        ft: FiveTuple,
        reply: ReplyTo,
        auth: Option<&Authenticated>,
        code: ErrorCode,
        unknown: &[AttributeType],
    ) {
        self.respond(ft, reply, Class::Error, auth, |b| {
            b.error_code(code);
            if !unknown.is_empty() {
                b.unknown_attributes(unknown);
            }
        });
    }

    /// 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4).
    fn challenge(&mut self, ft: FiveTuple, reply: ReplyTo, now: Millis, code: ErrorCode) {
        let nonce = self.nonces.mint(ft.client, now);
        let realm = self.config.realm.clone();
        self.respond(ft, reply, Class::Error, None, |b| {
            b.error_code(code)
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
        });
    }
}
