//! Sans-IO TURN server (RFC 8656): fed client datagrams, peer datagrams, relay sockets the shell
//! bound on its request, and time; drained of [`Output`]s with `Server::poll_output`. Relayed
//! data comes back directly from the handler as a [`Forward`] borrowing the input.

mod allocate;
pub mod allocation;
pub mod auth;
pub mod config;
mod control;
mod data;
mod permission;
pub mod policy;
pub mod quota;
pub mod server;
pub mod types;

#[cfg(test)]
mod tests;

pub use allocation::{Allocation, ChannelBinding, Permission};
pub use auth::{Credentials, UserId};
pub use config::{AuthFailures, ServerConfig, Stats};
pub use policy::{Cidr, PeerPolicy};
pub use quota::{QuotaExceeded, Quotas, Reservation, Reservations, Shared};
pub use server::Server;
pub use types::{
    BindFailure, BindId, DeleteReason, Event, FiveTuple, Forward, Millis, Output, PortRequest,
    Transmit, Transport,
};
