//! Value types shared by the TURN core and its IO shell: time, five-tuples, transmits.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::stun::attributes::AddressFamily;

/// Wall-clock time as milliseconds since the Unix epoch, passed in by the caller.
///
/// One clock serves both timers and TURN REST expiry (which is Unix time by definition); the
/// shell keeps it non-decreasing so a clock step backwards cannot resurrect expired state.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// From whole seconds since the Unix epoch.
    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Transport protocol between client and server (RFC 8656 §2: part of the 5-tuple).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8656 §12.5: ChannelData padded to 4 bytes).
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// Whether messages travel over a byte stream and so need ChannelData padding.
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

/// Client address, server address and transport: identifies an allocation (RFC 8656 §2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FiveTuple {
    /// The client's address as seen by us (its server-reflexive address).
    pub client: SocketAddr,
    /// Our listening address the client talks to.
    pub server: SocketAddr,
    /// Transport protocol.
    pub transport: Transport,
}

/// An outgoing datagram produced by the core.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Transmit {
    /// To a client over the transport of `five_tuple`.
    Client {
        /// Which client connection.
        five_tuple: FiveTuple,
        /// A STUN message or ChannelData (padded if the transport is a stream).
        payload: Vec<u8>,
    },
    /// From a relayed transport address to a peer (always UDP).
    Peer {
        /// Source: the allocation's relayed transport address as bound locally.
        relay: SocketAddr,
        /// Destination peer.
        peer: SocketAddr,
        /// Application data.
        payload: Vec<u8>,
    },
}

/// What the core asks of the shell's relay-port pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortRequest {
    /// Any free port of this family.
    Any(AddressFamily),
    /// An even port (RFC 8656 §7.2 EVEN-PORT); with `reserve_next`, port+1 is bound and held too.
    Even {
        /// Address family.
        family: AddressFamily,
        /// The R bit.
        reserve_next: bool,
    },
    /// A port previously held by `Even { reserve_next: true }`.
    Reserved(SocketAddr),
}

/// The shell's pool of relay sockets; the core calls it synchronously so it can answer Allocate.
pub trait RelayAllocator {
    /// Whether relayed addresses of `family` can be allocated (else 440).
    fn supports(&self, family: AddressFamily) -> bool;
    /// Binds a relay socket, returning its local address, or `None` when no port fits (508).
    fn allocate(&mut self, request: PortRequest) -> Option<SocketAddr>;
    /// Whether relay sockets can be made to send with the DF bit set (else DONT-FRAGMENT is 420).
    fn supports_dont_fragment(&self) -> bool;
    /// Makes a relay socket send with DF set (RFC 8656 §7.2 DONT-FRAGMENT); `false` on failure.
    fn set_dont_fragment(&mut self, relay: SocketAddr) -> bool;
    /// Closes a relay socket (allocation or reservation ended).
    fn release(&mut self, relay: SocketAddr);
}

/// Lifecycle notifications for logging and metrics; they never carry credentials.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// An allocation was created.
    AllocationCreated {
        /// Its 5-tuple.
        five_tuple: FiveTuple,
        /// Its relayed address.
        relay: SocketAddr,
    },
    /// An allocation ended.
    AllocationDeleted {
        /// Its 5-tuple.
        five_tuple: FiveTuple,
        /// Its relayed address.
        relay: SocketAddr,
        /// Why.
        reason: DeleteReason,
    },
}

/// Why an allocation ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeleteReason {
    /// Refresh with LIFETIME 0.
    Refreshed,
    /// Lifetime ran out.
    Expired,
    /// Its credentials expired or were revoked.
    Revoked,
    /// The client's TCP/TLS connection closed (RFC 8656 §3.1).
    ConnectionClosed,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refreshed => "refreshed to zero",
            Self::Expired => "expired",
            Self::Revoked => "credentials revoked",
            Self::ConnectionClosed => "connection closed",
        })
    }
}
