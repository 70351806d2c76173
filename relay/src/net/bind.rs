//! Listening sockets. IPv6 listeners are v6-only, so `[::]:3478` and `0.0.0.0:3478` can both be
//! configured and IPv4 clients keep their real addresses instead of v4-mapped IPv6 ones (which
//! would otherwise show up in XOR-MAPPED-ADDRESS and in 5-tuples).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::net::{self, AddressFamily, SocketFlags, SocketType, sockopt};

/// Backlog for TCP/TLS listeners.
const LISTEN_BACKLOG: i32 = 1024;

fn socket(addr: SocketAddr, kind: SocketType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = net::socket_with(
        family,
        kind,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    Ok(fd)
}

/// A non-blocking UDP socket bound to `addr`.
pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let fd = socket(addr, SocketType::DGRAM)?;
    net::bind(&fd, &addr)?;
    Ok(fd.into())
}

/// A non-blocking TCP listener on `addr` (SO_REUSEADDR, so restarts do not wait for TIME_WAIT).
pub fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let fd = socket(addr, SocketType::STREAM)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    net::bind(&fd, &addr)?;
    net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(fd.into())
}
