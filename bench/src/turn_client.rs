//! A minimal blocking TURN client over UDP, built on the relay's STUN codec.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use switchboard_proto::ice::turn_password;
use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::channel_data::{ChannelData, ChannelNumber};
use switchboard_relay::stun::integrity::{IntegrityKey, IntegrityKind};
use switchboard_relay::stun::message::{
    Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};

const CHANNEL: ChannelNumber = ChannelNumber(0x4000);
/// RFC 8656 §18.8: protocol 17 (UDP) in the first byte.
const UDP_TRANSPORT: [u8; 4] = [17, 0, 0, 0];

/// One allocation with a channel bound to a private echo peer.
pub struct TurnClient {
    sock: UdpSocket,
    server: SocketAddr,
    /// Held for the client's lifetime: the far end of the channel.
    echo: EchoPeer,
}

struct Credentials {
    username: String,
    realm: String,
    nonce: Vec<u8>,
    key: IntegrityKey,
}

impl TurnClient {
    /// Allocates, permits and channel-binds the echo peer.
    pub fn connect(server: SocketAddr, secret: &str, user: &str) -> Result<TurnClient, String> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let echo = EchoPeer::start()?;
        let creds = credentials(&sock, server, secret, user)?;
        let client = TurnClient { sock, server, echo };

        client.request(&creds, Method::ALLOCATE, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &UDP_TRANSPORT);
        })?;
        let peer = client.echo.addr;
        client.request(&creds, Method::CREATE_PERMISSION, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })?;
        client.request(&creds, Method::CHANNEL_BIND, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })?;
        client
            .sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        Ok(client)
    }

    fn request(
        &self,
        c: &Credentials,
        method: Method,
        add: impl Fn(&mut MessageBuilder),
    ) -> Result<(), String> {
        request(&self.sock, self.server, c, method, add)
    }

    /// Sends `packets` ChannelData messages keeping `window` in flight; returns (received, lost).
    pub fn run_window(
        &self,
        payload: usize,
        packets: u64,
        window: u64,
        limit: Duration,
    ) -> Result<(u64, u64), String> {
        let started = Instant::now();
        let mut data = vec![0u8; payload];
        let mut buf = vec![0u8; 2048];
        let (mut sent, mut received, mut timeouts) = (0u64, 0u64, 0u64);
        while received + timeouts < packets && started.elapsed() < limit {
            while sent < packets && sent - received - timeouts < window {
                data[..8].copy_from_slice(&sent.to_be_bytes());
                let frame = ChannelData::encode(CHANNEL, &data, false);
                self.sock
                    .send_to(&frame, self.server)
                    .map_err(|e| e.to_string())?;
                sent += 1;
            }
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    if ChannelData::decode(&buf[..n]).is_ok_and(|cd| cd.channel == CHANNEL) {
                        received += 1;
                    }
                }
                // A lost datagram frees its window slot after the read timeout.
                Err(_) => timeouts += sent - received - timeouts,
            }
        }
        Ok((received, sent - received))
    }

    /// One packet in flight at a time; returns each round-trip time.
    pub fn run_ping_pong(
        &self,
        payload: usize,
        packets: u64,
        limit: Duration,
    ) -> Result<Vec<Duration>, String> {
        let started = Instant::now();
        let mut data = vec![0u8; payload];
        let mut buf = vec![0u8; 2048];
        let mut rtts = Vec::with_capacity(usize::try_from(packets).unwrap_or(0));
        for i in 0..packets {
            if started.elapsed() > limit {
                break;
            }
            data[..8].copy_from_slice(&(u64::MAX - i).to_be_bytes());
            let frame = ChannelData::encode(CHANNEL, &data, false);
            let t = Instant::now();
            self.sock
                .send_to(&frame, self.server)
                .map_err(|e| e.to_string())?;
            // Skip stragglers from the throughput phase until this packet comes back.
            // A read timeout counts the packet as lost (no RTT recorded).
            while let Ok(n) = self.sock.recv(&mut buf) {
                let back = ChannelData::decode(&buf[..n])
                    .ok()
                    .and_then(|cd| cd.data.get(..8).map(<[u8]>::to_vec));
                if back.as_deref() == Some(&data[..8]) {
                    rtts.push(t.elapsed());
                    break;
                }
            }
        }
        Ok(rtts)
    }
}

/// One authenticated Allocate from a fresh socket on `source`, which is then closed.
pub fn allocate_only(
    server: SocketAddr,
    source: std::net::Ipv4Addr,
    secret: &str,
    user: &str,
) -> Result<(), String> {
    let sock = UdpSocket::bind((source, 0)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let creds = credentials(&sock, server, secret, user)?;
    request(&sock, server, &creds, Method::ALLOCATE, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &UDP_TRANSPORT);
    })
}

/// A UDP socket on loopback that sends every datagram back to its sender.
struct EchoPeer {
    addr: SocketAddr,
}

impl EchoPeer {
    fn start() -> Result<EchoPeer, String> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = sock.local_addr().map_err(|e| e.to_string())?;
        // The thread ends with the process; the benchmark is one short run.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        Ok(EchoPeer { addr })
    }
}

/// TURN REST credentials for `user`, completed with the REALM and NONCE of a first, unauthenticated Allocate.
fn credentials(
    sock: &UdpSocket,
    server: SocketAddr,
    secret: &str,
    user: &str,
) -> Result<Credentials, String> {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 3600;
    let username = format!("{expiry}:{user}");
    let password = turn_password(secret, &username);
    let tid = new_tid();
    let mut b = MessageBuilder::new(MessageType::new(Method::ALLOCATE, Class::Request), tid);
    b.attr(attr::REQUESTED_TRANSPORT, &UDP_TRANSPORT);
    let resp = transact(sock, server, &b.finish(), tid)?;
    let msg = Message::decode(&resp).map_err(|e| e.to_string())?;
    let realm = msg.get(attr::REALM).ok_or("401 without REALM")?;
    let nonce = msg.get(attr::NONCE).ok_or("401 without NONCE")?.to_vec();
    let realm = String::from_utf8_lossy(realm).into_owned();
    let key = IntegrityKey::long_term(&username, &realm, &password);
    Ok(Credentials {
        username,
        realm,
        nonce,
        key,
    })
}

/// One authenticated request; `Ok` on a success response.
fn request(
    sock: &UdpSocket,
    server: SocketAddr,
    c: &Credentials,
    method: Method,
    add: impl Fn(&mut MessageBuilder),
) -> Result<(), String> {
    let tid = new_tid();
    let mut b = MessageBuilder::new(MessageType::new(method, Class::Request), tid);
    add(&mut b);
    b.attr(attr::USERNAME, c.username.as_bytes());
    b.attr(attr::REALM, c.realm.as_bytes());
    b.attr(attr::NONCE, &c.nonce);
    b.integrity(IntegrityKind::Sha1, &c.key);
    let resp = transact(sock, server, &b.finish(), tid)?;
    let msg = Message::decode(&resp).map_err(|e| e.to_string())?;
    match msg.typ.class {
        Class::Success => Ok(()),
        _ => {
            let code = msg
                .get(attr::ERROR_CODE)
                .and_then(|v| attr::decode_error_code(v).ok());
            Err(format!("{method:?} refused: {code:?}"))
        }
    }
}

fn new_tid() -> TransactionId {
    let mut id = [0u8; 12];
    let _ = getrandom::fill(&mut id);
    TransactionId(id)
}

fn transact(
    sock: &UdpSocket,
    server: SocketAddr,
    req: &[u8],
    tid: TransactionId,
) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 2048];
    for _attempt in 0..5 {
        sock.send_to(req, server).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else { break };
            if let Ok(msg) = Message::decode(&buf[..n])
                && msg.transaction_id == tid
            {
                return Ok(buf[..n].to_vec());
            }
        }
    }
    Err(format!("no answer from {server}"))
}
