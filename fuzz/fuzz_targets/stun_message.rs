//! STUN decoding, integrity and fingerprint checks, and every typed attribute decoder must
//! never panic on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_relay::stun::attributes as attr;
use switchboard_relay::stun::{IntegrityKey, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode(data) else { return };
    let _ = msg.verify_fingerprint();
    let _ = msg.verify_integrity(&IntegrityKey::long_term("user", "realm", "pass"));
    for a in msg.attributes() {
        let v = a.value;
        let _ = attr::decode_xor_address(v, &msg.transaction_id);
        let _ = attr::decode_address(v, a.typ);
        let _ = attr::decode_error_code(v);
        let _ = attr::decode_u32(v, a.typ);
        let _ = attr::decode_requested_transport(v);
        let _ = attr::decode_even_port(v);
        let _ = attr::decode_address_family(v, a.typ);
        let _ = attr::decode_channel_number(v);
        let _ = attr::decode_reservation_token(v);
        let _ = attr::decode_unknown_attributes(v);
        let _ = attr::decode_text(v, a.typ);
    }
    let _ = msg.unknown_required(&[attr::USERNAME]);
});
