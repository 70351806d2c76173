//! The TURN core fed arbitrary client and peer datagrams must never panic.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use switchboard_relay::stun::attributes::AddressFamily;
use switchboard_relay::turn::{
    Credentials, FiveTuple, PortRequest, RelayAllocator, Server, ServerConfig, Timestamp, Transport,
};

struct Ports(u16);

impl RelayAllocator for Ports {
    fn supports(&self, family: AddressFamily) -> bool {
        family == AddressFamily::V4
    }
    fn allocate(&mut self, _: PortRequest) -> Option<SocketAddr> {
        self.0 = self.0.wrapping_add(1);
        Some(SocketAddr::from(([127, 0, 0, 1], self.0)))
    }
    fn supports_dont_fragment(&self) -> bool {
        true
    }
    fn set_dont_fragment(&mut self, _: SocketAddr) -> bool {
        true
    }
    fn release(&mut self, _: SocketAddr) {}
}

fuzz_target!(|data: &[u8]| {
    let creds = Credentials { secrets: vec!["s".into()], users: [("u".into(), "p".into())].into() };
    let mut server = Server::new(ServerConfig::new("r", [1; 32]), creds);
    let mut ports = Ports(40_000);
    let ft = FiveTuple {
        client: SocketAddr::from(([192, 0, 2, 1], 1000)),
        server: SocketAddr::from(([192, 0, 2, 2], 3478)),
        transport: Transport::Udp,
    };
    let now = Timestamp::from_secs(1_700_000_000);
    for chunk in data.split(|b| *b == 0xFF) {
        server.handle_datagram(ft, chunk, now, &mut ports);
        server.handle_peer_datagram(SocketAddr::from(([127, 0, 0, 1], 40_001)), ft.client, chunk, now);
        while server.poll_transmit().is_some() {}
    }
    server.handle_timeout(now.plus(std::time::Duration::from_secs(4000)), &mut ports);
});
