//! Hostile input never panics the room and never breaks it for others.
//!
//! A seeded generator produces garbage, truncations and mutations of valid
//! frames; after each one a well-formed signal must still get through.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests fail loudly on purpose

use switchboard_proto::ice::IceConfig;
use switchboard_proto::limits::Limits;
use switchboard_proto::room::{Join, Output, Room, RoomConfig};
use switchboard_proto::wire::parse_client_frame;
use switchboard_proto::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName, TraceId};

/// xorshift64*: deterministic, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: [&str; 11] = [
    r#"{"type":"signal","to":"PEER","payload":1,"cseq":1}"#,
    r#"{"type":"broadcast","payload":1,"cseq":2}"#,
    r#"{"type":"relay","to":"nobody","data":1,"cseq":18446744073709551615}"#,
    r#"{"type":"signal","to":"PEER","payload":{"sdp":"v=0"}}"#,
    r#"{"type":"broadcast","payload":[1,2,{"a":null}]}"#,
    r#"{"type":"relay","to":"PEER","data":"aGVsbG8="}"#,
    r#"{"type":"ack","seq":3}"#,
    r#"{"type":"ping"}"#,
    r#"{"type":"signal","to":"PEER","payload":"\ud83d\ude00 \u0000"}"#,
    r#"{"type":"ack","seq":18446744073709551615}"#,
    r#"{"type":"signal","to":"","payload":1e999}"#,
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    match rng.below(6) {
        0 => bytes.truncate(rng.below(bytes.len() + 1)),
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] = (rng.next() & 0x7f) as u8;
            }
        }
        2 => {
            let i = rng.below(bytes.len());
            let dup = bytes[i..].to_vec();
            bytes.extend_from_slice(&dup);
        }
        3 => {
            bytes = (0..rng.below(64))
                .map(|_| (rng.next() & 0xff) as u8)
                .collect()
        }
        4 => {
            let depth = 1 + rng.below(200);
            bytes = format!(
                r#"{{"type":"broadcast","payload":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes();
        }
        _ => {
            let i = rng.below(bytes.len());
            bytes.insert(i, b"{}[]\",:\\"[rng.below(8)]);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn garbage_never_panics_and_the_room_keeps_routing() {
    let cfg = RoomConfig {
        name: RoomName::parse("fuzz").unwrap(),
        limits: Limits {
            rate_burst: u32::MAX,
            rate_per_s: u32::MAX,
            ..Limits::default()
        },
        ice: IceConfig::default(),
        sfu: None,
    };
    let mut room = Room::new(cfg);
    let now = Millis(1_700_000_000_000);
    let join = |room: &mut Room, conn: u64, id: u8| {
        room.handle_join(
            Join {
                conn: ConnId(conn),
                meta: Meta::empty(),
                resume: None,
                fresh_peer: PeerId::from_random([id; 8]),
                fresh_token: ResumeToken::from_random([id; 16]),
                fresh_trace: TraceId::from_random([id; 8]),
                user: None,
                reads_acked: true,
                presence_off: false,
            },
            now,
        );
    };
    join(&mut room, 1, 1);
    join(&mut room, 2, 2);
    room.drain_outputs();
    let b = PeerId::from_random([2; 8]);
    let good = format!(r#"{{"type":"signal","to":"{b}","payload":"ok"}}"#);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 0..20_000 {
        let seed = SEEDS[rng.below(SEEDS.len())].replace("PEER", b.as_str());
        let text = mutate(&mut rng, &seed);
        let _ = parse_client_frame(&text);
        room.handle_text(ConnId(1), &text, now);
        if i % 100 == 0 {
            room.handle_binary(ConnId(1), now);
            // A stranger's socket is closed, never trusted.
            room.handle_text(ConnId(99), &text, now);
        }
        room.drain_outputs();
        room.handle_text(ConnId(1), &good, now);
        let delivered = room.drain_outputs().into_iter().any(|o| {
            matches!(o, Output::Send { conn: ConnId(2), ref text } if text.contains(r#""payload":"ok""#))
        });
        assert!(
            delivered,
            "after input #{i} {text:?} the room stopped routing"
        );
        // a's own "ack" mutations may trim b's queue; keep the room small.
        room.handle_text(
            ConnId(2),
            r#"{"type":"ack","seq":18446744073709551615}"#,
            now,
        );
        room.drain_outputs();
    }
    assert_eq!(room.stats().peers_connected, 2);
}
