//! Which peer addresses a client may relay to. Secure by default: loopback, private, link-local,
//! multicast, documentation and other special-purpose ranges are refused (RFC 8656 §21.3 warns
//! that a relay is otherwise a path into the operator's own network).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid CIDR {:?} (expected ADDR/PREFIX)", self.0)
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.parse::<IpAddr>().map_err(|_| err())?,
                Some(p.parse::<u8>().map_err(|_| err())?),
            ),
            None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(err());
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` lies in this prefix (families must match; callers canonicalise v4-mapped).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(net.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, width: u32, prefix: u8) -> bool {
    let host_bits = width.saturating_sub(u32::from(prefix));
    net.checked_shr(host_bits).unwrap_or(0) == ip.checked_shr(host_bits).unwrap_or(0)
}

/// Maps `::ffff:a.b.c.d` to `a.b.c.d` so one rule set covers both spellings.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// IPv4 special-purpose ranges (RFC 6890 and successors) that are never relayed to by default.
const DENIED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (incl. cloud metadata 169.254.169.254)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved and broadcast
];

/// IPv6 special-purpose ranges never relayed to by default.
const DENIED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // IPv4-compatible (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), // NAT64: could reach private IPv4
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments incl. Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4: embeds arbitrary IPv4
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// Peer address policy: special ranges denied unless explicitly allowed.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Allow 127.0.0.0/8 and ::1 (tests and single-host setups).
    pub allow_loopback: bool,
    /// Prefixes allowed even if special-purpose (`--allow-peer`).
    pub allowed: Vec<Cidr>,
}

impl PeerPolicy {
    /// Whether a client may relay to `ip`.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => {
                if v4.is_loopback() {
                    return self.allow_loopback;
                }
                !DENIED_V4.iter().any(|(net, p)| {
                    Cidr {
                        addr: IpAddr::V4(*net),
                        prefix: *p,
                    }
                    .contains(ip)
                }) && !v4.is_broadcast()
            }
            IpAddr::V6(v6) => {
                if v6.is_loopback() {
                    return self.allow_loopback;
                }
                !DENIED_V6.iter().any(|(net, p)| {
                    Cidr {
                        addr: IpAddr::V6(*net),
                        prefix: *p,
                    }
                    .contains(ip)
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests use fixed, known-good inputs")]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_deny_special_ranges() {
        let p = PeerPolicy::default();
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "192.0.2.5",
        ] {
            assert!(!p.is_allowed(ip(denied)), "{denied} should be denied");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p.is_allowed(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn explicit_allows() {
        let p = PeerPolicy {
            allow_loopback: true,
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(p.is_allowed(ip("127.0.0.1")));
        assert!(p.is_allowed(ip("::1")));
        assert!(p.is_allowed(ip("::ffff:127.0.0.2")));
        assert!(p.is_allowed(ip("10.9.9.9")));
        assert!(!p.is_allowed(ip("192.168.0.1")));
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let c: Cidr = "192.168.1.7".parse().unwrap();
        assert!(c.contains(ip("192.168.1.7")));
        assert!(!c.contains(ip("192.168.1.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!(!all.contains(ip("::1")));
    }
}
