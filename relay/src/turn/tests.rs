//! Unit tests of the TURN core with injected time and an in-memory relay-port pool.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests drive the core with known inputs and fail loudly"
)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::auth::rest_password;
use super::*;
use crate::stun::attributes::{self as attr, AddressFamily, AttributeType};
use crate::stun::message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use crate::stun::{ChannelData, ChannelNumber, IntegrityKey, IntegrityKind};

const SECRET: &str = "north";
const REALM: &str = "switchboard.test";
const T0: u64 = 1_800_000_000;

/// Hands out relay ports on 127.0.0.1 (or 2001:db8::1) from 50000 upwards, tracking what is
/// bound: the shell's side of [`Output::BindRelay`] and [`Output::ReleaseRelay`].
#[derive(Debug, Default)]
struct FakePorts {
    next: u16,
    bound: HashSet<SocketAddr>,
    released: Vec<SocketAddr>,
    exhausted: bool,
    dont_fragment: Vec<SocketAddr>,
}

impl FakePorts {
    fn allocate(&mut self, request: PortRequest) -> Option<SocketAddr> {
        if self.exhausted {
            return None;
        }
        let ip: IpAddr = match request {
            PortRequest::Any(AddressFamily::V6)
            | PortRequest::Even {
                family: AddressFamily::V6,
                ..
            } => "2001:db8::1".parse().unwrap(),
            _ => "127.0.0.1".parse().unwrap(),
        };
        if self.next == 0 {
            self.next = 50_000;
        }
        let addr = match request {
            PortRequest::Reserved(a) => return self.bound.contains(&a).then_some(a),
            PortRequest::Any(_) => SocketAddr::new(ip, self.next + 1),
            PortRequest::Even { reserve_next, .. } => {
                let a = SocketAddr::new(ip, self.next);
                if reserve_next {
                    self.bound.insert(SocketAddr::new(ip, self.next + 1));
                }
                a
            }
        };
        self.next += 2;
        self.bound.insert(addr);
        Some(addr)
    }

    fn release(&mut self, relay: SocketAddr) {
        assert!(
            self.bound.remove(&relay),
            "released {relay} twice or never bound"
        );
        self.released.push(relay);
    }
}

struct Harness {
    server: Server,
    ports: FakePorts,
    now: Millis,
    events: std::collections::VecDeque<Event>,
}

fn udp(n: u8) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(IpAddr::from([203, 0, 113, n]), 40_000 + u16::from(n)),
        server: "198.51.100.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn tcp(n: u8) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..udp(n)
    }
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An owned view of a response, for assertions.
#[derive(Debug)]
struct Response {
    bytes: Vec<u8>,
}

impl Response {
    fn msg(&self) -> Message<'_> {
        Message::decode(&self.bytes).expect("response decodes")
    }
    fn class(&self) -> Class {
        self.msg().typ.class
    }
    fn code(&self) -> Option<u16> {
        self.msg()
            .get(attr::ERROR_CODE)
            .map(|v| attr::decode_error_code(v).unwrap().0)
    }
    fn text(&self, t: AttributeType) -> Option<String> {
        self.msg()
            .get(t)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }
    fn xor(&self, t: AttributeType) -> Option<SocketAddr> {
        self.msg().xor_address(t).map(|r| r.unwrap())
    }
    fn lifetime(&self) -> Option<u32> {
        self.msg()
            .get(attr::LIFETIME)
            .map(|v| attr::decode_u32(v, attr::LIFETIME).unwrap())
    }
}

/// A TURN client speaking long-term credentials to the harness.
struct Client {
    ft: FiveTuple,
    username: String,
    password: String,
    nonce: Option<String>,
    tid: u32,
}

impl Client {
    fn rest(ft: FiveTuple, id: &str, expires: u64) -> Self {
        let username = format!("{expires}:{id}");
        let password = rest_password(SECRET, &username);
        Self {
            ft,
            username,
            password,
            nonce: None,
            tid: 0,
        }
    }

    fn key(&self) -> IntegrityKey {
        IntegrityKey::long_term(&self.username, REALM, &self.password)
    }

    fn next_tid(&mut self) -> TransactionId {
        self.tid += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.tid.to_be_bytes());
        t[4] = self.ft.client.port() as u8;
        TransactionId(t)
    }

    fn build(
        &self,
        method: Method,
        tid: TransactionId,
        f: &dyn Fn(&mut MessageBuilder),
    ) -> Vec<u8> {
        let mut b = MessageBuilder::new(MessageType::new(method, Class::Request), tid);
        f(&mut b);
        if let Some(nonce) = &self.nonce {
            b.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, REALM.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity(IntegrityKind::Sha1, &self.key());
        }
        b.fingerprint().finish()
    }

    /// Sends an authenticated request, fetching or refreshing the nonce as a real client does.
    fn call(
        &mut self,
        h: &mut Harness,
        method: Method,
        f: &dyn Fn(&mut MessageBuilder),
    ) -> Response {
        let tid = self.next_tid();
        self.call_with_tid(h, method, tid, f)
    }

    fn call_with_tid(
        &mut self,
        h: &mut Harness,
        method: Method,
        tid: TransactionId,
        f: &dyn Fn(&mut MessageBuilder),
    ) -> Response {
        for _ in 0..3 {
            let req = self.build(method, tid, f);
            let resp = h.exchange(self.ft, &req);
            if (self.nonce.is_none() || resp.code() == Some(438))
                && let Some(n) = resp.text(attr::NONCE)
            {
                self.nonce = Some(n);
                continue;
            }
            if resp.class() == Class::Success || resp.code().is_some_and(|c| c != 401) {
                assert!(
                    resp.msg().verify_integrity(&self.key()),
                    "authenticated response carries valid MI"
                );
            }
            return resp;
        }
        panic!("no final response");
    }

    fn allocate(&mut self, h: &mut Harness) -> Response {
        self.call(h, Method::ALLOCATE, &|b| {
            b.attr(
                attr::REQUESTED_TRANSPORT,
                &attr::encode_requested_transport(17),
            );
        })
    }

    fn permit(&mut self, h: &mut Harness, p: SocketAddr) -> Response {
        self.call(h, Method::CREATE_PERMISSION, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        })
    }

    fn bind(&mut self, h: &mut Harness, n: u16, p: SocketAddr) -> Response {
        self.call(h, Method::CHANNEL_BIND, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &attr::encode_channel_number(n))
                .xor_address(attr::XOR_PEER_ADDRESS, p);
        })
    }

    fn refresh(&mut self, h: &mut Harness, lifetime: u32) -> Response {
        self.call(h, Method::REFRESH, &|b| {
            b.u32_attr(attr::LIFETIME, lifetime);
        })
    }

    fn send(&mut self, h: &mut Harness, p: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        let tid = self.next_tid();
        let ind = MessageBuilder::new(MessageType::new(Method::SEND, Class::Indication), tid)
            .xor_address(attr::XOR_PEER_ADDRESS, p)
            .attr(attr::DATA, data)
            .finish();
        h.feed(self.ft, &ind)
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new(REALM, [7; 32]);
        config
            .peer_policy
            .allowed
            .push("192.0.2.0/24".parse().unwrap());
        f(&mut config);
        let credentials = Credentials {
            secrets: vec![SECRET.into()],
            users: [("static".to_owned(), "pw".to_owned())].into(),
        };
        Self {
            server: Server::new(config, credentials),
            ports: FakePorts::default(),
            now: Millis::from_secs(T0),
            events: std::collections::VecDeque::new(),
        }
    }

    /// Performs the core's outputs as the shell would; returns the transmits and the deadline.
    fn pump(&mut self) -> (Vec<Transmit>, Option<Millis>) {
        let mut out = Vec::new();
        loop {
            match self.server.poll_output() {
                Output::Transmit(t) => out.push(t),
                Output::BindRelay {
                    id,
                    request,
                    dont_fragment,
                } => {
                    let result = self.ports.allocate(request).ok_or(BindFailure::NoPort);
                    if let (Ok(a), true) = (result, dont_fragment) {
                        self.ports.dont_fragment.push(a);
                    }
                    self.server.handle_relay_bound(id, result, self.now);
                }
                Output::ReleaseRelay(a) => self.ports.release(a),
                Output::Event(e) => self.events.push_back(e),
                Output::Timeout(t) => return (out, t),
            }
        }
    }

    fn feed(&mut self, ft: FiveTuple, bytes: &[u8]) -> Vec<Transmit> {
        let forward = self
            .server
            .handle_datagram(ft, bytes, self.now)
            .map(|f| f.to_transmit());
        forward.into_iter().chain(self.pump().0).collect()
    }

    fn exchange(&mut self, ft: FiveTuple, bytes: &[u8]) -> Response {
        let out = self.feed(ft, bytes);
        assert_eq!(out.len(), 1, "one response expected, got {out:?}");
        match out.into_iter().next().unwrap() {
            Transmit::Client {
                five_tuple,
                payload,
            } => {
                assert_eq!(five_tuple, ft);
                Response { bytes: payload }
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn peer_sends(&mut self, relay: SocketAddr, p: SocketAddr, data: &[u8]) -> Vec<Transmit> {
        let forward = self
            .server
            .handle_peer_datagram(relay, p, data, self.now)
            .map(|f| f.to_transmit());
        forward.into_iter().chain(self.pump().0).collect()
    }

    /// The next lifecycle event the core reported.
    fn event(&mut self) -> Option<Event> {
        self.pump();
        self.events.pop_front()
    }

    /// The core's next deadline.
    fn deadline(&mut self) -> Option<Millis> {
        self.pump().1
    }

    /// Advances time, running timers as the shell would.
    fn advance(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        while let Some(t) = self.deadline().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.server.handle_timeout(self.now);
        }
        self.pump();
        self.now = end;
    }
}

fn relay_of(r: &Response) -> SocketAddr {
    r.xor(attr::XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS")
}

fn later() -> u64 {
    T0 + 86_400
}

#[test]
fn binding_reflects_the_client_address() {
    let mut h = Harness::new();
    let req = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([1; 12]),
    )
    .finish();
    let r = h.exchange(udp(1), &req);
    assert_eq!(r.class(), Class::Success);
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(udp(1).client));
    assert!(
        r.text(attr::SOFTWARE)
            .unwrap()
            .starts_with("switchboard-relay")
    );
}

#[test]
fn unauthenticated_allocate_is_challenged() {
    let mut h = Harness::new();
    let req = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([1; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .finish();
    let r = h.exchange(udp(1), &req);
    assert_eq!(r.code(), Some(401));
    assert_eq!(r.text(attr::REALM).as_deref(), Some(REALM));
    assert!(r.text(attr::NONCE).is_some());
    assert!(r.msg().integrity_kind().is_none());
    assert_eq!(h.server.stats().auth_failures.missing_integrity, 1);
}

#[test]
fn allocate_with_rest_credentials() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.allocate(&mut h);
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    assert_eq!(r.lifetime(), Some(600));
    assert_eq!(r.xor(attr::XOR_MAPPED_ADDRESS), Some(udp(1).client));
    let relay = relay_of(&r);
    assert!(h.ports.bound.contains(&relay));
    assert_eq!(h.server.allocation_count(), 1);
    assert!(matches!(h.event(), Some(Event::AllocationCreated { .. })));
    assert!(r.msg().has_fingerprint() && r.msg().verify_fingerprint());
}

#[test]
fn allocate_lifetime_is_clamped() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 100_000);
    });
    assert_eq!(r.lifetime(), Some(3600));
    let mut c = Client::rest(udp(2), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 10);
    });
    assert_eq!(r.lifetime(), Some(600));
}

#[test]
fn allocate_retransmission_and_mismatch() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let tid = TransactionId([9; 12]);
    let f = |b: &mut MessageBuilder| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    let first = c.call_with_tid(&mut h, Method::ALLOCATE, tid, &f);
    let again = c.call_with_tid(&mut h, Method::ALLOCATE, tid, &f);
    assert_eq!(again.class(), Class::Success);
    assert_eq!(relay_of(&again), relay_of(&first));
    assert_eq!(h.server.allocation_count(), 1);
    let other = c.allocate(&mut h);
    assert_eq!(other.code(), Some(437));
}

#[test]
fn allocate_transport_errors() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    assert_eq!(c.call(&mut h, Method::ALLOCATE, &|_| {}).code(), Some(400));
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(442));
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17]);
    });
    assert_eq!(r.code(), Some(400));
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn dont_fragment_is_honoured_or_refused_as_unknown() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let with_df = |b: &mut MessageBuilder| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::DONT_FRAGMENT, &[]);
    };
    let r = c.call(&mut h, Method::ALLOCATE, &with_df);
    assert_eq!(r.class(), Class::Success);
    assert_eq!(h.ports.dont_fragment, vec![relay_of(&r)]);

    let mut h = Harness::with(|c| c.dont_fragment = false);
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &with_df);
    assert_eq!(r.code(), Some(420));
    let unknown =
        attr::decode_unknown_attributes(r.msg().get(attr::UNKNOWN_ATTRIBUTES).unwrap()).unwrap();
    assert_eq!(unknown, vec![attr::DONT_FRAGMENT]);
    // The client retries without DONT-FRAGMENT (RFC 8656 §7.3) and succeeds.
    assert_eq!(c.allocate(&mut h).class(), Class::Success);
}

#[test]
fn even_port_and_reservation_token() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    assert_eq!(r.class(), Class::Success);
    let relay = relay_of(&r);
    assert_eq!(relay.port() % 2, 0);
    let token = r.msg().get(attr::RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(token.len(), 8);

    // Token together with EVEN-PORT is a bad request.
    let mut d = Client::rest(udp(2), "alice", later());
    let t = token.clone();
    let bad = d.call(&mut h, Method::ALLOCATE, &move |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &t)
            .attr(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(bad.code(), Some(400));

    let t = token.clone();
    let second = d.call(&mut h, Method::ALLOCATE, &move |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &t);
    });
    assert_eq!(second.class(), Class::Success);
    assert_eq!(relay_of(&second).port(), relay.port() + 1);

    // A token is single-use.
    let mut e = Client::rest(udp(3), "alice", later());
    let t = token;
    let reused = e.call(&mut h, Method::ALLOCATE, &move |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::RESERVATION_TOKEN, &t);
    });
    assert_eq!(reused.code(), Some(508));

    // EVEN-PORT without R reserves nothing.
    let r = e.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0]);
    });
    assert_eq!(relay_of(&r).port() % 2, 0);
    assert!(r.msg().get(attr::RESERVATION_TOKEN).is_none());
}

#[test]
fn unused_reservations_are_released() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::EVEN_PORT, &[0x80]);
    });
    let reserved = SocketAddr::new(relay_of(&r).ip(), relay_of(&r).port() + 1);
    assert!(h.ports.bound.contains(&reserved));
    h.advance(Duration::from_secs(31));
    assert!(!h.ports.bound.contains(&reserved));
}

#[test]
fn ipv6_relay_unsupported_is_440() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(r.code(), Some(440));
}

#[test]
fn wrong_unknown_and_expired_credentials_get_401() {
    let mut h = Harness::new();
    let mut wrong = Client::rest(udp(1), "alice", later());
    wrong.password = "nope".into();
    assert_eq!(wrong.allocate(&mut h).code(), Some(401));
    let mut unknown = Client::rest(udp(2), "bob", later());
    unknown.username = "bob".into();
    assert_eq!(unknown.allocate(&mut h).code(), Some(401));
    let mut expired = Client::rest(udp(3), "carol", T0 - 1);
    assert_eq!(expired.allocate(&mut h).code(), Some(401));
    let mut wrong_realm = Client::rest(udp(4), "dave", later());
    wrong_realm.nonce = Some(h.server_nonce(udp(4)));
    let req = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([4; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .attr(attr::USERNAME, wrong_realm.username.as_bytes())
    .attr(attr::REALM, b"elsewhere")
    .attr(attr::NONCE, wrong_realm.nonce.clone().unwrap().as_bytes())
    .integrity(IntegrityKind::Sha1, &wrong_realm.key())
    .finish();
    assert_eq!(h.exchange(udp(4), &req).code(), Some(401));
    let f = h.server.stats().auth_failures;
    assert_eq!(
        (f.bad_integrity, f.unknown_user, f.expired, f.wrong_realm),
        (1, 1, 1, 1)
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn missing_username_with_integrity_is_400() {
    let mut h = Harness::new();
    let nonce = h.server_nonce(udp(1));
    let req = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([4; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .attr(attr::REALM, REALM.as_bytes())
    .attr(attr::NONCE, nonce.as_bytes())
    .integrity(IntegrityKind::Sha1, &IntegrityKey::short_term("x"))
    .finish();
    assert_eq!(h.exchange(udp(1), &req).code(), Some(400));
}

impl Harness {
    fn server_nonce(&mut self, ft: FiveTuple) -> String {
        let req = MessageBuilder::new(
            MessageType::new(Method::ALLOCATE, Class::Request),
            TransactionId([0; 12]),
        )
        .finish();
        self.exchange(ft, &req).text(attr::NONCE).unwrap()
    }
}

#[test]
fn sha256_integrity_is_accepted_and_mirrored() {
    let mut h = Harness::new();
    let c = Client::rest(udp(1), "alice", later());
    let nonce = h.server_nonce(udp(1));
    let req = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([4; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .attr(attr::USERNAME, c.username.as_bytes())
    .attr(attr::REALM, REALM.as_bytes())
    .attr(attr::NONCE, nonce.as_bytes())
    .integrity(IntegrityKind::Sha256, &c.key())
    .finish();
    let r = h.exchange(udp(1), &req);
    assert_eq!(r.class(), Class::Success);
    assert_eq!(r.msg().integrity_kind(), Some(IntegrityKind::Sha256));
    assert!(r.msg().verify_integrity(&c.key()));
}

#[test]
fn static_users_authenticate() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "x", later());
    c.username = "static".into();
    c.password = "pw".into();
    assert_eq!(c.allocate(&mut h).class(), Class::Success);
}

#[test]
fn stale_nonce_gets_438_then_succeeds() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    assert_eq!(c.allocate(&mut h).class(), Class::Success);
    let old = c.nonce.clone().unwrap();
    h.advance(Duration::from_secs(601));
    // Send with the old nonce by hand to observe the 438.
    let req = c.build(Method::REFRESH, TransactionId([5; 12]), &|_| {});
    let r = h.exchange(udp(1), &req);
    assert_eq!(r.code(), Some(438));
    assert_ne!(r.text(attr::NONCE).unwrap(), old);
    assert_eq!(r.text(attr::REALM).as_deref(), Some(REALM));
    // The allocation expired meanwhile (600 s), so the retried refresh is a 437.
    assert_eq!(c.refresh(&mut h, 600).code(), Some(437));
    assert_eq!(h.server.stats().auth_failures.stale_nonce, 2);
}

#[test]
fn nonce_from_another_client_is_stale() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.nonce = Some(h.server_nonce(udp(2)));
    let req = c.build(Method::ALLOCATE, TransactionId([5; 12]), &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(h.exchange(udp(1), &req).code(), Some(438));
}

#[test]
fn refresh_extends_and_zero_deletes() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    h.advance(Duration::from_secs(500));
    let r = c.refresh(&mut h, 1200);
    assert_eq!(r.lifetime(), Some(1200));
    h.advance(Duration::from_secs(1000));
    assert_eq!(
        h.server.allocation_count(),
        1,
        "refresh extended the lifetime"
    );
    let r = c.refresh(&mut h, 0);
    assert_eq!(r.class(), Class::Success);
    assert_eq!(r.lifetime(), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ports.released, vec![relay]);
    assert_eq!(c.refresh(&mut h, 600).code(), Some(437));
}

#[test]
fn requests_without_allocation_are_437() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    assert_eq!(c.refresh(&mut h, 600).code(), Some(437));
    assert_eq!(c.permit(&mut h, peer("192.0.2.10:5000")).code(), Some(437));
    assert_eq!(
        c.bind(&mut h, 0x4000, peer("192.0.2.10:5000")).code(),
        Some(437)
    );
}

#[test]
fn other_username_on_allocation_is_441() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    let mut other = Client::rest(udp(1), "mallory", later());
    assert_eq!(other.refresh(&mut h, 600).code(), Some(441));
    assert_eq!(
        other.permit(&mut h, peer("192.0.2.10:5000")).code(),
        Some(441)
    );
    assert_eq!(
        other.bind(&mut h, 0x4000, peer("192.0.2.10:5000")).code(),
        Some(441)
    );
    assert_eq!(h.server.stats().auth_failures.wrong_credentials, 3);
}

#[test]
fn expired_rest_username_ends_the_allocation_at_next_request() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", T0 + 100);
    c.allocate(&mut h);
    h.advance(Duration::from_secs(101));
    assert_eq!(c.permit(&mut h, peer("192.0.2.10:5000")).code(), Some(401));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ports.released.len(), 1);
    // The same for Refresh and ChannelBind on a fresh allocation.
    for method in [Method::REFRESH, Method::CHANNEL_BIND] {
        let mut c = Client::rest(udp(2), "alice", h.now.as_secs() + 50);
        assert_eq!(c.allocate(&mut h).class(), Class::Success);
        h.advance(Duration::from_secs(51));
        let r = c.call(&mut h, method, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &attr::encode_channel_number(0x4000))
                .xor_address(attr::XOR_PEER_ADDRESS, peer("192.0.2.10:5000"));
        });
        assert_eq!(r.code(), Some(401), "{method:?}");
        assert_eq!(h.server.allocation_count(), 0);
    }
}

#[test]
fn secret_rotation_accepts_both_and_revokes_removed() {
    let mut h = Harness::new();
    h.server.set_credentials(Credentials {
        secrets: vec!["old".into(), SECRET.into()],
        ..Default::default()
    });
    let mut with_old = Client::rest(udp(1), "alice", later());
    with_old.password = rest_password("old", &with_old.username);
    let mut with_new = Client::rest(udp(2), "bob", later());
    assert_eq!(with_old.allocate(&mut h).class(), Class::Success);
    assert_eq!(with_new.allocate(&mut h).class(), Class::Success);

    h.server.set_credentials(Credentials {
        secrets: vec![SECRET.into()],
        ..Default::default()
    });
    assert_eq!(with_new.refresh(&mut h, 600).class(), Class::Success);
    assert_eq!(with_old.refresh(&mut h, 600).code(), Some(401));
    assert_eq!(
        h.server.allocation_count(),
        1,
        "the allocation of the removed secret is revoked"
    );
    assert!(h.server.allocation(&udp(2)).is_some());
}

#[test]
fn forged_integrity_does_not_end_a_live_allocation() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    let mut forger = Client::rest(udp(1), "alice", later());
    forger.username = c.username.clone();
    forger.password = "guess".into();
    assert_eq!(forger.refresh(&mut h, 0).code(), Some(401));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn permissions_gate_relaying_both_ways() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let p = peer("192.0.2.10:5000");

    assert!(c.send(&mut h, p, b"early").is_empty(), "no permission yet");
    assert!(
        h.peer_sends(relay, p, b"early").is_empty(),
        "no permission yet"
    );

    assert_eq!(c.permit(&mut h, p).class(), Class::Success);
    let out = c.send(&mut h, p, b"hello");
    assert_eq!(
        out,
        vec![Transmit::Peer {
            relay,
            peer: p,
            payload: b"hello".to_vec()
        }]
    );

    // Permissions are per IP: another port of the same peer may answer.
    let p2 = peer("192.0.2.10:6000");
    let out = h.peer_sends(relay, p2, b"world");
    let Transmit::Client {
        five_tuple,
        payload,
    } = &out[0]
    else {
        panic!()
    };
    assert_eq!(*five_tuple, udp(1));
    let m = Message::decode(payload).unwrap();
    assert_eq!(m.typ, MessageType::new(Method::DATA, Class::Indication));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS).unwrap().unwrap(), p2);
    assert_eq!(m.get(attr::DATA).unwrap(), b"world");

    // RFC 8656 §9: permissions last 300 s.
    h.advance(Duration::from_secs(299));
    assert_eq!(c.send(&mut h, p, b"x").len(), 1);
    h.advance(Duration::from_secs(2));
    assert!(c.send(&mut h, p, b"x").is_empty());
    assert!(h.peer_sends(relay, p, b"x").is_empty());
    let s = h.server.stats();
    assert_eq!(
        (s.packets_to_peer, s.packets_to_client, s.bytes_to_peer),
        (2, 1, 6)
    );
}

#[test]
fn denied_peers_get_403_unless_allowed() {
    let mut h = Harness::with(|c| c.peer_policy.allowed.clear());
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    for denied in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "192.168.1.1:9",
        "169.254.169.254:80",
        "224.0.0.1:9",
        "0.0.0.0:9",
    ] {
        assert_eq!(c.permit(&mut h, peer(denied)).code(), Some(403), "{denied}");
        assert_eq!(
            c.bind(&mut h, 0x4001, peer(denied)).code(),
            Some(403),
            "{denied}"
        );
        assert!(c.send(&mut h, peer(denied), b"x").is_empty());
        assert!(h.peer_sends(relay, peer(denied), b"x").is_empty());
    }
    assert_eq!(h.server.stats().denied_peers, 12);
    // One denied peer among allowed ones fails the whole request and installs nothing.
    let r = c.call(&mut h, Method::CREATE_PERMISSION, &|b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, peer("8.8.8.8:53"))
            .xor_address(attr::XOR_PEER_ADDRESS, peer("10.1.1.1:1"));
    });
    assert_eq!(r.code(), Some(403));
    assert!(c.send(&mut h, peer("8.8.8.8:53"), b"x").is_empty());

    let mut h = Harness::with(|c| c.peer_policy.allow_loopback = true);
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    assert_eq!(
        c.permit(&mut h, peer("127.0.0.1:9")).class(),
        Class::Success
    );
    assert_eq!(c.permit(&mut h, peer("10.0.0.1:9")).code(), Some(403));
}

#[test]
fn peer_family_mismatch_is_443() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    assert_eq!(
        c.permit(&mut h, peer("[2606:4700::1]:53")).code(),
        Some(443)
    );
}

#[test]
fn create_permission_without_peer_is_400() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    assert_eq!(
        c.call(&mut h, Method::CREATE_PERMISSION, &|_| {}).code(),
        Some(400)
    );
}

#[test]
fn channels_carry_data_both_ways_and_expire() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let p = peer("192.0.2.10:5000");
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);

    let out = h.feed(
        udp(1),
        &ChannelData::encode(ChannelNumber(0x4000), b"ping", false),
    );
    assert_eq!(
        out,
        vec![Transmit::Peer {
            relay,
            peer: p,
            payload: b"ping".to_vec()
        }]
    );
    let out = h.peer_sends(relay, p, b"pong");
    assert_eq!(
        out,
        vec![Transmit::Client {
            five_tuple: udp(1),
            payload: ChannelData::encode(ChannelNumber(0x4000), b"pong", false)
        }]
    );
    // Unbound channel numbers are dropped.
    assert!(
        h.feed(
            udp(1),
            &ChannelData::encode(ChannelNumber(0x4001), b"x", false)
        )
        .is_empty()
    );

    // The binding installed a 300 s permission; refreshing the permission alone keeps data
    // flowing until the channel's 600 s are up, then Data indications take over.
    assert_eq!(c.refresh(&mut h, 3600).lifetime(), Some(3600));
    h.advance(Duration::from_secs(290));
    assert_eq!(c.permit(&mut h, p).class(), Class::Success);
    h.advance(Duration::from_secs(290));
    assert_eq!(c.permit(&mut h, p).class(), Class::Success);
    h.advance(Duration::from_secs(30));
    assert!(
        h.feed(
            udp(1),
            &ChannelData::encode(ChannelNumber(0x4000), b"x", false)
        )
        .is_empty()
    );
    let out = h.peer_sends(relay, p, b"late");
    let Transmit::Client { payload, .. } = &out[0] else {
        panic!()
    };
    assert!(
        Message::decode(payload).is_ok(),
        "a Data indication once the channel expired"
    );
}

#[test]
fn channel_bind_validation() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    let (p, q) = (peer("192.0.2.10:5000"), peer("192.0.2.11:5000"));
    assert_eq!(c.bind(&mut h, 0x3FFF, p).code(), Some(400));
    assert_eq!(c.bind(&mut h, 0x8000, p).code(), Some(400));
    assert_eq!(
        c.call(&mut h, Method::CHANNEL_BIND, &|b| {
            b.attr(attr::CHANNEL_NUMBER, &attr::encode_channel_number(0x4000));
        })
        .code(),
        Some(400)
    );
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    assert_eq!(
        c.bind(&mut h, 0x4000, p).class(),
        Class::Success,
        "rebinding the same pair refreshes"
    );
    assert_eq!(
        c.bind(&mut h, 0x4000, q).code(),
        Some(400),
        "number bound to another peer"
    );
    assert_eq!(
        c.bind(&mut h, 0x4001, p).code(),
        Some(400),
        "peer bound to another number"
    );
    assert_eq!(c.bind(&mut h, 0x4FFF, q).class(), Class::Success);
}

#[test]
fn channel_data_to_tcp_clients_is_padded() {
    let mut h = Harness::new();
    let mut c = Client::rest(tcp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let p = peer("192.0.2.10:5000");
    c.bind(&mut h, 0x4000, p);
    let out = h.peer_sends(relay, p, b"abcde");
    let Transmit::Client { payload, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(payload.len(), 12);
    // Closing the connection ends the allocation.
    h.server.handle_connection_closed(tcp(1));
    h.pump();
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ports.released, vec![relay]);
}

#[test]
fn allocations_expire() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    h.event();
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ports.released, vec![relay]);
    assert!(matches!(
        h.event(),
        Some(Event::AllocationDeleted {
            reason: DeleteReason::Expired,
            ..
        })
    ));
    assert_eq!(h.deadline(), None, "no timers without state");
}

#[test]
fn quotas() {
    let mut h = Harness::with(|c| {
        c.max_allocations_per_user = 2;
        c.max_allocations = 3;
    });
    for n in 1..=2 {
        assert_eq!(
            Client::rest(udp(n), "alice", later())
                .allocate(&mut h)
                .class(),
            Class::Success
        );
    }
    assert_eq!(
        Client::rest(udp(3), "alice", later())
            .allocate(&mut h)
            .code(),
        Some(486)
    );
    // The quota is per user id, not per REST username: a new expiry does not escape it.
    assert_eq!(
        Client::rest(udp(4), "alice", later() + 1)
            .allocate(&mut h)
            .code(),
        Some(486)
    );
    assert_eq!(
        Client::rest(udp(5), "bob", later())
            .allocate(&mut h)
            .class(),
        Class::Success
    );
    assert_eq!(
        Client::rest(udp(6), "carol", later())
            .allocate(&mut h)
            .code(),
        Some(508)
    );
    assert_eq!(h.server.stats().quota_rejections, 3);
    // Freeing one gives the slot back.
    Client::rest(udp(1), "alice", later()).refresh(&mut h, 0);
    assert_eq!(
        Client::rest(udp(3), "alice", later())
            .allocate(&mut h)
            .class(),
        Class::Success
    );
}

#[test]
fn port_exhaustion_is_508() {
    let mut h = Harness::new();
    h.ports.exhausted = true;
    assert_eq!(
        Client::rest(udp(1), "alice", later())
            .allocate(&mut h)
            .code(),
        Some(508)
    );
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut h = Harness::with(|c| c.bandwidth_bytes_per_sec = 1000);
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    let p = peer("192.0.2.10:5000");
    c.permit(&mut h, p);
    let sent = (0..20)
        .filter(|_| !c.send(&mut h, p, &[0; 100]).is_empty())
        .count();
    assert_eq!(sent, 10);
    h.advance(Duration::from_millis(500));
    let sent = (0..20)
        .filter(|_| !c.send(&mut h, p, &[0; 100]).is_empty())
        .count();
    assert_eq!(sent, 5);
    assert_eq!(h.server.stats().dropped_rate_limited, 25);
}

#[test]
fn unknown_required_attribute_is_420() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let r = c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .attr(AttributeType(0x7777), b"?")
            .attr(AttributeType(0xC001), b"ok");
    });
    assert_eq!(r.code(), Some(420));
    let unknown =
        attr::decode_unknown_attributes(r.msg().get(attr::UNKNOWN_ATTRIBUTES).unwrap()).unwrap();
    assert_eq!(unknown, vec![AttributeType(0x7777)]);
    let bind = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([2; 12]),
    )
    .attr(AttributeType(0x0003), &[0, 0, 0, 0])
    .finish();
    assert_eq!(h.exchange(udp(1), &bind).code(), Some(420));
}

#[test]
fn unknown_method_is_400_and_responses_are_ignored() {
    let mut h = Harness::new();
    let req = MessageBuilder::new(
        MessageType::new(Method(0x0FF), Class::Request),
        TransactionId([2; 12]),
    )
    .finish();
    assert_eq!(h.exchange(udp(1), &req).code(), Some(400));
    let resp = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Success),
        TransactionId([2; 12]),
    )
    .finish();
    assert!(h.feed(udp(1), &resp).is_empty());
}

#[test]
fn wrong_fingerprint_is_dropped() {
    let mut h = Harness::new();
    let mut req = MessageBuilder::new(
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([2; 12]),
    )
    .fingerprint()
    .finish();
    let last = req.len() - 1;
    req[last] ^= 1;
    assert!(h.feed(udp(1), &req).is_empty());
    assert_eq!(h.server.stats().malformed, 1);
}

#[test]
fn garbage_never_panics_and_leaves_service_intact() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let mut seed = 0x1234_5678_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = c.build(Method::REFRESH, TransactionId([3; 12]), &|b| {
        b.u32_attr(attr::LIFETIME, 600);
    });
    for i in 0..20_000 {
        let len = (rand() % 120) as usize;
        let mut bytes: Vec<u8> = if i % 2 == 0 {
            (0..len).map(|_| rand() as u8).collect()
        } else {
            let mut v = valid.clone();
            for _ in 0..3 {
                let at = (rand() as usize) % v.len();
                v[at] = rand() as u8;
            }
            v.truncate((rand() as usize) % (v.len() + 1));
            v
        };
        if i % 3 == 0 && !bytes.is_empty() {
            bytes[0] &= 0x3F;
        }
        h.feed(udp(1), &bytes);
        h.peer_sends(relay, peer("192.0.2.1:1"), &bytes);
    }
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(
        c.permit(&mut h, peer("192.0.2.10:5000")).class(),
        Class::Success
    );
}

#[test]
fn allocation_state_is_small() {
    let fixed = std::mem::size_of::<Allocation>();
    // Fixed part plus a few permissions and channels stays well under 1 KiB.
    let typical = fixed
        + 4 * std::mem::size_of::<Permission>()
        + 2 * std::mem::size_of::<ChannelBinding>()
        + 2 * 40;
    assert!(fixed <= 320, "Allocation is {fixed} bytes");
    assert!(typical <= 1024, "typical allocation is {typical} bytes");
}

#[test]
fn allocate_after_unswept_expiry_succeeds() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.allocate(&mut h);
    // Jump past the lifetime without running timers: the stale allocation must not cause a 437.
    h.now = h.now.saturating_add(Duration::from_secs(601));
    let r = c.allocate(&mut h);
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn ipv6_relays_and_peers() {
    let mut h = Harness::with(|c| {
        c.peer_policy
            .allowed
            .push("2001:db8:ffff::/48".parse().unwrap());
        c.relay_families = vec![AddressFamily::V4, AddressFamily::V6];
    });
    let c = Client::rest(udp(1), "alice", later());
    let nonce = h.server_nonce(udp(1));
    let req = MessageBuilder::new(
        MessageType::new(Method::ALLOCATE, Class::Request),
        TransactionId([6; 12]),
    )
    .attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    .attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
    .attr(attr::USERNAME, c.username.as_bytes())
    .attr(attr::REALM, REALM.as_bytes())
    .attr(attr::NONCE, nonce.as_bytes())
    .integrity(IntegrityKind::Sha1, &c.key())
    .finish();
    let r = h.exchange(udp(1), &req);
    assert_eq!(r.class(), Class::Success, "{:?}", r.code());
    let relay = relay_of(&r);
    assert!(relay.is_ipv6());
    // A v6 peer in an allowed prefix gets a permission; a v4 peer is a family mismatch.
    let permit = |h: &mut Harness, p: SocketAddr, tid: u8| {
        let req = MessageBuilder::new(
            MessageType::new(Method::CREATE_PERMISSION, Class::Request),
            TransactionId([tid; 12]),
        )
        .xor_address(attr::XOR_PEER_ADDRESS, p)
        .attr(attr::USERNAME, c.username.as_bytes())
        .attr(attr::REALM, REALM.as_bytes())
        .attr(attr::NONCE, nonce.as_bytes())
        .integrity(IntegrityKind::Sha1, &c.key())
        .finish();
        h.exchange(udp(1), &req)
    };
    assert_eq!(
        permit(&mut h, peer("[2001:db8:ffff::5]:9"), 7).class(),
        Class::Success
    );
    assert_eq!(permit(&mut h, peer("[fe80::1]:9"), 8).code(), Some(403));
    assert_eq!(permit(&mut h, peer("192.0.2.10:9"), 9).code(), Some(443));
    let out = h.peer_sends(relay, peer("[2001:db8:ffff::5]:77"), b"v6");
    assert!(matches!(out.first(), Some(Transmit::Client { .. })));
}

#[test]
fn expired_channels_cannot_be_rebound_elsewhere_for_five_minutes() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    c.call(&mut h, Method::ALLOCATE, &|b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .u32_attr(attr::LIFETIME, 3600);
    });
    let (p, q) = (peer("192.0.2.10:5000"), peer("192.0.2.11:5000"));
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    h.advance(Duration::from_secs(601));
    assert!(
        h.feed(
            udp(1),
            &ChannelData::encode(ChannelNumber(0x4000), b"x", false)
        )
        .is_empty()
    );
    assert_eq!(
        c.bind(&mut h, 0x4000, q).code(),
        Some(400),
        "number held after expiry"
    );
    assert_eq!(
        c.bind(&mut h, 0x4001, p).code(),
        Some(400),
        "peer held after expiry"
    );
    assert_eq!(c.bind(&mut h, 0x4002, q).class(), Class::Success);
    // Rebinding the same pair is allowed at once and revives the channel.
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    assert_eq!(
        h.feed(
            udp(1),
            &ChannelData::encode(ChannelNumber(0x4000), b"x", false)
        )
        .len(),
        1
    );
    // Both bindings expire at +1201 s; once their hold has passed (+1501 s), number and peer
    // are free for new pairings.
    h.advance(Duration::from_secs(902));
    assert_eq!(c.refresh(&mut h, 3600).class(), Class::Success);
    assert_eq!(c.bind(&mut h, 0x4002, p).class(), Class::Success);
}

#[test]
fn draining_refuses_new_allocations_and_serves_existing_ones() {
    let mut h = Harness::new();
    let mut alice = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&alice.allocate(&mut h));
    let mut bob = Client::rest(udp(2), "bob", later());
    assert_eq!(bob.allocate(&mut h).class(), Class::Success);
    assert!(!h.server.is_draining());

    h.server.start_draining();
    assert!(h.server.is_draining());
    assert_eq!(h.server.allocation_count(), 2);
    let mut carol = Client::rest(udp(3), "carol", later());
    let r = carol.allocate(&mut h);
    assert_eq!(r.code(), Some(508));
    let phrase = r.msg().get(attr::ERROR_CODE).unwrap()[4..].to_vec();
    assert_eq!(phrase, b"Server Is Draining");
    assert_eq!(h.server.allocation_count(), 2);
    assert_eq!(h.server.stats().quota_rejections, 1);

    // Calls in progress continue: Refresh, CreatePermission, ChannelBind, Send and ChannelData.
    h.advance(Duration::from_secs(60));
    assert_eq!(alice.refresh(&mut h, 600).lifetime(), Some(600));
    let p = peer("192.0.2.10:5000");
    assert_eq!(alice.permit(&mut h, p).class(), Class::Success);
    assert_eq!(alice.bind(&mut h, 0x4000, p).class(), Class::Success);
    assert_eq!(
        alice.send(&mut h, p, b"hi"),
        vec![Transmit::Peer {
            relay,
            peer: p,
            payload: b"hi".to_vec()
        }]
    );
    assert_eq!(
        h.feed(
            udp(1),
            &ChannelData::encode(ChannelNumber(0x4000), b"ping", false)
        ),
        vec![Transmit::Peer {
            relay,
            peer: p,
            payload: b"ping".to_vec()
        }]
    );
    assert_eq!(h.peer_sends(relay, p, b"pong").len(), 1);

    // Allocations leave by release or expiry; the count is what the shell waits on.
    assert_eq!(alice.refresh(&mut h, 0).lifetime(), Some(0));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(600));
    assert_eq!(h.server.allocation_count(), 0, "bob's allocation expired");
    assert_eq!(carol.allocate(&mut h).code(), Some(508), "still draining");
}

/// ChannelData for channel 0x4000 from `c`, and whether the relay forwarded it.
fn channel_relayed(h: &mut Harness, c: &Client, data: &[u8]) -> bool {
    !h.feed(
        c.ft,
        &ChannelData::encode(ChannelNumber(0x4000), data, false),
    )
    .is_empty()
}

#[test]
fn a_rest_allocation_never_outlives_its_credential() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", T0 + 100);
    let r = c.allocate(&mut h);
    assert_eq!(r.lifetime(), Some(100), "lifetime capped at the credential");
    let relay = relay_of(&r);
    let p = peer("192.0.2.10:5000");
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    assert_eq!(
        c.refresh(&mut h, 3600).lifetime(),
        Some(100),
        "a refresh with the same credential cannot pass it either"
    );
    h.advance(Duration::from_secs(99));
    assert!(channel_relayed(&mut h, &c, b"before"));
    assert_eq!(h.peer_sends(relay, p, b"before").len(), 1);

    // No request in between: the data path alone must stop at the expiry, both ways.
    h.now = Millis::from_secs(T0 + 100);
    assert!(!channel_relayed(&mut h, &c, b"after"));
    assert!(h.peer_sends(relay, p, b"after").is_empty());
    assert!(c.send(&mut h, p, b"after").is_empty());
    // And the timer releases the relayed port.
    h.advance(Duration::from_secs(2));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.ports.released, vec![relay]);
}

#[test]
fn a_refresh_with_a_newer_credential_of_the_same_user_extends_the_allocation() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice.t1", T0 + 100);
    let relay = relay_of(&c.allocate(&mut h));
    let p = peer("192.0.2.10:5000");
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    h.advance(Duration::from_secs(50));

    // Another user's fresh credential on the same 5-tuple is refused (RFC 8656 §5: 441).
    let mut other = Client::rest(udp(1), "bob.t1", T0 + 5000);
    assert_eq!(other.refresh(&mut h, 600).code(), Some(441));

    let fresh = Client::rest(udp(1), "alice.t1", T0 + 500);
    c.username = fresh.username;
    c.password = fresh.password;
    assert_eq!(
        c.refresh(&mut h, 600).lifetime(),
        Some(450),
        "extended, and capped by the fresh credential's expiry"
    );
    h.advance(Duration::from_secs(100));
    assert!(
        channel_relayed(&mut h, &c, b"past the first credential"),
        "the allocation moved onto the fresh credential"
    );
    assert_eq!(h.peer_sends(relay, p, b"back").len(), 1);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn a_revoked_credential_stops_relaying_at_once() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let p = peer("192.0.2.10:5000");
    assert_eq!(c.bind(&mut h, 0x4000, p).class(), Class::Success);
    assert!(channel_relayed(&mut h, &c, b"x"));
    h.server.set_credentials(Credentials {
        secrets: vec!["rotated".into()],
        ..Default::default()
    });
    assert!(!channel_relayed(&mut h, &c, b"x"));
    assert!(c.send(&mut h, p, b"x").is_empty());
    assert!(h.peer_sends(relay, p, b"x").is_empty());
    // Putting the secret back (an operator's mistake undone) lets the allocation live on.
    h.server.set_credentials(Credentials {
        secrets: vec![SECRET.into()],
        ..Default::default()
    });
    assert!(channel_relayed(&mut h, &c, b"x"));
}

#[test]
fn a_permission_admits_only_its_own_peer_ip_in_both_directions() {
    let mut h = Harness::new();
    let mut c = Client::rest(udp(1), "alice", later());
    let relay = relay_of(&c.allocate(&mut h));
    let (permitted, other) = (peer("192.0.2.10:5000"), peer("192.0.2.11:5000"));
    assert_eq!(c.permit(&mut h, permitted).class(), Class::Success);

    assert!(
        c.send(&mut h, other, b"to other").is_empty(),
        "client -> unpermitted peer"
    );
    assert!(
        h.peer_sends(relay, other, b"from other").is_empty(),
        "unpermitted peer -> client"
    );
    // A channel to the unpermitted peer cannot be bound behind the permission's back either:
    // binding installs its own permission, so only the bound peer's IP gains one.
    assert_eq!(c.send(&mut h, permitted, b"ok").len(), 1);
    assert_eq!(h.peer_sends(relay, permitted, b"ok").len(), 1);
    assert_eq!(h.server.stats().dropped_no_permission, 2);
}
