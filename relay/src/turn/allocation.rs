//! Per-allocation state (RFC 8656 §2.2): permissions, channel bindings and a bandwidth budget.
//! Kept small: a typical allocation is a few hundred bytes (`cargo bench --bench
//! allocation_state` measures it at 100,000 allocations).

use std::net::{IpAddr, SocketAddr};

use super::auth::{CredentialTag, UserId};
use super::policy::canonical;
use super::types::{FiveTuple, Millis};
use crate::stun::{ChannelNumber, TransactionId};

/// RFC 8656 §12: after a channel binding expires, its number and peer address must not be bound
/// to anything else for 5 minutes, so late packets are not misdelivered.
pub const CHANNEL_REBIND_HOLD: std::time::Duration = std::time::Duration::from_secs(300);

/// Permission to exchange data with one peer IP address (RFC 8656 §9; ports are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// Peer IP (canonical: v4-mapped folded to v4).
    pub ip: IpAddr,
    /// When it lapses unless refreshed.
    pub expires: Millis,
}

/// A channel number bound to a peer transport address (RFC 8656 §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    /// Channel number.
    pub number: ChannelNumber,
    /// Peer transport address.
    pub peer: SocketAddr,
    /// When it lapses unless refreshed.
    pub expires: Millis,
}

/// Token bucket limiting relayed bytes per second in both directions combined.
#[derive(Clone, Copy, Debug)]
pub struct Bandwidth {
    tokens: u64,
    last: Millis,
}

impl Bandwidth {
    /// A full bucket.
    pub fn new(rate: u64, now: Millis) -> Self {
        Self {
            tokens: rate,
            last: now,
        }
    }

    /// Spends `bytes` if available; `rate` 0 means unlimited. Burst is one second's worth.
    pub fn take(&mut self, bytes: usize, rate: u64, now: Millis) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.since(self.last);
        let refill = rate.saturating_mul(elapsed) / 1000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(rate);
            self.last = now;
        }
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

/// Pushes onto a table that usually holds one or two entries: capacity grows 1, 2, 4, ...
/// instead of `Vec`'s first step to 4, which would cost every allocation with one peer a few
/// hundred bytes of empty slots.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(1));
    }
    v.push(item);
}

/// One TURN allocation.
#[derive(Debug)]
pub struct Allocation {
    /// The client 5-tuple that owns it.
    pub five_tuple: FiveTuple,
    /// The relayed transport address as bound locally.
    pub relay: SocketAddr,
    /// Username that created it (RFC 8656 §5: later requests must use the same, else 441).
    pub username: Box<str>,
    /// Quota subject.
    pub user: UserId,
    /// Which accepted credential authenticated it.
    pub credential: CredentialTag,
    /// REST username expiry: `expires` never passes it (Allocate and Refresh cap the lifetime
    /// there), so relaying stops when the credential does.
    pub credential_expires: Option<Millis>,
    /// Set when the credential leaves the accepted set: data is no longer relayed, and the next
    /// request gets 401 and ends the allocation.
    pub revoked: bool,
    /// Time-to-expiry deadline (never later than `credential_expires`).
    pub expires: Millis,
    /// Transaction id of the Allocate, to answer retransmissions (RFC 8656 §7.2).
    pub allocate_tid: TransactionId,
    /// Installed permissions.
    pub permissions: Vec<Permission>,
    /// Bound channels.
    pub channels: Vec<ChannelBinding>,
    /// Bandwidth budget.
    pub bandwidth: Bandwidth,
}

impl Allocation {
    /// Whether data may flow: not past its lifetime (which the credential's expiry caps) and not
    /// revoked by a secret rotation.
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires > now && !self.revoked
    }

    /// Whether a live permission covers `ip`.
    pub fn permits(&self, ip: IpAddr, now: Millis) -> bool {
        let ip = canonical(ip);
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission; `false` if the table is full.
    pub fn permit(&mut self, ip: IpAddr, expires: Millis, max: usize) -> bool {
        let ip = canonical(ip);
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return true;
        }
        if self.permissions.len() >= max {
            return false;
        }
        push_small(&mut self.permissions, Permission { ip, expires });
        true
    }

    /// Adds a channel binding (the caller checked the number, the peer and the table size).
    pub fn bind(&mut self, binding: ChannelBinding) {
        push_small(&mut self.channels, binding);
    }

    /// The live binding for a channel number.
    pub fn channel(&self, number: ChannelNumber, now: Millis) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    /// The live binding for a peer address.
    pub fn channel_for_peer(&self, peer: SocketAddr, now: Millis) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Drops expired permissions, and channel bindings past their rebind hold.
    pub fn sweep(&mut self, now: Millis) {
        self.permissions.retain(|p| p.expires > now);
        // An expired binding stays as a tombstone so its number and peer cannot be rebound to
        // something else for a while; data no longer flows on it.
        self.channels
            .retain(|c| c.expires.saturating_add(CHANNEL_REBIND_HOLD) > now);
    }
}
