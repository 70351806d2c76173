//! Value types shared by the TURN core and its IO shell: five-tuples, what the core asks of the
//! shell ([`Output`]) and where relayed data goes ([`Forward`]).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::stun::ChannelNumber;
use crate::stun::attributes::AddressFamily;

/// Wall-clock time in milliseconds since the Unix epoch, passed in by the caller: the same type
/// the signaling protocol uses. One clock serves timers and TURN REST expiry (Unix time by
/// definition); the shell keeps it non-decreasing.
pub use switchboard_proto::types::Millis;

/// Transport protocol between client and server (RFC 8656 §2: part of the 5-tuple).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
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
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FiveTuple {
    /// The client's address as seen by us (its server-reflexive address).
    pub client: SocketAddr,
    /// Our listening address the client talks to.
    pub server: SocketAddr,
    /// Transport protocol.
    pub transport: Transport,
}

/// An outgoing message the core built (responses, Data indications).
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

/// Relayed data, borrowing the datagram it came from: the shell sends it without a copy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Forward<'a> {
    /// Client → peer: `payload` leaves from the relayed address `relay` to `peer`.
    ToPeer {
        /// The allocation's relayed transport address as bound locally.
        relay: SocketAddr,
        /// Destination peer.
        peer: SocketAddr,
        /// Application data (a slice of the client's datagram).
        payload: &'a [u8],
    },
    /// Peer → client over a channel: `header`, `payload`, then `padding` zero bytes (streams,
    /// RFC 8656 §12.5), together one ChannelData message.
    ToClient {
        /// Which client connection.
        five_tuple: FiveTuple,
        /// The 4-byte ChannelData header (channel number, length).
        header: [u8; 4],
        /// Application data (the peer's datagram).
        payload: &'a [u8],
        /// Zero bytes after the payload: 0 over UDP, up to 3 over streams.
        padding: usize,
    },
}

impl Forward<'_> {
    /// A ChannelData forward for `five_tuple` on `channel`.
    pub(crate) fn channel_data(
        five_tuple: FiveTuple,
        channel: ChannelNumber,
        payload: &[u8],
    ) -> Forward<'_> {
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        let [c0, c1] = channel.0.to_be_bytes();
        let [l0, l1] = len.to_be_bytes();
        let padding = if five_tuple.transport.is_stream() {
            (4 - payload.len() % 4) % 4
        } else {
            0
        };
        Forward::ToClient {
            five_tuple,
            header: [c0, c1, l0, l1],
            payload,
            padding,
        }
    }

    /// The same bytes as an owned [`Transmit`] (stream transports, tests).
    pub fn to_transmit(&self) -> Transmit {
        match *self {
            Forward::ToPeer {
                relay,
                peer,
                payload,
            } => Transmit::Peer {
                relay,
                peer,
                payload: payload.to_vec(),
            },
            Forward::ToClient {
                five_tuple,
                header,
                payload,
                padding,
            } => {
                let mut out = Vec::with_capacity(header.len() + payload.len() + padding);
                out.extend_from_slice(&header);
                out.extend_from_slice(payload);
                out.resize(out.len() + padding, 0);
                Transmit::Client {
                    five_tuple,
                    payload: out,
                }
            }
        }
    }
}

/// Names one pending request for a relay socket ([`Output::BindRelay`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BindId(pub u64);

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

/// Why the shell could not provide a relay socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BindFailure {
    /// No port fits the request (answered 508).
    NoPort,
    /// The socket was bound but DF could not be set on it; the shell released it (answered 500).
    DontFragment,
}

/// What the core asks of its shell, drained with `Server::poll_output` until
/// [`Output::Timeout`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Output {
    /// A message to send.
    Transmit(Transmit),
    /// Bind a relay socket for an Allocate (with DF set if `dont_fragment`, RFC 8656 §7.2), and
    /// answer with `Server::handle_relay_bound(id, ..)`.
    BindRelay {
        /// Quote this in the answer.
        id: BindId,
        /// Which port.
        request: PortRequest,
        /// Set DF on the socket.
        dont_fragment: bool,
    },
    /// Close a relay socket (allocation or reservation ended).
    ReleaseRelay(SocketAddr),
    /// A lifecycle notification.
    Event(Event),
    /// Nothing else to do now: call `Server::handle_timeout` at this time (never, if `None`).
    Timeout(Option<Millis>),
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
        /// The Switchboard trace id its REST username carried (64 bits; logged as 16 hex).
        trace_id: Option<u64>,
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// An allocation ended.
    AllocationDeleted {
        /// Its 5-tuple.
        five_tuple: FiveTuple,
        /// Its relayed address.
        relay: SocketAddr,
        /// Why.
        reason: DeleteReason,
        /// As in [`Event::AllocationCreated`].
        trace_id: Option<u64>,
    },
}

/// Why an allocation ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeleteReason {
    /// Refresh with LIFETIME 0.
    Refreshed,
    /// Lifetime ran out (or the REST credential it was made with expired).
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
