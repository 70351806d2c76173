//! Switchboard's signaling protocol v1, sans IO.
//!
//! This crate owns everything the signaling Worker decides: the wire types
//! ([`wire`]), the limits and rate limiter ([`limits`]), the room state machine
//! ([`room`]), JWT verification ([`auth`]), ICE-server issuing ([`ice`]) and the
//! relay session tokens ([`sfu_token`]), the relay registry ([`registry`]) and the
//! relay nodes a room pins ([`relays`]).
//! Nothing here reads a clock, opens a socket or draws random numbers: time
//! arrives as a [`Millis`] value and fresh identities arrive from the caller,
//! so the same code runs natively under unit tests and inside the wasm Worker.
//! docs/PROTOCOL.md is the prose version of this crate.

pub mod auth;
pub mod ice;
pub mod limits;
pub mod registry;
pub mod relays;
pub mod room;
pub mod sfu_token;
pub mod types;
pub mod wire;

pub use types::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName, Seq, TraceId, UserId};
pub use wire::ErrorCode;

/// The protocol version spoken by this crate, sent in `welcome.v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The revision of the version's backward-compatible additions, sent in `welcome.rev`: 1 added
/// acked client frames (v1.1), 2 the `ack` a client frame may carry and `acked` (v1.2).
pub const PROTOCOL_REV: u32 = 2;
