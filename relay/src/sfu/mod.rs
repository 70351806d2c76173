//! Server-side WebRTC peer (the fallback ladder's `sfu` rung), built on str0m.
//!
//! [`core`] is the sans-IO forwarding core holding every session of the node;
//! [`shell`] owns the UDP socket and the clock and runs the core on its own thread. Sessions are
//! set up over HTTP (`crate::http::sessions`), authenticated by a token the Worker signs
//! (`switchboard_proto::sfu_token`).

pub mod core;
pub mod envelope;
pub mod layers;
pub mod route;
pub mod shell;

pub use self::core::{CloseReason, Output, SessionError, SessionId, Sfu, SfuConfig, SfuStats};

#[cfg(test)]
mod tests;
