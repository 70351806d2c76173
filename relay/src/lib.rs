//! Switchboard relay: STUN/TURN server (RFC 8489, RFC 8656) and server-side WebRTC peer (SFU).

pub mod config;
pub mod fleet;
pub mod http;
pub mod net;
pub mod sfu;
pub mod stun;
pub mod telemetry;
pub mod turn;
