//! ChannelData decoding and TCP stream framing must never panic, and a decoded message must
//! re-encode to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_relay::stun::ChannelData;
use switchboard_relay::stun::channel_data::{Frame, next_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ChannelData::decode(data) {
        let encoded = ChannelData::encode(cd.channel, cd.data, false);
        assert_eq!(Some(encoded.as_slice()), data.get(..encoded.len()));
    }
    let mut rest = data;
    while let Ok(Some(frame)) = next_frame(rest) {
        let consumed = match frame {
            Frame::Stun(n) => n,
            Frame::ChannelData { consumed, .. } => consumed,
        };
        assert!(consumed > 0 && consumed <= rest.len());
        rest = &rest[consumed..];
    }
});
