//! The relay-port pool: binds UDP sockets from the configured range for the TURN core.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::future::AbortHandle;
use tokio::net::UdpSocket;

use crate::stun::attributes::AddressFamily;
use crate::turn::{PortRequest, RelayAllocator};

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

/// One bound relay socket.
#[derive(Debug)]
pub struct RelaySocket {
    /// The socket: tokio for readiness; receives and sends are batched system calls on its
    /// descriptor (see [`super::batch`]), so one descriptor per allocation is enough.
    pub socket: Arc<UdpSocket>,
    /// Cancels the pending readiness future so the socket is closed at once on release.
    pub abort: Option<AbortHandle>,
}

/// Relay sockets by local address, plus the addresses bound but not yet watched for readiness.
#[derive(Debug)]
pub struct RelayPorts {
    ips: Vec<IpAddr>,
    range: PortRange,
    cursor: u16,
    /// Bound sockets.
    pub sockets: HashMap<SocketAddr, RelaySocket>,
    /// Newly bound addresses the event loop must start watching.
    pub unwatched: Vec<SocketAddr>,
}

impl RelayPorts {
    /// A pool binding on `ips` (at most one per family) within `range`.
    pub fn new(ips: Vec<IpAddr>, range: PortRange) -> Self {
        Self {
            ips,
            range,
            cursor: range.low,
            sockets: HashMap::new(),
            unwatched: Vec::new(),
        }
    }

    fn ip(&self, family: AddressFamily) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| AddressFamily::of(SocketAddr::new(*ip, 0)) == family)
    }

    fn bind(&mut self, addr: SocketAddr) -> bool {
        if self.sockets.contains_key(&addr) {
            return false;
        }
        let Ok(std_socket) = std::net::UdpSocket::bind(addr) else {
            return false;
        };
        if std_socket.set_nonblocking(true).is_err() {
            return false;
        }
        let Ok(socket) = UdpSocket::from_std(std_socket) else {
            return false;
        };
        self.sockets.insert(
            addr,
            RelaySocket {
                socket: Arc::new(socket),
                abort: None,
            },
        );
        self.unwatched.push(addr);
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
}

impl RelayAllocator for RelayPorts {
    fn supports(&self, family: AddressFamily) -> bool {
        self.ip(family).is_some()
    }

    fn allocate(&mut self, request: PortRequest) -> Option<SocketAddr> {
        match request {
            PortRequest::Any(family) => {
                let ip = self.ip(family)?;
                self.find(ip, false, false)
            }
            PortRequest::Even {
                family,
                reserve_next,
            } => {
                let ip = self.ip(family)?;
                self.find(ip, true, reserve_next)
            }
            PortRequest::Reserved(addr) => self.sockets.contains_key(&addr).then_some(addr),
        }
    }

    fn supports_dont_fragment(&self) -> bool {
        true
    }

    fn set_dont_fragment(&mut self, relay: SocketAddr) -> bool {
        use rustix::net::sockopt;
        let Some(s) = self.sockets.get(&relay) else {
            return false;
        };
        // IP_PMTUDISC_DO: always set DF and never fragment locally (oversized sends fail).
        let result = if relay.is_ipv4() {
            sockopt::set_ip_mtu_discover(&*s.socket, sockopt::Ipv4PathMtuDiscovery::DO)
        } else {
            sockopt::set_ipv6_mtu_discover(&*s.socket, sockopt::Ipv6PathMtuDiscovery::DO)
        };
        result.is_ok()
    }

    fn release(&mut self, relay: SocketAddr) {
        if let Some(s) = self.sockets.remove(&relay)
            && let Some(abort) = s.abort
        {
            abort.abort();
        }
        self.unwatched.retain(|a| *a != relay);
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
        )
    }

    #[tokio::test]
    async fn binds_within_the_range_and_releases() {
        let mut p = pool(47_600);
        let a = p.allocate(PortRequest::Any(AddressFamily::V4)).unwrap();
        assert!((47_600..=47_609).contains(&a.port()));
        assert_eq!(p.unwatched, vec![a]);
        assert!(!p.supports(AddressFamily::V6));
        assert!(p.set_dont_fragment(a));
        p.release(a);
        assert!(p.sockets.is_empty() && p.unwatched.is_empty());
        // The port is really free again.
        std::net::UdpSocket::bind(a).unwrap();
    }

    #[tokio::test]
    async fn even_ports_and_reserved_pairs() {
        let mut p = pool(47_620);
        let even = p
            .allocate(PortRequest::Even {
                family: AddressFamily::V4,
                reserve_next: true,
            })
            .unwrap();
        assert_eq!(even.port() % 2, 0);
        let next = SocketAddr::new(even.ip(), even.port() + 1);
        assert!(p.sockets.contains_key(&next), "the next port is held");
        assert_eq!(p.allocate(PortRequest::Reserved(next)), Some(next));
        assert_eq!(
            p.allocate(PortRequest::Reserved("127.0.0.1:1".parse().unwrap())),
            None
        );
    }

    #[tokio::test]
    async fn exhaustion_returns_none() {
        let mut p = pool(47_640);
        let got: Vec<_> = (0..12)
            .filter_map(|_| p.allocate(PortRequest::Any(AddressFamily::V4)))
            .collect();
        assert!(got.len() <= 10);
        assert_eq!(p.allocate(PortRequest::Any(AddressFamily::V4)), None);
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
