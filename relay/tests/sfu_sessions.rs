//! The SFU session endpoint against the real relay binary: two str0m clients over real UDP
//! sockets open sessions with `POST /v1/sessions` and talk through the relay while bad requests
//! (garbage SDP, no m-lines, expired token, another room's token, oversized body, wrong content
//! type, capacity) each get a clear HTTP error and the live session keeps working. DELETE and
//! CORS preflight answer as documented, and the session gauge returns to zero.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test: failures should be loud"
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard_proto::sfu_token::{self, Claims};
use switchboard_proto::{PeerId, RoomName};

fn token(room: &str, peer: &str, exp: u64) -> String {
    sfu_token::sign(
        common::SECRET.as_bytes(),
        &Claims {
            room: RoomName::parse(room).unwrap(),
            peer_id: PeerId::parse(peer).unwrap(),
            exp,
        },
    )
}

/// One HTTP/1.1 request; returns (status code, headers text, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The relay may answer (413) before reading the whole body and close; that is fine.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// A str0m client peer on a real loopback UDP socket.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    chat: Option<ChannelId>,
    received: Vec<Vec<u8>>,
    session: String,
}

impl Peer {
    fn offer() -> (Rtc, UdpSocket, SocketAddr, SdpOffer, SdpPendingOffer) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::new(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        change.add_channel("chat".into());
        let (offer, pending) = change.apply().unwrap();
        (rtc, socket, addr, offer, pending)
    }

    fn join(http_addr: SocketAddr, room: &str, peer: &str) -> Peer {
        let (mut rtc, socket, addr, offer, pending) = Self::offer();
        let t = token(room, peer, common::unix_now() + 600);
        let auth = format!("Bearer {t}");
        let (code, head, body) = http(
            http_addr,
            "POST",
            "/v1/sessions",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/sdp"),
            ],
            offer.to_sdp_string().as_bytes(),
        );
        assert_eq!(code, 201, "{head}\n{body}");
        assert!(head.contains("Content-Type: application/sdp"), "{head}");
        let session = head
            .lines()
            .find_map(|l| l.strip_prefix("Location: "))
            .unwrap()
            .to_owned();
        let answer = SdpAnswer::from_sdp_string(&body).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let mut p = Peer {
            rtc,
            socket,
            addr,
            chat: None,
            received: Vec::new(),
            session,
        };
        p.pump_until(|p| p.chat.is_some());
        p
    }

    fn pump(&mut self) {
        let now = Instant::now();
        self.rtc.handle_input(Input::Timeout(now)).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            while let Ok((n, source)) = self.socket.recv_from(&mut buf) {
                let input = Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.addr,
                        contents: (&buf[..n]).try_into().unwrap(),
                    },
                );
                self.rtc.handle_input(input).unwrap();
                self.drain();
            }
            if !self.drain() {
                break;
            }
        }
    }

    /// Polls until timeout; returns whether anything happened.
    fn drain(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(_) => return any,
                Output::Transmit(t) => {
                    any = true;
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(Event::ChannelOpen(id, label)) if label == "chat" => {
                    self.chat = Some(id);
                }
                Output::Event(Event::ChannelData(d)) => self.received.push(d.data),
                Output::Event(_) => {}
            }
        }
    }

    fn pump_until(&mut self, mut done: impl FnMut(&Peer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting");
            self.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn send(&mut self, data: &[u8]) {
        let id = self.chat.unwrap();
        assert!(self.rtc.channel(id).unwrap().write(true, data).unwrap());
        self.pump();
    }
}

/// a sends, b receives; both keep pumping so acks flow.
fn exchange(a: &mut Peer, b: &mut Peer, msg: &[u8]) {
    a.send(msg);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.received.iter().any(|m| m == msg) {
        assert!(Instant::now() < deadline, "message never arrived");
        a.pump();
        b.pump();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn gauge(metrics: SocketAddr) -> Option<u64> {
    let (_, body) = common::http_get(metrics, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("switchboard_relay_sfu_sessions "))
        .and_then(|v| v.parse().ok())
}

#[test]
fn sessions_forward_while_bad_requests_get_clear_errors() {
    let sfu_port = common::free_port();
    let metrics_port = common::free_port();
    let sfu = format!("127.0.0.1:{sfu_port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let relay = common::Relay::start_with(&[
        "--secret",
        common::SECRET,
        "--metrics-listen",
        &metrics,
        "--sfu-listen",
        &sfu,
        "--sfu-max-sessions",
        "2",
    ]);
    let api = relay.metrics.unwrap();

    let mut a = Peer::join(api, "room", "alice");
    let mut b = Peer::join(api, "room", "bob");
    exchange(&mut a, &mut b, b"hello through the relay");

    let good = format!(
        "Bearer {}",
        token("room", "carol", common::unix_now() + 600)
    );
    let sdp = ("Content-Type", "application/sdp");
    let post = |auth: &str, path: &str, body: &[u8], ctype: (&str, &str)| {
        http(api, "POST", path, &[("Authorization", auth), ctype], body)
    };
    let (_, _, _, offer, _) = Peer::offer();
    let offer = offer.to_sdp_string();

    // At capacity (2 sessions): 503 with Retry-After.
    let (code, head, _) = post(&good, "/v1/sessions", offer.as_bytes(), sdp);
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("Retry-After: "), "{head}");

    let (code, _, body) = post(&good, "/v1/sessions", b"this is not SDP", sdp);
    assert_eq!(code, 400);
    assert!(body.contains("bad_sdp"), "{body}");

    let header_only = offer.split("m=").next().unwrap();
    let (code, _, body) = post(&good, "/v1/sessions", header_only.as_bytes(), sdp);
    assert_eq!(code, 400, "{body}");

    let expired = format!("Bearer {}", token("room", "carol", common::unix_now() - 1));
    let (code, head, body) = post(&expired, "/v1/sessions", offer.as_bytes(), sdp);
    assert_eq!(code, 401);
    assert!(body.contains("token_expired"), "{body}");
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");

    let (code, _, body) = post(&good, "/v1/sessions?room=other", offer.as_bytes(), sdp);
    assert_eq!(code, 401);
    assert!(body.contains("wrong_room"), "{body}");

    let forged = format!(
        "Bearer {}",
        sfu_token::sign(
            b"not the secret",
            &Claims {
                room: RoomName::parse("room").unwrap(),
                peer_id: PeerId::parse("mallory").unwrap(),
                exp: common::unix_now() + 600,
            }
        )
    );
    let (code, _, body) = post(&forged, "/v1/sessions", offer.as_bytes(), sdp);
    assert_eq!(code, 401);
    assert!(body.contains("bad_signature"), "{body}");

    let (code, _, body) = http(api, "POST", "/v1/sessions", &[sdp], offer.as_bytes());
    assert_eq!(code, 401);
    assert!(body.contains("missing_token"), "{body}");

    let huge = vec![b'v'; 70 * 1024];
    let (code, _, body) = post(&good, "/v1/sessions", &huge, sdp);
    assert_eq!(code, 413, "{body}");

    let (code, _, _) = post(
        &good,
        "/v1/sessions",
        offer.as_bytes(),
        ("Content-Type", "text/plain"),
    );
    assert_eq!(code, 415);

    let (code, _, _) = http(
        api,
        "DELETE",
        "/v1/sessions/00000000000000000000000000000000",
        &[],
        b"",
    );
    assert_eq!(code, 404);

    // CORS preflight from a page on another origin.
    let (code, head, _) = http(
        api,
        "OPTIONS",
        "/v1/sessions",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(code, 204);
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
    assert!(
        head.contains("Access-Control-Allow-Headers: Authorization, Content-Type"),
        "{head}"
    );

    // The live sessions were never disturbed.
    exchange(&mut b, &mut a, b"still forwarding");

    // Trickle and DELETE on a real session.
    let frag = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let (code, _, body) = http(
        api,
        "PATCH",
        &a.session,
        &[("Content-Type", "application/trickle-ice-sdpfrag")],
        frag.as_bytes(),
    );
    assert_eq!(code, 204, "{body}");
    // An ICE restart (RFC 9725 §4.3.2): new credentials in, the relay's new ones out.
    let sdpfrag = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let (code, _, body) = http(
        api,
        "PATCH",
        &a.session,
        &sdpfrag,
        b"a=ice-ufrag:Nw1x\r\na=ice-pwd:0123456789abcdefghijk\r\n",
    );
    assert_eq!(
        code, 400,
        "an ICE restart needs a password of 22+ characters: {body}"
    );
    assert!(body.contains("bad_fragment"), "{body}");
    let (code, head, body) = http(
        api,
        "PATCH",
        &a.session,
        &sdpfrag,
        b"a=ice-ufrag:Nw1x\r\na=ice-pwd:0123456789abcdefghijklmn\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        head.contains("Content-Type: application/trickle-ice-sdpfrag"),
        "{head}"
    );
    assert!(
        body.contains("a=ice-ufrag:") && body.contains("a=ice-pwd:"),
        "{body}"
    );
    let (code, _, _) = http(api, "DELETE", &a.session, &[], b"");
    assert_eq!(code, 200);
    let (code, _, _) = http(api, "DELETE", &b.session.clone(), &[], b"");
    assert_eq!(code, 200);

    // The gauge is published at once on commands and every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(api) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "sessions gauge never returned to 0"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = common::http_get(api, "/metrics");
    assert!(
        body.contains("switchboard_relay_sfu_datachannel_messages_forwarded_total 2"),
        "{body}"
    );
    assert!(body.contains("switchboard_relay_sfu_forward_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(!body.contains(common::SECRET));
}

/// `curl` over HTTPS against the relay's certificate; returns (status, body).
fn curl_https(cert: &std::path::Path, url: &str, args: &[&str]) -> (u16, String) {
    let curl = common::require_tool("curl");
    let out = common::run_with_timeout(
        std::process::Command::new(curl)
            .args(["-sS", "--cacert"])
            .arg(cert)
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .arg(url),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn the_session_endpoint_speaks_https_with_the_turns_certificate() {
    let openssl = common::require_tool("openssl");
    let dir = std::env::temp_dir().join(format!("relay-sfu-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = common::run_with_timeout(
        std::process::Command::new(openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args([
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (sfu_port, https_port) = (common::free_port(), common::free_port());
    let sfu = format!("127.0.0.1:{sfu_port}");
    let https = format!("127.0.0.1:{https_port}");
    let _relay = common::Relay::start_with(&[
        "--secret",
        common::SECRET,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--sfu-listen",
        &sfu,
        "--sfu-https-listen",
        &https,
    ]);
    let url = format!("https://127.0.0.1:{https_port}/v1/sessions");
    let (_, _, _, offer, _) = Peer::offer();
    let offer_file = dir.join("offer.sdp");
    std::fs::write(&offer_file, offer.to_sdp_string()).unwrap();
    let auth = format!(
        "Authorization: Bearer {}",
        token("room", "tls", common::unix_now() + 600)
    );
    let data = format!("@{}", offer_file.display());
    let (code, body) = curl_https(
        &cert,
        &url,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/sdp",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(code, 201, "{body}");
    assert!(SdpAnswer::from_sdp_string(&body).is_ok(), "{body}");
    let (code, body) = curl_https(
        &cert,
        &url,
        &[
            "-H",
            "Content-Type: application/sdp",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(code, 401, "{body}");
    let _ = std::fs::remove_dir_all(dir);
}
