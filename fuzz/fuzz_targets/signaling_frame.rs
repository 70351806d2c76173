//! The Worker's signaling parser and room state machine must never panic on
//! arbitrary client text, and a peer's garbage must not stop the room routing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::ice::IceConfig;
use switchboard_proto::limits::Limits;
use switchboard_proto::room::{Join, Output, Room, RoomConfig};
use switchboard_proto::wire::parse_client_frame;
use switchboard_proto::{ConnId, Meta, Millis, PeerId, ResumeToken, RoomName, TraceId};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_client_frame(&text);
    let _ = Meta::parse(&text);
    let _ = switchboard_proto::auth::verify_jwt(&text, b"k", Millis(0));

    let Some(name) = RoomName::parse("fuzz") else { return };
    let cfg = RoomConfig { name, limits: Limits::default(), ice: IceConfig::default(), sfu: None };
    let mut room = Room::new(cfg);
    let now = Millis(1_700_000_000_000);
    for id in [1u8, 2] {
        room.handle_join(
            Join {
                conn: ConnId(u64::from(id)),
                meta: Meta::empty(),
                resume: None,
                fresh_peer: PeerId::from_random([id; 8]),
                fresh_token: ResumeToken::from_random([id; 16]),
                fresh_trace: TraceId::from_random([id; 8]),
                user: None,
                reads_acked: true,
                // One peer without presence, so frames also meet a room where not all get it.
                presence_off: id == 2,
            },
            now,
        );
    }
    room.drain_outputs();
    room.handle_text(ConnId(1), &text, now);
    room.handle_checkpoint(now.plus(5_000));
    room.drain_outputs();
    let to = PeerId::from_random([2; 8]);
    room.handle_text(ConnId(1), &format!(r#"{{"type":"signal","to":"{to}","payload":1}}"#), now);
    let routed = room
        .drain_outputs()
        .iter()
        .any(|o| matches!(o, Output::Send { conn: ConnId(2), .. }));
    // A `leave` in the input legitimately ends peer 1; anything else must not stop routing.
    assert!(routed || room.peer_of(ConnId(1)).is_none());
});
