//! The IO shell: event loops that own the sockets and a TURN core each. A loop waits on one
//! epoll set in which every socket is registered once, with its slab index as the event's data,
//! so a wake-up names the socket directly (no hashing, no future per wake-up). Datagrams are
//! drained in batches (`recvmmsg`), handed to the core, and what it produced goes out with one
//! `sendmmsg` per socket; relayed data is sent straight from the receive buffers. The core's
//! next deadline is the epoll timeout: there is no timer task and no periodic sweep.
//!
//! - `event_loop.rs`: the loop, timers, the core's outputs, draining;
//! - `udp.rs`: UDP listeners and relay sockets (the packet path);
//! - `stream.rs`: TCP and TLS client connections (RFC 8656 §3.1, RFC 6062 framing);
//! - `batch.rs`, `bind.rs`, `relay_ports.rs`, `clock.rs`: batched IO, socket set-up, the
//!   relay-port slab and the clock.

pub mod batch;
pub mod bind;
mod clock;
mod event_loop;
pub mod relay_ports;
mod stream;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use event_loop::{EventLoop, LoopConfig};
pub use relay_ports::{PortRange, RelayPorts};

use crate::turn::Credentials;

/// Redacts a client address for logs: the host part is dropped (/24 for IPv4, /48 for IPv6).
pub fn redact(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{c}.x")
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
    }
}

/// What the signal handler asks of the event loops, in escalating order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shutdown {
    /// Keep serving.
    #[default]
    Run,
    /// Graceful shutdown: refuse new allocations and connections, exit once no allocation is
    /// left or the drain timeout passes.
    Drain,
    /// Exit now.
    Now,
}

/// What the event loop listens on.
#[derive(Debug, Default, Clone)]
pub struct Listeners {
    /// UDP and TCP on each of these.
    pub plain: Vec<SocketAddr>,
    /// TLS over TCP on each of these.
    pub tls: Vec<SocketAddr>,
}

/// Requests from the signal handler to the event loops (shutdown, reloaded credentials). The
/// loops read it when woken through their eventfd; nothing here is on the packet path.
#[derive(Debug)]
pub struct Control {
    shutdown: AtomicU8,
    credentials: Mutex<Credentials>,
    credentials_version: AtomicU64,
    /// Loops that have drained (no allocation left); the process stops when all have.
    drained: AtomicUsize,
    wakers: Vec<OwnedFd>,
}

impl Control {
    /// Control for `loops` event loops.
    pub fn new(loops: usize, credentials: Credentials) -> std::io::Result<Arc<Self>> {
        use rustix::event::{EventfdFlags, eventfd};
        let wakers = (0..loops)
            .map(|_| eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            shutdown: AtomicU8::new(0),
            credentials: Mutex::new(credentials),
            credentials_version: AtomicU64::new(0),
            drained: AtomicUsize::new(0),
            wakers,
        }))
    }

    fn wake_all(&self) {
        for w in &self.wakers {
            let _ = rustix::io::write(w, &1u64.to_ne_bytes());
        }
    }

    /// Asks every loop to drain or stop.
    pub fn request(&self, s: Shutdown) {
        let v = match s {
            Shutdown::Run => 0,
            Shutdown::Drain => 1,
            Shutdown::Now => 2,
        };
        self.shutdown.fetch_max(v, Ordering::SeqCst);
        self.wake_all();
    }

    /// The strongest shutdown requested so far.
    pub fn shutdown(&self) -> Shutdown {
        match self.shutdown.load(Ordering::SeqCst) {
            0 => Shutdown::Run,
            1 => Shutdown::Drain,
            _ => Shutdown::Now,
        }
    }

    /// Hands reloaded credentials to every loop.
    pub fn set_credentials(&self, c: Credentials) {
        if let Ok(mut guard) = self.credentials.lock() {
            *guard = c;
        }
        self.credentials_version.fetch_add(1, Ordering::SeqCst);
        self.wake_all();
    }

    /// The credentials, if they changed since `seen` (which is updated).
    fn credentials_since(&self, seen: &mut u64) -> Option<Credentials> {
        let v = self.credentials_version.load(Ordering::SeqCst);
        if v == *seen {
            return None;
        }
        *seen = v;
        self.credentials.lock().ok().map(|c| c.clone())
    }

    /// Records that one loop has no allocation left while draining (call once per loop); wakes
    /// every loop when it was the last.
    fn mark_drained(&self) {
        if self.drained.fetch_add(1, Ordering::SeqCst) + 1 >= self.wakers.len() {
            self.wake_all();
        }
    }

    /// Whether every loop has drained. Loops keep serving until then: a loop that stopped
    /// reading its share of the SO_REUSEPORT listeners would leave the clients the kernel
    /// hashes to it (such as new clients, who should get 508) unanswered.
    fn all_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst) >= self.wakers.len()
    }

    fn waker(&self, i: usize) -> Option<&OwnedFd> {
        self.wakers.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn client_addresses_are_redacted() {
        assert_eq!(
            redact(
                "203.0.113.77:5000"
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            ),
            "203.0.113.x"
        );
        let v6 = redact(
            "[2001:db8:1234:5678::9]:5000"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(v6, "2001:db8:1234::x");
    }
}
