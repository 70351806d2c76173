//! Allocation quotas (RFC 8656 §7.2: 486 per user, 508 for the node), shared by the TURN cores
//! of every event loop of a relay process so a user cannot multiply its quota by the number of
//! loops. Taken on Allocate and given back when an allocation ends: never on the packet path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::auth::UserId;

/// Which quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    /// The user's allocations (486).
    User,
    /// The node's allocations (508).
    Total,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<UserId, usize>,
}

/// Live allocations per user and in total, against their caps.
#[derive(Debug)]
pub struct Quotas {
    per_user_max: usize,
    total_max: usize,
    counts: Mutex<Counts>,
}

impl Quotas {
    /// Quotas of `per_user_max` allocations per user and `total_max` in all.
    pub fn new(per_user_max: usize, total_max: usize) -> Arc<Self> {
        Arc::new(Self {
            per_user_max,
            total_max,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent under any panic elsewhere: every update is one statement.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more allocation for `user`, unless a cap is reached.
    pub fn try_take(&self, user: &UserId) -> Result<(), QuotaExceeded> {
        let mut c = self.lock();
        if c.per_user.get(user).copied().unwrap_or(0) >= self.per_user_max {
            return Err(QuotaExceeded::User);
        }
        if c.total >= self.total_max {
            return Err(QuotaExceeded::Total);
        }
        c.total += 1;
        *c.per_user.entry(user.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// Gives back one allocation of `user`.
    pub fn give_back(&self, user: &UserId) {
        let mut c = self.lock();
        if let Some(n) = c.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_user.remove(user);
            }
            c.total = c.total.saturating_sub(1);
        }
    }

    /// Live allocations of `user`.
    pub fn of(&self, user: &UserId) -> usize {
        self.lock().per_user.get(user).copied().unwrap_or(0)
    }
}

/// EVEN-PORT reservations (RFC 8656 §7.2), shared by the cores of every event loop: the client's
/// Allocate carrying the RESERVATION-TOKEN arrives from another 5-tuple, which SO_REUSEPORT may
/// hash to another loop than the one that made the reservation.
#[derive(Debug, Default)]
pub struct Reservations {
    held: Mutex<HashMap<[u8; 8], Reservation>>,
}

/// A reserved relayed address and when the hold lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved relayed transport address (port = the even port + 1).
    pub relay: std::net::SocketAddr,
    /// When it lapses unless used.
    pub expires: super::types::Millis,
}

impl Reservations {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 8], Reservation>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `r` under `token`.
    pub fn insert(&self, token: [u8; 8], r: Reservation) {
        self.lock().insert(token, r);
    }

    /// Takes the reservation of `token`, if any.
    pub fn take(&self, token: &[u8; 8]) -> Option<Reservation> {
        self.lock().remove(token)
    }

    /// Takes the reservation of `token` if it has lapsed at `now`.
    pub fn take_lapsed(&self, token: &[u8; 8], now: super::types::Millis) -> Option<Reservation> {
        let mut held = self.lock();
        let lapsed = held.get(token).is_some_and(|r| r.expires <= now);
        if lapsed { held.remove(token) } else { None }
    }
}

/// What the cores of one relay process share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Allocation quotas.
    pub quotas: Arc<Quotas>,
    /// EVEN-PORT reservations.
    pub reservations: Arc<Reservations>,
}

impl Shared {
    /// Fresh shared state with the given quotas.
    pub fn new(per_user_max: usize, total_max: usize) -> Self {
        Self {
            quotas: Quotas::new(per_user_max, total_max),
            reservations: Reservations::new(),
        }
    }
}
