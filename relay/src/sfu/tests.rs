//! Unit tests of the forwarding core: real str0m client peers, an in-memory network, injected
//! time. No sockets, no clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests drive the core with known inputs and fail loudly"
)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
use switchboard_proto::sfu_token::Claims;
use switchboard_proto::{PeerId, RoomName};

use super::core::{CONTROL_LABEL, CloseReason, Output, SessionError, SessionId, Sfu, SfuConfig};
use super::envelope::ENVELOPE_PROTOCOL;

const RELAY: &str = "10.0.0.1:5000";
const STEP: Duration = Duration::from_millis(2);

fn relay_addr() -> SocketAddr {
    RELAY.parse().unwrap()
}

fn sfu(max_sessions: usize, max_queue_bytes: usize) -> Sfu {
    Sfu::new(SfuConfig {
        candidates: vec![relay_addr()],
        tcp_candidates: Vec::new(),
        max_sessions,
        max_queue_bytes,
    })
}

fn claims(room: &str, peer: &str) -> Claims {
    Claims {
        room: RoomName::parse(room).unwrap(),
        peer_id: PeerId::parse(peer).unwrap(),
        exp: u64::MAX,
    }
}

/// What a client peer is made of in these tests.
#[derive(Default, Clone)]
struct Want {
    chat: bool,
    envelope: bool,
    control: bool,
    unreliable: bool,
    video: bool,
    /// Simulcast send layers (RIDs) of the video.
    simulcast: Vec<&'static str>,
}

/// A str0m client peer on its own in-memory address.
struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    /// Channel id by label, once open.
    channels: HashMap<String, ChannelId>,
    video: Option<Mid>,
    received: Vec<(String, bool, Vec<u8>)>,
    media_frames: usize,
    /// Sizes of the media frames received.
    frame_sizes: Vec<usize>,
    keyframe_requests: usize,
    /// The layers keyframes were requested for.
    keyframe_rids: Vec<Option<Rid>>,
    media_from: HashSet<Mid>,
    /// When false, the network drops everything to and from this client.
    online: bool,
    /// The client's own renegotiation offer, while outstanding (glare tests).
    own_offer: Option<SdpPendingOffer>,
    /// Relay offers ignored because `own_offer` was outstanding (the client is impolite).
    ignored_offers: usize,
    /// When false, this client's packets to the relay are dropped (it stopped reading).
    reading: bool,
    /// Its session on the relay and the relay's SDP answer, once joined.
    session: Option<SessionId>,
    answer: String,
}

fn rng(n: u8) -> [u8; 32] {
    let mut r = [0u8; 32];
    for (i, b) in r.iter_mut().enumerate() {
        *b = n.wrapping_mul(31).wrapping_add(i as u8);
    }
    r
}

impl Client {
    fn new(port: u16, want: &Want, now: Instant) -> (Client, SdpOffer, SdpPendingOffer) {
        let mut rtc = Rtc::builder()
            .set_sctp_max_buffered_amount(1024 * 1024)
            .set_sctp_max_message_size(512 * 1024)
            .build(now);
        let addr: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        if want.chat {
            let mut c = ChannelConfig {
                label: "chat".into(),
                ..ChannelConfig::default()
            };
            if want.unreliable {
                c.ordered = false;
                c.reliability = Reliability::MaxRetransmits { retransmits: 0 };
            }
            change.add_channel_with_config(c);
        }
        if want.envelope {
            change.add_channel_with_config(ChannelConfig {
                label: "data".into(),
                protocol: ENVELOPE_PROTOCOL.into(),
                ..ChannelConfig::default()
            });
        }
        if want.control {
            change.add_channel(CONTROL_LABEL.into());
        }
        let simulcast = (!want.simulcast.is_empty()).then(|| {
            let mut s = Simulcast::new();
            for rid in &want.simulcast {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = want.video.then(|| {
            change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast)
        });
        let (offer, pending) = change.apply().unwrap();
        let c = Client {
            rtc,
            addr,
            channels: HashMap::new(),
            video,
            received: Vec::new(),
            media_frames: 0,
            frame_sizes: Vec::new(),
            keyframe_requests: 0,
            keyframe_rids: Vec::new(),
            media_from: HashSet::new(),
            online: true,
            own_offer: None,
            ignored_offers: 0,
            reading: true,
            session: None,
            answer: String::new(),
        };
        (c, offer, pending)
    }

    fn send(&mut self, label: &str, binary: bool, data: &[u8]) -> bool {
        let id = self.channels[label];
        self.rtc.channel(id).unwrap().write(binary, data).unwrap()
    }

    fn messages(&self, label: &str) -> Vec<&[u8]> {
        self.received
            .iter()
            .filter(|(l, _, _)| l == label)
            .map(|(_, _, d)| d.as_slice())
            .collect()
    }
}

/// The relay and its clients on an in-memory network, time advanced in fixed steps.
struct Net {
    sfu: Sfu,
    clients: Vec<Client>,
    now: Instant,
    closed: Vec<CloseReason>,
}

impl Net {
    fn new(sfu: Sfu) -> Net {
        Net {
            sfu,
            clients: Vec::new(),
            now: Instant::now(),
            closed: Vec::new(),
        }
    }

    /// Adds a client of `room` as `peer` and waits until its channels are open.
    fn join(&mut self, room: &str, peer: &str, want: Want) -> usize {
        let port = 6000 + self.clients.len() as u16;
        let (mut c, offer, pending) = Client::new(port, &want, self.now);
        let (id, answer_sdp) = self
            .sfu
            .handle_offer(
                &claims(room, peer),
                &offer.to_sdp_string(),
                rng(port as u8),
                self.now,
            )
            .unwrap();
        c.session = Some(id);
        let answer = SdpAnswer::from_sdp_string(&answer_sdp).unwrap();
        c.answer = answer_sdp;
        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.clients.push(c);
        let i = self.clients.len() - 1;
        let labels = [
            (want.chat, "chat"),
            (want.envelope, "data"),
            (want.control, CONTROL_LABEL),
        ];
        self.run_until(Duration::from_secs(5), |n| {
            labels
                .iter()
                .all(|(w, l)| !w || n.clients[i].channels.contains_key(*l))
        });
        i
    }

    /// One step: every client, then the relay, until no datagram is in flight.
    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        self.sfu.handle_timeout(now);
        for i in 0..self.clients.len() {
            self.clients[i]
                .rtc
                .handle_input(Input::Timeout(now))
                .unwrap();
        }
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.poll_client(i);
            }
            loop {
                match self.sfu.poll_output() {
                    Output::Transmit(t) => {
                        moved = true;
                        let Some(i) = self.clients.iter().position(|c| c.addr == t.destination)
                        else {
                            continue;
                        };
                        let c = &mut self.clients[i];
                        if !c.online || !c.reading {
                            continue;
                        }
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source: t.source,
                                destination: t.destination,
                                contents: (&*t.contents).try_into().unwrap(),
                            },
                        );
                        c.rtc.handle_input(input).unwrap();
                        // str0m wants its outputs drained after every input.
                        self.poll_client(i);
                    }
                    Output::Closed(_, why) => self.closed.push(why),
                    Output::Timeout(_) | Output::Idle => break,
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Drains one client; returns whether it sent anything.
    fn poll_client(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut sent = false;
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output().unwrap() {
                RtcOutput::Timeout(_) => break,
                RtcOutput::Transmit(t) => {
                    if c.online {
                        sent = true;
                        self.sfu.handle_datagram(
                            Protocol::Udp,
                            t.source,
                            t.destination,
                            &t.contents,
                            now,
                        );
                    }
                }
                RtcOutput::Event(e) => self.on_client_event(i, e),
            }
        }
        sent
    }

    fn on_client_event(&mut self, i: usize, e: Event) {
        let c = &mut self.clients[i];
        match e {
            Event::ChannelOpen(id, label) => {
                c.channels.insert(label, id);
            }
            Event::ChannelData(d) => {
                let label = c
                    .channels
                    .iter()
                    .find(|(_, id)| **id == d.id)
                    .map(|(l, _)| l.clone())
                    .unwrap();
                if label == CONTROL_LABEL {
                    // The page's side of server-initiated renegotiation.
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    let sdp = v["sdp"].as_str().unwrap();
                    if v["type"] == "answer" {
                        let pending = c.own_offer.take().expect("an answer to our offer");
                        let answer = SdpAnswer::from_sdp_string(sdp).unwrap();
                        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
                        c.received.push((label, d.binary, d.data));
                        return;
                    }
                    assert_eq!(v["type"], "offer");
                    if c.own_offer.is_some() {
                        c.ignored_offers += 1;
                        c.received.push((label, d.binary, d.data));
                        return;
                    }
                    let offer = SdpOffer::from_sdp_string(v["sdp"].as_str().unwrap()).unwrap();
                    let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                    let reply =
                        serde_json::json!({"type": "answer", "sdp": answer.to_sdp_string()});
                    let id = c.channels[CONTROL_LABEL];
                    assert!(
                        c.rtc
                            .channel(id)
                            .unwrap()
                            .write(false, reply.to_string().as_bytes())
                            .unwrap()
                    );
                }
                c.received.push((label, d.binary, d.data));
            }
            Event::MediaData(d) => {
                c.media_frames += 1;
                c.frame_sizes.push(d.data.len());
                c.media_from.insert(d.mid);
            }
            Event::KeyframeRequest(r) => {
                c.keyframe_requests += 1;
                c.keyframe_rids.push(r.rid);
            }
            _ => {}
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now < end, "condition not reached within {limit:?}");
            self.step();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }
}

fn chat() -> Want {
    Want {
        chat: true,
        ..Want::default()
    }
}

#[test]
fn room_peers_exchange_text_and_binary_in_order() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join("room", "bob", chat());
    for i in 0..20u8 {
        assert!(net.clients[a].send("chat", i % 2 == 1, &[b'm', i]));
    }
    net.run_until(Duration::from_secs(2), |n| {
        n.clients[b].messages("chat").len() == 20
    });
    let got: Vec<(bool, Vec<u8>)> = net.clients[b]
        .received
        .iter()
        .map(|(_, bin, d)| (*bin, d.clone()))
        .collect();
    let want: Vec<(bool, Vec<u8>)> = (0..20u8).map(|i| (i % 2 == 1, vec![b'm', i])).collect();
    assert_eq!(got, want);
    // The sender does not hear itself.
    assert!(net.clients[a].received.is_empty());
    let stats = net.sfu.stats();
    assert_eq!(stats.dc_messages_forwarded, 20);
    assert_eq!(stats.sessions, 2);
}

#[test]
fn a_256_kib_message_arrives_intact() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join("room", "bob", chat());
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert!(net.clients[a].send("chat", true, &big));
    assert!(net.clients[a].send("chat", false, b"after"));
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[b].messages("chat").len() == 2
    });
    let got = net.clients[b].messages("chat");
    assert_eq!(got[0], big.as_slice());
    assert_eq!(got[1], b"after");
}

#[test]
fn rooms_are_isolated() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("one", "alice", chat());
    let b = net.join("two", "bob", chat());
    let c = net.join("one", "carol", chat());
    assert!(net.clients[a].send("chat", false, b"hi one"));
    net.run_until(Duration::from_secs(2), |n| {
        !n.clients[c].received.is_empty()
    });
    net.run_for(Duration::from_millis(200));
    assert!(net.clients[b].received.is_empty());
}

#[test]
fn envelopes_address_one_peer_or_all_and_name_the_sender() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let want = Want {
        envelope: true,
        ..Want::default()
    };
    let a = net.join("room", "alice", want.clone());
    let b = net.join("room", "bob", want.clone());
    let c = net.join("room", "carol", want);
    assert!(net.clients[a].send("data", false, b"bob\nfor bob only"));
    assert!(net.clients[a].send("data", true, b"*\n\x00\x01"));
    assert!(net.clients[a].send("data", false, b"nobody\nlost"));
    assert!(net.clients[a].send("data", false, b"no header"));
    net.run_until(Duration::from_secs(2), |n| {
        n.clients[b].messages("data").len() == 2 && n.clients[c].messages("data").len() == 1
    });
    net.run_for(Duration::from_millis(200));
    assert_eq!(
        net.clients[b].messages("data"),
        vec![&b"alice\nfor bob only"[..], &b"alice\n\x00\x01"[..]]
    );
    assert_eq!(
        net.clients[c].messages("data"),
        vec![&b"alice\n\x00\x01"[..]]
    );
    assert_eq!(net.sfu.stats().dc_messages_dropped, 2);
}

#[test]
fn a_message_without_a_matching_channel_is_dropped_not_misdelivered() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join(
        "room",
        "bob",
        Want {
            envelope: true,
            ..Want::default()
        },
    );
    assert!(net.clients[a].send("chat", false, b"x"));
    net.run_for(Duration::from_millis(300));
    assert!(net.clients[b].received.is_empty());
    assert_eq!(net.sfu.stats().dc_messages_dropped, 1);
}

#[test]
fn video_reaches_a_later_subscriber_through_renegotiation_with_a_keyframe_request() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let publisher = Want {
        control: true,
        video: true,
        ..Want::default()
    };
    let a = net.join("room", "alice", publisher);
    net.run_until(Duration::from_secs(5), |n| n.clients[0].rtc.is_connected());
    let b = net.join(
        "room",
        "bob",
        Want {
            control: true,
            ..Want::default()
        },
    );
    // The relay offers bob a send-only video line over the control channel; bob answers.
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[b]
            .messages(CONTROL_LABEL)
            .iter()
            .any(|m| m.starts_with(br#"{"type":"offer""#))
    });
    // The new receiver triggers a keyframe request to the publisher.
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[a].keyframe_requests > 0
    });
    let mid = net.clients[a].video.unwrap();
    let pt = {
        let w = net.clients[a].rtc.writer(mid).unwrap();
        w.payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt()
    };
    // A VP8 keyframe payload descriptor and header; str0m packetizes, the relay forwards frames.
    let mut frame = vec![0x10, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
    frame.resize(3000, 0x55);
    for n in 0..10u64 {
        let now = net.now;
        let w = net.clients[a].rtc.writer(mid).unwrap();
        w.write(pt, now, MediaTime::from_90khz(n * 3000), frame.clone())
            .unwrap();
        net.run_for(Duration::from_millis(34));
    }
    net.run_until(Duration::from_secs(2), |n| n.clients[b].media_frames >= 5);
    assert!(net.sfu.stats().media_frames_forwarded >= 5);
    // The publisher does not get its own media back.
    assert_eq!(net.clients[a].media_frames, 0);
}

#[test]
fn glare_the_relay_yields_to_a_client_offer_and_offers_its_tracks_again() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let publisher = Want {
        control: true,
        video: true,
        ..Want::default()
    };
    let a = net.join("room", "alice", publisher);
    net.run_until(Duration::from_secs(5), |n| n.clients[0].rtc.is_connected());
    // Bob has an offer of his own (adding audio) outstanding when the relay's offer for alice's
    // video arrives: the offers cross.
    let (mut c, offer, pending) = Client::new(
        6100,
        &Want {
            control: true,
            ..Want::default()
        },
        net.now,
    );
    let (_, answer) = net
        .sfu
        .handle_offer(
            &claims("room", "bob"),
            &offer.to_sdp_string(),
            rng(77),
            net.now,
        )
        .unwrap();
    c.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    // Bob's own offer is outstanding before the relay's arrives.
    let mut change = c.rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (own, own_pending) = change.apply().unwrap();
    c.own_offer = Some(own_pending);
    net.clients.push(c);
    let b = net.clients.len() - 1;
    net.run_until(Duration::from_secs(5), |n| n.clients[b].ignored_offers == 1);
    let msg = serde_json::json!({"type": "offer", "sdp": own.to_sdp_string()}).to_string();
    assert!(net.clients[b].send(CONTROL_LABEL, false, msg.as_bytes()));
    // The relay answers bob's offer; bob ignored the relay's crossing offer; the relay offers
    // alice's video again and bob answers that one.
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[b].own_offer.is_none() && n.clients[b].ignored_offers == 1
    });
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[a].keyframe_requests > 0
    });
    let offers = net.clients[b]
        .messages(CONTROL_LABEL)
        .iter()
        .filter(|m| m.starts_with(br#"{"type":"offer""#))
        .count();
    assert!(offers >= 2, "the relay offered again after yielding");
    assert!(
        net.closed.is_empty(),
        "no session dropped: {:?}",
        net.closed
    );
}

#[test]
fn a_silent_session_is_dropped_and_the_count_returns_to_zero() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join("room", "bob", chat());
    assert_eq!(net.sfu.session_count(), 2);
    net.clients[b].online = false;
    net.run_until(Duration::from_secs(40), |n| n.sfu.session_count() == 1);
    assert_eq!(net.closed, vec![CloseReason::IceDisconnected]);
    // The remaining session keeps working for new peers.
    let c = net.join("room", "carol", chat());
    assert!(net.clients[a].send("chat", false, b"still here"));
    net.run_until(Duration::from_secs(2), |n| {
        !n.clients[c].received.is_empty()
    });
    net.clients[a].online = false;
    net.clients[c].online = false;
    net.run_until(Duration::from_secs(40), |n| n.sfu.session_count() == 0);
    assert!(matches!(net.sfu.poll_output(), Output::Idle));
}

#[test]
fn a_session_that_never_connects_times_out() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let (_c, offer, _pending) = Client::new(7000, &chat(), net.now);
    // No candidate in the offer and no check ever: ICE never rules the session out (with a
    // candidate, its unanswered pair lapses first: `IceDisconnected` after ~15 s).
    let offer: String = offer
        .to_sdp_string()
        .lines()
        .filter(|l| !l.starts_with("a=candidate"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    net.sfu
        .handle_offer(&claims("room", "ghost"), &offer, rng(1), net.now)
        .unwrap();
    net.run_until(Duration::from_secs(31), |n| n.sfu.session_count() == 0);
    assert_eq!(net.closed, vec![CloseReason::ConnectTimeout]);
}

#[test]
fn a_consumer_that_stops_reading_is_dropped_and_the_sender_goes_on() {
    let mut net = Net::new(sfu(10, 2 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join("room", "bob", chat());
    let c = net.join("room", "carol", chat());
    net.clients[b].reading = false;
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    while net.closed.is_empty() && sent < 400 {
        if net.clients[a].send("chat", true, &chunk) {
            sent += 1;
        }
        net.step();
    }
    assert_eq!(net.closed, vec![CloseReason::SlowConsumer]);
    assert_eq!(net.sfu.session_count(), 2);
    assert_eq!(net.sfu.stats().slow_consumers, 1);
    let before = net.clients[c].messages("chat").len();
    assert!(net.clients[a].send("chat", false, b"after"));
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[c].messages("chat").last() == Some(&&b"after"[..])
    });
    assert!(net.clients[c].messages("chat").len() > before);
}

#[test]
fn an_unreliable_channel_drops_instead_of_queueing() {
    let mut net = Net::new(sfu(10, 1 << 20));
    let want = Want {
        chat: true,
        unreliable: true,
        ..Want::default()
    };
    let a = net.join("room", "alice", want.clone());
    let b = net.join("room", "bob", want);
    net.clients[b].reading = false;
    let chunk = vec![1u8; 60 * 1024];
    for _ in 0..100 {
        let _ = net.clients[a].send("chat", true, &chunk);
        net.step();
    }
    // Far more than the 1 MiB queue bound was sent, yet bob is not cut off: nothing queued.
    assert!(net.closed.is_empty());
    assert!(net.sfu.stats().dc_messages_dropped > 0);
}

#[test]
fn a_peer_that_joins_again_replaces_its_old_session() {
    let mut net = Net::new(sfu(10, 8 << 20));
    net.join("room", "alice", chat());
    net.join("room", "alice", chat());
    assert_eq!(net.sfu.session_count(), 1);
    assert_eq!(net.closed, vec![CloseReason::Replaced]);
}

#[test]
fn bad_offers_and_capacity_are_refused() {
    let mut net = Net::new(sfu(1, 8 << 20));
    let now = net.now;
    let c = claims("room", "p");
    assert!(matches!(
        net.sfu.handle_offer(&c, "garbage", rng(1), now),
        Err(SessionError::BadOffer(_))
    ));
    let (_cl, offer, _p) = Client::new(7001, &chat(), now);
    let no_media: String = offer.to_sdp_string().split("m=").next().unwrap().to_owned();
    assert!(net.sfu.handle_offer(&c, &no_media, rng(2), now).is_err());
    net.join("room", "alice", chat());
    let (_cl, offer, _p) = Client::new(7002, &chat(), now);
    assert_eq!(
        net.sfu
            .handle_offer(&claims("room", "bob"), &offer.to_sdp_string(), rng(3), now)
            .unwrap_err(),
        SessionError::AtCapacity
    );
    assert_eq!(net.sfu.session_count(), 1);
}

#[test]
fn delete_ends_a_session_and_unknown_ids_are_not_found() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let (_c, offer, _p) = Client::new(7003, &chat(), net.now);
    let (id, _) = net
        .sfu
        .handle_offer(
            &claims("room", "p"),
            &offer.to_sdp_string(),
            rng(9),
            net.now,
        )
        .unwrap();
    assert_eq!(net.sfu.handle_delete(id, net.now), Ok(()));
    assert_eq!(
        net.sfu.handle_delete(id, net.now),
        Err(SessionError::NotFound)
    );
    assert_eq!(net.sfu.session_count(), 0);
}

#[test]
fn unroutable_datagrams_are_counted_and_ignored() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let now = net.now;
    net.sfu.handle_datagram(
        Protocol::Udp,
        "10.9.9.9:1".parse().unwrap(),
        relay_addr(),
        &[0x16; 50],
        now,
    );
    net.sfu.handle_datagram(
        Protocol::Udp,
        "10.9.9.9:1".parse().unwrap(),
        relay_addr(),
        &[],
        now,
    );
    assert_eq!(net.sfu.stats().unroutable_datagrams, 2);
}

/// The value of `a=<name>:` in an SDP or fragment.
fn sdp_attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    let prefix = format!("a={name}:");
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap()
        .trim()
}

#[test]
fn an_ice_restart_over_patch_moves_a_session_to_a_new_address_without_losing_a_message() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let b = net.join("room", "bob", chat());
    for n in 0..5u8 {
        assert!(net.clients[a].send("chat", false, &[b'0' + n]));
    }
    net.run_until(Duration::from_secs(2), |n| {
        n.clients[b].messages("chat").len() == 5
    });

    // Bob's network changes: his old address is gone, and alice keeps sending meanwhile.
    net.clients[b].online = false;
    for n in 5..10u8 {
        assert!(net.clients[a].send("chat", false, &[b'0' + n]));
    }
    net.run_for(Duration::from_secs(1));
    let old = net.clients[b].addr;
    let new: SocketAddr = "10.0.0.3:7777".parse().unwrap();
    let c = &mut net.clients[b];
    c.addr = new;
    c.online = true;
    let mut change = c.rtc.sdp_api();
    change.ice_restart(false);
    let (offer, pending) = change.apply().unwrap();
    let offer = offer.to_sdp_string();
    let (ufrag, pwd) = (sdp_attr(&offer, "ice-ufrag"), sdp_attr(&offer, "ice-pwd"));
    let id = c.session.unwrap();
    let fragment = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    let now = net.now;
    let reply = net
        .sfu
        .handle_patch(id, &fragment, [9; 16], now)
        .unwrap()
        .expect("an ICE restart is answered with the relay's new credentials");
    let old_answer = net.clients[b].answer.clone();
    let (relay_ufrag, relay_pwd) = (sdp_attr(&reply, "ice-ufrag"), sdp_attr(&reply, "ice-pwd"));
    assert_ne!(relay_ufrag, sdp_attr(&old_answer, "ice-ufrag"));
    // The client makes the answer the WHIP way: its last remote description with the new
    // credentials.
    let answer = old_answer
        .replace(sdp_attr(&old_answer, "ice-ufrag"), relay_ufrag)
        .replace(sdp_attr(&old_answer, "ice-pwd"), relay_pwd);
    let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
    net.clients[b]
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .unwrap();
    // The restart dropped the client's old candidates; it gathers on its new network.
    net.clients[b]
        .rtc
        .add_local_candidate(Candidate::host(new, "udp").unwrap());
    // The same fragment again is no new restart (a retried PATCH).
    assert_eq!(net.sfu.handle_patch(id, &fragment, [8; 16], now), Ok(None));

    for n in 10..15u8 {
        assert!(net.clients[a].send("chat", false, &[b'0' + n]));
    }
    assert!(net.clients[b].send("chat", false, b"bob is back"));
    // Well within the old path's 15 s consent lifetime: the relay sends on the new path at once.
    net.run_until(Duration::from_secs(3), |n| {
        n.clients[b].messages("chat").len() == 15 && !n.clients[a].messages("chat").is_empty()
    });
    let got: Vec<u8> = net.clients[b]
        .messages("chat")
        .iter()
        .map(|m| m[0])
        .collect();
    assert_eq!(got, (0..15u8).map(|n| b'0' + n).collect::<Vec<_>>());
    assert_eq!(net.clients[a].messages("chat"), vec![&b"bob is back"[..]]);
    assert_eq!(net.sfu.stats().ice_restarts, 1);
    // Past the old path's consent lifetime the session lives on at the new address.
    net.run_for(Duration::from_secs(20));
    assert!(net.closed.is_empty(), "{:?}", net.closed);
    assert!(net.clients[a].send("chat", false, b"later"));
    net.run_until(Duration::from_secs(2), |n| {
        n.clients[b].messages("chat").len() == 16
    });
    assert_ne!(old, new);
}

#[test]
fn patch_fragments_that_cannot_restart_are_refused() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join("room", "alice", chat());
    let id = net.clients[a].session.unwrap();
    let now = net.now;
    let bad =
        |e: Result<Option<String>, SessionError>| matches!(e, Err(SessionError::BadFragment(_)));
    assert!(bad(net.sfu.handle_patch(
        id,
        "a=ice-ufrag:abcd\r\n",
        [1; 16],
        now
    )));
    assert!(bad(net.sfu.handle_patch(
        id,
        "a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n",
        [1; 16],
        now
    )));
    assert!(bad(net.sfu.handle_patch(
        id,
        "a=candidate:garbage\r\n",
        [1; 16],
        now
    )));
    assert_eq!(
        net.sfu.handle_patch(SessionId(7), "", [1; 16], now),
        Err(SessionError::NotFound)
    );
    // Trickle alone is still a 204-style answer.
    let frag = "a=candidate:1 1 udp 2130706431 10.0.0.9 9 typ host\r\n";
    assert_eq!(net.sfu.handle_patch(id, frag, [1; 16], now), Ok(None));
    assert_eq!(net.sfu.stats().ice_restarts, 0);
    // The session was not disturbed.
    net.run_for(Duration::from_secs(1));
    assert!(net.closed.is_empty());
}

#[test]
fn a_simulcast_subscriber_gets_one_layer_and_moves_up_at_a_keyframe_when_its_estimate_allows() {
    let mut net = Net::new(sfu(10, 8 << 20));
    let a = net.join(
        "room",
        "alice",
        Want {
            control: true,
            video: true,
            simulcast: vec!["l", "h"],
            ..Want::default()
        },
    );
    net.run_until(Duration::from_secs(5), |n| n.clients[a].rtc.is_connected());
    let b = net.join(
        "room",
        "bob",
        Want {
            control: true,
            ..Want::default()
        },
    );
    // The relay offers bob alice's video over the control channel; bob answers.
    net.run_until(Duration::from_secs(5), |n| {
        n.clients[b]
            .messages(CONTROL_LABEL)
            .iter()
            .any(|m| m.starts_with(br#"{"type":"offer""#))
    });
    net.run_for(Duration::from_millis(200));
    let mid = net.clients[a].video.unwrap();
    let pt = {
        let w = net.clients[a].rtc.writer(mid).unwrap();
        w.payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt()
    };
    // VP8 frames: a keyframe starts 0x10 (P bit clear) and the start code, a delta frame 0x11.
    let frame = |key: bool, len: usize| {
        let mut f = if key {
            vec![0x10, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
        } else {
            vec![0x11, 0x00, 0x00]
        };
        f.resize(len, 0x55);
        f
    };
    // `l` ~96 kbit/s with a keyframe a second; `h` ~720 kbit/s with keyframes only on request.
    let (low, high) = (Rid::from("l"), Rid::from("h"));
    let mut seen_requests = 0;
    let mut h_key_due = true;
    let mut frames_written = 0usize;
    let mut after_switch = None;
    for n in 0..300u64 {
        let requests = &net.clients[a].keyframe_rids;
        if requests[seen_requests..].contains(&Some(high)) {
            h_key_due = true;
        }
        seen_requests = requests.len();
        let now = net.now;
        let t = MediaTime::from_90khz(n * 3000);
        let w = net.clients[a].rtc.writer(mid).unwrap().rid(low);
        w.write(pt, now, t, frame(n % 30 == 0, 400)).unwrap();
        let w = net.clients[a].rtc.writer(mid).unwrap().rid(high);
        w.write(pt, now, t, frame(h_key_due, 3000)).unwrap();
        h_key_due = false;
        frames_written += 1;
        net.run_for(Duration::from_millis(33));
        if after_switch.is_none() && net.clients[b].frame_sizes.last() == Some(&3000) {
            after_switch = Some(net.clients[b].frame_sizes.len() - 1);
        }
    }
    let sizes = &net.clients[b].frame_sizes;
    // One layer at a time: about one frame per written pair (both only in the tick of the
    // switch: the old layer's frame, then the new layer's keyframe).
    assert!(
        sizes.len() <= frames_written + 1 && sizes.len() + 20 >= frames_written,
        "{} frames received for {frames_written} written per layer",
        sizes.len()
    );
    // It starts on the low layer and, once `h` is measured and fits the estimate with
    // headroom for the hold time, goes up: after a keyframe request for `h`, from that keyframe on.
    assert_eq!(sizes.first(), Some(&400));
    let switch = after_switch.expect("bob moved up to the high layer");
    assert!(
        net.clients[a].keyframe_rids.contains(&Some(high)),
        "a PLI for the new layer: {:?}",
        net.clients[a].keyframe_rids
    );
    assert!(
        sizes[switch..].iter().all(|s| *s == 3000),
        "no going back on a steady estimate"
    );
    assert!(sizes[..switch].iter().all(|s| *s == 400));
    // The hold: not before ~1 s of measurement plus 4 s of headroom.
    assert!(switch >= 4 * 30, "switched after {switch} frames");
}
