//! Sans-IO TURN server (RFC 8656): fed client datagrams, peer datagrams and time; drained of
//! transmits, timeouts and events. Relay sockets come from a [`RelayAllocator`] the shell provides.

pub mod allocation;
pub mod auth;
pub mod policy;
pub mod server;
pub mod types;

#[cfg(test)]
mod tests;

pub use allocation::{Allocation, ChannelBinding, Permission};
pub use auth::{Credentials, UserId};
pub use policy::{Cidr, PeerPolicy};
pub use server::{AuthFailures, Server, ServerConfig, Stats};
pub use types::{
    DeleteReason, Event, FiveTuple, PortRequest, RelayAllocator, Timestamp, Transmit, Transport,
};
