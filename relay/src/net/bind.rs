//! Socket set-up. IPv6 sockets are v6-only, so `[::]:3478` and `0.0.0.0:3478` can both be
//! configured and IPv4 clients keep their real addresses instead of v4-mapped IPv6 ones (which
//! would otherwise show up in XOR-MAPPED-ADDRESS and in 5-tuples). Listeners may be shared by
//! several event loops through SO_REUSEPORT; every UDP socket gets the configured buffer size.

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

/// Socket buffer sizes the kernel granted, for the start-up report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// SO_RCVBUF as granted (Linux reports twice the usable size; this is the usable size).
    pub recv: usize,
    /// SO_SNDBUF as granted (usable size).
    pub send: usize,
}

/// Asks for `bytes` of receive and send buffer (0 leaves the kernel default); returns what was
/// granted. The kernel silently caps requests at `net.core.rmem_max`/`wmem_max`.
fn set_buffers(fd: &OwnedFd, bytes: usize) -> io::Result<Buffers> {
    if bytes > 0 {
        sockopt::set_socket_recv_buffer_size(fd, bytes)?;
        sockopt::set_socket_send_buffer_size(fd, bytes)?;
    }
    Ok(Buffers {
        recv: sockopt::socket_recv_buffer_size(fd)? / 2,
        send: sockopt::socket_send_buffer_size(fd)? / 2,
    })
}

/// A non-blocking UDP socket on `addr` with `buffer` bytes of receive and send buffer (0: the
/// kernel default), and the buffers granted: the SFU's one socket, read a datagram at a time
/// (no `UDP_GRO`, no SO_REUSEPORT).
#[cfg(feature = "sfu")]
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> io::Result<(std::net::UdpSocket, Buffers)> {
    let fd = socket(addr, SocketType::DGRAM)?;
    let buffers = set_buffers(&fd, buffer)?;
    net::bind(&fd, &addr)?;
    Ok((std::net::UdpSocket::from(fd), buffers))
}

/// A non-blocking UDP listener on `addr`, shareable between event loops with SO_REUSEPORT (the
/// kernel then picks a socket by hashing the 4-tuple, so a client's flow always lands on the
/// same one). Also returns the buffers granted and whether `UDP_GRO` is on.
pub fn udp_listener(
    addr: SocketAddr,
    reuse_port: bool,
    buffer: usize,
) -> io::Result<(std::net::UdpSocket, Buffers, bool)> {
    let fd = socket(addr, SocketType::DGRAM)?;
    if reuse_port {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    let buffers = set_buffers(&fd, buffer)?;
    net::bind(&fd, &addr)?;
    let socket = std::net::UdpSocket::from(fd);
    let gro = addr.is_ipv4() && enable_gro(&socket)?;
    Ok((socket, buffers, gro))
}

/// Turns on `UDP_GRO` where the kernel has it: datagrams of one sender that arrive together
/// (a GSO send, or what the network card's GRO merged) are then read as one buffer and one
/// `recvmmsg` slot, split again by [`super::batch::Receiver::datagrams`]. Returns whether it is on.
///
/// rustix has no `UDP_GRO` option and our code has no `unsafe`, so this goes through
/// quinn-udp's `UdpSocketState::new`, which sets GRO along with options of its own; the ones
/// that change how the listener sends are put back: path-MTU discovery (quinn-udp sets
/// "probe", which sets DF on every datagram) and `IP_RECVTOS`. What stays, `IP_PKTINFO` and
/// `SO_TIMESTAMPNS`, only adds control messages to what the listener receives. IPv6 listeners
/// are left without GRO: quinn-udp also sets `IPV6_DONTFRAG` there, which rustix cannot unset.
fn enable_gro(socket: &std::net::UdpSocket) -> io::Result<bool> {
    let mtu_discover = sockopt::ip_mtu_discover(socket)?;
    let state = quinn_udp::UdpSocketState::new(socket.into())?;
    sockopt::set_ip_mtu_discover(socket, mtu_discover)?;
    sockopt::set_ip_recvtos(socket, false)?;
    Ok(state.gro_segments() > 1)
}

/// A non-blocking relay socket on `addr` with `buffer` bytes of socket buffer.
pub fn relay_udp(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let fd = socket(addr, SocketType::DGRAM)?;
    set_buffers(&fd, buffer)?;
    net::bind(&fd, &addr)?;
    Ok(fd.into())
}

/// A non-blocking TCP listener on `addr` (SO_REUSEADDR, so restarts do not wait for TIME_WAIT;
/// SO_REUSEPORT when event loops share it).
pub fn tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let fd = socket(addr, SocketType::STREAM)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuse_port {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    net::bind(&fd, &addr)?;
    net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(fd.into())
}
