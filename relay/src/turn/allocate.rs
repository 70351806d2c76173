//! Allocate and Refresh (RFC 8656 §7, §8): an allocation's life. Allocate asks the shell for a
//! relay socket through [`Output::BindRelay`] and finishes in [`Server::handle_relay_bound`].

use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::allocation::{Allocation, Bandwidth};
use super::control::{Authenticated, ReplyTo};
use super::quota::{QuotaExceeded, Reservation};
use super::server::{Due, Server};
use super::types::{
    BindFailure, BindId, DeleteReason, Event, FiveTuple, Millis, Output, PortRequest,
};
use crate::stun::attributes::{self as attr, AddressFamily, ErrorCode};
use crate::stun::message::{Class, Message};

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

impl Server {
    /// RFC 8656 §7.2, up to the request for a relay socket.
    pub(super) fn allocate(
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
        // The port arrived after the request's span ended: the event names the trace.
        self.push(Output::Event(Event::AllocationCreated {
            five_tuple: ft,
            relay,
            trace_id: super::auth::trace_id_of(&p.auth.username),
            lifetime: p.lifetime,
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

    /// RFC 8656 §8.
    pub(super) fn refresh(
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
}
