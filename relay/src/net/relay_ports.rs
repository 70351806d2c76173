//! The relay-port pool: binds UDP sockets from the configured range for the TURN core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap;

use crate::stun::attributes::AddressFamily;
use crate::turn::{BindFailure, PortRequest};

/// An inclusive relay port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port.
    pub low: u16,
    /// Highest port.
    pub high: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("invalid port range {s:?} (expected LOW-HIGH, e.g. 49152-65535)");
        let (low, high) = s.split_once('-').ok_or_else(err)?;
        let (low, high) = (
            low.trim().parse::<u16>().map_err(|_| err())?,
            high.trim().parse::<u16>().map_err(|_| err())?,
        );
        if low == 0 || low > high {
            return Err(err());
        }
        Ok(Self { low, high })
    }
}

/// The relay-port pool: relay sockets in a slab, so the event loop finds a ready socket by the
/// index it registered it with, and the core's relayed addresses map to slots through one
/// fast-hashed table.
#[derive(Debug)]
pub struct RelayPorts {
    ips: Vec<IpAddr>,
    range: PortRange,
    cursor: u16,
    /// Requested socket buffer size (bytes), 0 for the kernel default.
    buffer: usize,
    slots: Vec<Option<RelaySocket>>,
    free: Vec<usize>,
    by_addr: FxHashMap<SocketAddr, usize>,
    /// Slots bound since the event loop last registered new sockets.
    pub unwatched: Vec<usize>,
    /// Released sockets, closed after the next flush so datagrams queued on them still leave.
    closing: Vec<UdpSocket>,
    /// Reserved sockets (the odd port of an EVEN-PORT pair), shared by every loop's pool: the
    /// Allocate that uses the reservation may arrive on another loop, which adopts the socket.
    parked: Parking,
}

/// Sockets held for EVEN-PORT reservations, shared between the loops' pools (touched only on
/// Allocate and on release, never on the packet path).
pub type Parking = Arc<Mutex<HashMap<SocketAddr, UdpSocket>>>;

/// One bound relay socket.
#[derive(Debug)]
pub struct RelaySocket {
    /// Non-blocking; receives and sends are batched system calls on its descriptor.
    pub socket: UdpSocket,
    /// Its local address (the relayed transport address as bound).
    pub addr: SocketAddr,
}

impl RelayPorts {
    /// A pool binding on `ips` (at most one per family) within `range`, with socket buffers of
    /// `buffer` bytes (0: the kernel default).
    pub fn new(ips: Vec<IpAddr>, range: PortRange, buffer: usize) -> Self {
        Self {
            ips,
            range,
            cursor: range.low,
            buffer,
            slots: Vec::new(),
            free: Vec::new(),
            by_addr: FxHashMap::default(),
            unwatched: Vec::new(),
            closing: Vec::new(),
            parked: Parking::default(),
        }
    }

    /// Shares reserved sockets with the other loops' pools.
    #[must_use]
    pub fn with_parking(mut self, parked: Parking) -> Self {
        self.parked = parked;
        self
    }

    /// A parking lot for [`RelayPorts::with_parking`].
    pub fn shared_parking() -> Parking {
        Parking::default()
    }

    fn parking(&self) -> MutexGuard<'_, HashMap<SocketAddr, UdpSocket>> {
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the socket of `addr` out of the slab without closing it.
    fn unslot(&mut self, addr: SocketAddr) -> Option<UdpSocket> {
        let slot = self.by_addr.remove(&addr)?;
        self.free.push(slot);
        self.unwatched.retain(|s| *s != slot);
        self.slots
            .get_mut(slot)
            .and_then(Option::take)
            .map(|s| s.socket)
    }

    /// Puts an already bound socket into the slab.
    fn slot_in(&mut self, addr: SocketAddr, socket: UdpSocket) {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        let entry = Some(RelaySocket { socket, addr });
        match self.slots.get_mut(slot) {
            Some(s) => *s = entry,
            None => self.slots.push(entry),
        }
        self.by_addr.insert(addr, slot);
        self.unwatched.push(slot);
    }

    fn ip(&self, family: AddressFamily) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| AddressFamily::of(SocketAddr::new(*ip, 0)) == family)
    }

    /// The socket in `slot`.
    pub fn get(&self, slot: usize) -> Option<&RelaySocket> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The slot of the relay socket bound to `addr`.
    pub fn slot_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// Bound relay sockets.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether no relay socket is bound.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    fn bind(&mut self, addr: SocketAddr) -> bool {
        if self.by_addr.contains_key(&addr) {
            return false;
        }
        let Ok(socket) = super::bind::relay_udp(addr, self.buffer) else {
            return false;
        };
        self.slot_in(addr, socket);
        true
    }

    /// Walks the range from a moving cursor so recently freed ports are not reused at once.
    fn find(&mut self, ip: IpAddr, even: bool, pair: bool) -> Option<SocketAddr> {
        let span = u32::from(self.range.high - self.range.low) + 1;
        for _ in 0..span {
            let port = self.cursor;
            self.cursor = if self.cursor >= self.range.high {
                self.range.low
            } else {
                self.cursor + 1
            };
            if even && !port.is_multiple_of(2) {
                continue;
            }
            if pair && port >= self.range.high {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            if !self.bind(addr) {
                continue;
            }
            if pair {
                let next = SocketAddr::new(ip, port + 1);
                if !self.bind(next) {
                    self.release(addr);
                    continue;
                }
            }
            return Some(addr);
        }
        None
    }

    /// The address families relay sockets can be bound in.
    pub fn families(&self) -> Vec<AddressFamily> {
        [AddressFamily::V4, AddressFamily::V6]
            .into_iter()
            .filter(|f| self.ip(*f).is_some())
            .collect()
    }

    /// Answers the core's [`crate::turn::Output::BindRelay`]: binds (or, for a reservation,
    /// hands over) a relay socket, with DF set if asked (RFC 8656 §7.2 DONT-FRAGMENT).
    pub fn bind_for(
        &mut self,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<SocketAddr, BindFailure> {
        let addr = match request {
            PortRequest::Any(family) => self.ip(family).and_then(|ip| self.find(ip, false, false)),
            PortRequest::Even {
                family,
                reserve_next,
            } => self
                .ip(family)
                .and_then(|ip| self.find(ip, true, reserve_next)),
            PortRequest::Reserved(addr) => {
                let parked = self.parking().remove(&addr);
                match parked {
                    Some(socket) => {
                        self.slot_in(addr, socket);
                        Some(addr)
                    }
                    None => self.by_addr.contains_key(&addr).then_some(addr),
                }
            }
        }
        .ok_or(BindFailure::NoPort)?;
        // The reserved odd port waits in the shared parking lot for whichever loop gets the
        // Allocate with its token.
        if let PortRequest::Even {
            reserve_next: true, ..
        } = request
            && let Some(next) = addr
                .port()
                .checked_add(1)
                .map(|p| SocketAddr::new(addr.ip(), p))
            && let Some(socket) = self.unslot(next)
        {
            self.parking().insert(next, socket);
        }
        if dont_fragment && !self.set_dont_fragment(addr) {
            self.release(addr);
            if let PortRequest::Even {
                reserve_next: true, ..
            } = request
                && let Some(port) = addr.port().checked_add(1)
            {
                self.release(SocketAddr::new(addr.ip(), port));
            }
            return Err(BindFailure::DontFragment);
        }
        Ok(addr)
    }

    fn set_dont_fragment(&mut self, relay: SocketAddr) -> bool {
        use rustix::net::sockopt;
        let Some(s) = self.slot_of(&relay).and_then(|i| self.get(i)) else {
            return false;
        };
        // IP_PMTUDISC_DO: always set DF and never fragment locally (oversized sends fail).
        let result = if relay.is_ipv4() {
            sockopt::set_ip_mtu_discover(&s.socket, sockopt::Ipv4PathMtuDiscovery::DO)
        } else {
            sockopt::set_ipv6_mtu_discover(&s.socket, sockopt::Ipv6PathMtuDiscovery::DO)
        };
        result.is_ok()
    }

    /// Releases a relay socket (allocation or reservation ended); it is closed at the next
    /// [`RelayPorts::close_released`].
    pub fn release(&mut self, relay: SocketAddr) {
        let Some(slot) = self.by_addr.remove(&relay) else {
            let parked = self.parking().remove(&relay);
            self.closing.extend(parked);
            return;
        };
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::take) {
            self.closing.push(s.socket);
        }
        self.free.push(slot);
        self.unwatched.retain(|s| *s != slot);
    }

    /// Closes the released sockets (after the datagrams queued on them were flushed).
    pub fn close_released(&mut self) {
        self.closing.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests use fixed, known-good inputs")]
mod tests {
    use super::*;

    fn pool(low: u16) -> RelayPorts {
        RelayPorts::new(
            vec!["127.0.0.1".parse().unwrap()],
            PortRange { low, high: low + 9 },
            0,
        )
    }

    #[test]
    fn binds_within_the_range_and_releases() {
        let mut p = pool(47_600);
        let a = p
            .bind_for(PortRequest::Any(AddressFamily::V4), true)
            .unwrap();
        assert!((47_600..=47_609).contains(&a.port()));
        assert_eq!(p.unwatched, vec![p.slot_of(&a).unwrap()]);
        assert_eq!(p.families(), vec![AddressFamily::V4]);
        p.release(a);
        assert!(p.is_empty() && p.unwatched.is_empty());
        p.close_released();
        // The port is really free again.
        std::net::UdpSocket::bind(a).unwrap();
    }

    #[test]
    fn even_ports_and_reserved_pairs() {
        let mut p = pool(47_620);
        let even = p
            .bind_for(
                PortRequest::Even {
                    family: AddressFamily::V4,
                    reserve_next: true,
                },
                false,
            )
            .unwrap();
        assert_eq!(even.port() % 2, 0);
        let next = SocketAddr::new(even.ip(), even.port() + 1);
        assert!(p.parking().contains_key(&next), "the next port is held");
        assert!(std::net::UdpSocket::bind(next).is_err(), "and bound");
        assert_eq!(p.bind_for(PortRequest::Reserved(next), false), Ok(next));
        assert_eq!(
            p.bind_for(PortRequest::Reserved("127.0.0.1:1".parse().unwrap()), false),
            Err(BindFailure::NoPort)
        );
    }

    #[test]
    fn another_loops_pool_adopts_a_reserved_socket() {
        let parking = RelayPorts::shared_parking();
        let mut a = pool(47_660).with_parking(parking.clone());
        let mut b = pool(47_680).with_parking(parking);
        let even = a
            .bind_for(
                PortRequest::Even {
                    family: AddressFamily::V4,
                    reserve_next: true,
                },
                false,
            )
            .unwrap();
        let next = SocketAddr::new(even.ip(), even.port() + 1);
        assert_eq!(b.bind_for(PortRequest::Reserved(next), false), Ok(next));
        assert!(b.slot_of(&next).is_some() && a.slot_of(&next).is_none());
        // The reservation is used: the first pool's timer finds nothing to release.
        a.release(next);
        assert!(b.slot_of(&next).is_some());
        b.release(next);
        b.close_released();
        std::net::UdpSocket::bind(next).unwrap();
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut p = pool(47_640);
        let got: Vec<_> = (0..12)
            .filter_map(|_| p.bind_for(PortRequest::Any(AddressFamily::V4), false).ok())
            .collect();
        assert!(got.len() <= 10);
        assert_eq!(
            p.bind_for(PortRequest::Any(AddressFamily::V4), false),
            Err(BindFailure::NoPort)
        );
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(
            "1000-2000".parse::<PortRange>(),
            Ok(PortRange {
                low: 1000,
                high: 2000
            })
        );
        assert!("2000-1000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }
}
