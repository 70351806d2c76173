//! Switchboard relay: STUN/TURN server (RFC 8489, RFC 8656) and server-side WebRTC peer (SFU).
//!
//! Features (both on by default): `sfu`, the server-side WebRTC peer on str0m and its session
//! endpoint; `otlp`, span export over OTLP/HTTP. Without them the crate is the STUN/TURN relay
//! alone (what the fuzz targets build).

pub mod config;
pub mod fleet;
pub mod http;
pub mod net;
#[cfg(feature = "sfu")]
pub mod sfu;
pub mod stun;
pub mod telemetry;
pub mod turn;
