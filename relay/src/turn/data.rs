//! The data path (RFC 8656 §10-§12): Send indications and ChannelData from clients, datagrams
//! from peers. Every direction goes through one check, [`Server::admit`]: a live allocation, a
//! permission for the peer's IP, and the bandwidth budget. Relayed data is returned as a
//! [`Forward`] borrowing the datagram it came from, so nothing is copied or allocated here
//! except for Data indications (peers without a channel).

use std::net::SocketAddr;

use super::allocation::Allocation;
use super::server::Server;
use super::types::{FiveTuple, Forward, Millis, Output, Transmit};
use crate::stun::attributes::{self as attr, AddressFamily};
use crate::stun::channel_data::ChannelData;
use crate::stun::message::{Class, Message, MessageBuilder, MessageType, Method};

impl Server {
    /// The data-path checks shared by both directions; counts what it drops.
    fn admit(
        &mut self,
        ft: &FiveTuple,
        now: Millis,
        len: usize,
        peer_of: impl FnOnce(&Allocation) -> Option<SocketAddr>,
    ) -> Option<(&Allocation, SocketAddr)> {
        let rate = self.config.bandwidth_bytes_per_sec;
        let stats = &mut self.stats;
        // Lifetime (capped at the credential's expiry) and revocation bite on every packet.
        let Some(a) = self.allocations.get_mut(ft).filter(|a| a.is_live(now)) else {
            stats.dropped_no_permission += 1;
            return None;
        };
        // RFC 8656 §9: permissions are per peer IP.
        let Some(peer) = peer_of(a).filter(|p| a.permits(p.ip(), now)) else {
            stats.dropped_no_permission += 1;
            return None;
        };
        if !a.bandwidth.take(len, rate, now) {
            stats.dropped_rate_limited += 1;
            return None;
        }
        Some((a, peer))
    }

    /// RFC 8656 §10.2: Send indications are never answered; problems mean a silent drop.
    pub(super) fn handle_send<'a>(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'a>,
        now: Millis,
    ) -> Option<Forward<'a>> {
        let (Some(Ok(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.malformed += 1;
            return None;
        };
        let (a, peer) = self.admit(&ft, now, data.len(), |a| {
            (AddressFamily::of(peer) == AddressFamily::of(a.relay)).then_some(peer)
        })?;
        let relay = a.relay;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        Some(Forward::ToPeer {
            relay,
            peer,
            payload: data,
        })
    }

    /// RFC 8656 §12.6: ChannelData on an unbound channel or without permission is dropped.
    pub(super) fn client_channel_data<'a>(
        &mut self,
        ft: FiveTuple,
        bytes: &'a [u8],
        now: Millis,
    ) -> Option<Forward<'a>> {
        let Ok(cd) = ChannelData::decode(bytes) else {
            self.stats.malformed += 1;
            return None;
        };
        let (a, peer) = self.admit(&ft, now, cd.data.len(), |a| {
            a.channel(cd.channel, now).map(|c| c.peer)
        })?;
        let relay = a.relay;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += cd.data.len() as u64;
        Some(Forward::ToPeer {
            relay,
            peer,
            payload: cd.data,
        })
    }

    /// A datagram that arrived at relayed address `relay` from `peer`: ChannelData when a
    /// channel is bound to the peer (returned as a [`Forward`]), else a Data indication (queued).
    pub fn handle_peer_datagram<'a>(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        bytes: &'a [u8],
        now: Millis,
    ) -> Option<Forward<'a>> {
        let ft = *self.by_relay.get(&relay)?;
        let (a, peer) = self.admit(&ft, now, bytes.len(), |_| Some(peer))?;
        let channel = a.channel_for_peer(peer, now).map(|c| c.number);
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += bytes.len() as u64;
        if let Some(channel) = channel {
            return Some(Forward::channel_data(ft, channel, bytes));
        }
        let tid = self.next_transaction_id();
        let payload = MessageBuilder::new(MessageType::new(Method::DATA, Class::Indication), tid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, bytes)
            .finish();
        self.push(Output::Transmit(Transmit::Client {
            five_tuple: ft,
            payload,
        }));
        None
    }
}
