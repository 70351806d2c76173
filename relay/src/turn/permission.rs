//! CreatePermission and ChannelBind (RFC 8656 §9, §11): who may talk through an allocation.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::allocation::{Allocation, ChannelBinding};
use super::config::{ServerConfig, Stats};
use super::control::{Authenticated, ReplyTo};
use super::server::Server;
use super::types::{FiveTuple, Millis};
use crate::stun::ChannelNumber;
use crate::stun::attributes::{self as attr, AddressFamily, ErrorCode};
use crate::stun::message::{Class, Message};

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
    /// The caller's allocation, checked against the request's username (437, 441).
    pub(super) fn owned_allocation(
        &mut self,
        ft: FiveTuple,
        auth: &Authenticated,
        now: Millis,
    ) -> Result<&mut Allocation, ErrorCode> {
        owned_allocation(&mut self.allocations, &mut self.stats, ft, auth, now)
    }

    /// RFC 8656 §9: all peers are validated before any permission is installed.
    pub(super) fn create_permission(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Millis,
    ) -> Result<(), ErrorCode> {
        let Self {
            allocations,
            config,
            stats,
            ..
        } = self;
        let a = owned_allocation(allocations, stats, ft, auth, now)?;
        let peers = checked_peers(msg, a.relay, config, stats)?;
        let expires = now.saturating_add(config.permission_lifetime);
        let max = config.max_permissions;
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
    pub(super) fn channel_bind(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Millis,
    ) -> Result<(), ErrorCode> {
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
        let Self {
            allocations,
            config,
            stats,
            ..
        } = self;
        let a = owned_allocation(allocations, stats, ft, auth, now)?;
        let peer = checked_peers(msg, a.relay, config, stats)?
            .first()
            .copied()
            .ok_or(ErrorCode::BAD_REQUEST)?;
        let (channel_expires, permission_expires) = (
            now.saturating_add(config.channel_lifetime),
            now.saturating_add(config.permission_lifetime),
        );
        let (max_channels, max_permissions) = (config.max_channels, config.max_permissions);
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
}

/// The caller's allocation, checked against the request's username (437, 441). A function of
/// the fields it needs, so a handler can hold the allocation while it reads the configuration.
fn owned_allocation<'a>(
    allocations: &'a mut HashMap<FiveTuple, Allocation>,
    stats: &mut Stats,
    ft: FiveTuple,
    auth: &Authenticated,
    now: Millis,
) -> Result<&'a mut Allocation, ErrorCode> {
    let a = allocations
        .get_mut(&ft)
        .filter(|a| a.expires > now)
        .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
    if *a.username != *auth.username && !same_rest_subject(a, auth) {
        stats.auth_failures.wrong_credentials += 1;
        return Err(ErrorCode::WRONG_CREDENTIALS);
    }
    Ok(a)
}

/// Decodes XOR-PEER-ADDRESS values and applies the family (443) and peer policy (403) checks.
fn checked_peers(
    msg: &Message<'_>,
    relay: SocketAddr,
    config: &ServerConfig,
    stats: &mut Stats,
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
    if peers.iter().any(|p| !config.peer_policy.is_allowed(p.ip())) {
        stats.denied_peers += 1;
        return Err(ErrorCode::FORBIDDEN);
    }
    Ok(peers)
}
