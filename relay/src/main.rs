//! The Switchboard relay node. The STUN/TURN server lands here (see README).

use clap::Parser;

/// Switchboard relay: STUN/TURN server and server-side WebRTC peer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
