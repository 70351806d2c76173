//! The TURN core fed arbitrary client and peer datagrams must never panic.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use switchboard_relay::turn::{
    Credentials, FiveTuple, Millis, Output, PortRequest, Server, ServerConfig, Transport,
};

/// Performs the core's outputs as a shell would, handing out relay ports on 127.0.0.1.
fn pump(server: &mut Server, next: &mut u16, now: Millis) {
    loop {
        match server.poll_output() {
            Output::BindRelay { id, request, .. } => {
                *next = next.wrapping_add(1);
                let addr = match request {
                    PortRequest::Reserved(a) => a,
                    _ => SocketAddr::from(([127, 0, 0, 1], *next)),
                };
                server.handle_relay_bound(id, Ok(addr), now);
            }
            Output::Timeout(_) => return,
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let creds = Credentials { secrets: vec!["s".into()], users: [("u".into(), "p".into())].into() };
    let mut server = Server::new(ServerConfig::new("r", [1; 32]), creds);
    let mut next = 40_000;
    let ft = FiveTuple {
        client: SocketAddr::from(([192, 0, 2, 1], 1000)),
        server: SocketAddr::from(([192, 0, 2, 2], 3478)),
        transport: Transport::Udp,
    };
    let now = Millis::from_secs(1_700_000_000);
    for chunk in data.split(|b| *b == 0xFF) {
        let _ = server.handle_datagram(ft, chunk, now);
        pump(&mut server, &mut next, now);
        let _ = server.handle_peer_datagram(SocketAddr::from(([127, 0, 0, 1], 40_001)), ft.client, chunk, now);
        pump(&mut server, &mut next, now);
    }
    server.handle_timeout(now.saturating_add(std::time::Duration::from_secs(4000)));
    pump(&mut server, &mut next, now);
});
