//! The TURN core's policy and limits ([`ServerConfig`]) and the counters it keeps ([`Stats`]).

use std::net::IpAddr;
use std::time::Duration;

use super::policy::PeerPolicy;
use crate::stun::attributes::AddressFamily;

/// Server policy and limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// REALM for long-term credentials.
    pub realm: String,
    /// SOFTWARE attribute in responses, if any.
    pub software: Option<String>,
    /// Address advertised in XOR-RELAYED-ADDRESS instead of the bound one (NAT, `--external-ip`).
    pub external_ip: Option<IpAddr>,
    /// RFC 8656 §7.2: 600 s.
    pub default_lifetime: Duration,
    /// Cap on requested lifetimes (3600 s).
    pub max_lifetime: Duration,
    /// RFC 8656 §9: 300 s.
    pub permission_lifetime: Duration,
    /// RFC 8656 §12: 600 s.
    pub channel_lifetime: Duration,
    /// How long a NONCE stays valid before 438.
    pub nonce_lifetime: Duration,
    /// How long an EVEN-PORT reservation is held (RFC 8656 §7.2 suggests about 30 s).
    pub reservation_lifetime: Duration,
    /// Total allocations (then 508).
    pub max_allocations: usize,
    /// Allocations per user (then 486).
    pub max_allocations_per_user: usize,
    /// Permissions per allocation (then 508).
    pub max_permissions: usize,
    /// Channel bindings per allocation (then 508).
    pub max_channels: usize,
    /// Relayed bytes per second per allocation, both directions; 0 = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Which peers may be relayed to.
    pub peer_policy: PeerPolicy,
    /// Server-private key for nonces, reservation tokens and indication transaction ids.
    pub secret_key: [u8; 32],
    /// Address families the shell can bind relay sockets in (else 440).
    pub relay_families: Vec<AddressFamily>,
    /// Whether the shell can make relay sockets send with DF set (else DONT-FRAGMENT is an
    /// unknown attribute, RFC 8656 §7.2).
    pub dont_fragment: bool,
}

impl ServerConfig {
    /// RFC defaults with the given realm and private key.
    pub fn new(realm: impl Into<String>, secret_key: [u8; 32]) -> Self {
        Self {
            realm: realm.into(),
            software: Some(concat!("switchboard-relay/", env!("CARGO_PKG_VERSION")).to_owned()),
            external_ip: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            max_allocations: 10_000,
            max_allocations_per_user: 32,
            max_permissions: 64,
            max_channels: 64,
            bandwidth_bytes_per_sec: 0,
            peer_policy: PeerPolicy::default(),
            secret_key,
            relay_families: vec![AddressFamily::V4],
            dont_fragment: true,
        }
    }
}

/// Authentication failures by reason (metric labels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthFailures {
    /// No MESSAGE-INTEGRITY: the normal first round trip, answered with a challenge.
    pub missing_integrity: u64,
    /// NONCE expired or not ours (438).
    pub stale_nonce: u64,
    /// REALM differs from ours.
    pub wrong_realm: u64,
    /// Username not known.
    pub unknown_user: u64,
    /// REST username past its expiry.
    pub expired: u64,
    /// MESSAGE-INTEGRITY did not verify with any accepted key.
    pub bad_integrity: u64,
    /// Username differs from the allocation's (441).
    pub wrong_credentials: u64,
}

/// Counters for metrics; the shell publishes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations ever created.
    pub allocations_created: u64,
    /// Packets relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Packets relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
    /// Authentication failures.
    pub auth_failures: AuthFailures,
    /// Requests refused with 403 because of the peer policy.
    pub denied_peers: u64,
    /// Allocations refused by quota (486) or capacity (508).
    pub quota_rejections: u64,
    /// Data dropped: no allocation, permission or channel.
    pub dropped_no_permission: u64,
    /// Data dropped by the bandwidth cap.
    pub dropped_rate_limited: u64,
    /// Datagrams that were neither STUN nor ChannelData, or malformed.
    pub malformed: u64,
}
