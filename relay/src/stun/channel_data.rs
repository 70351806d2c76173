//! ChannelData messages (RFC 8656 §12.4) and stream framing of STUN + ChannelData over TCP/TLS
//! (RFC 8656 §12.5: over streams ChannelData is padded to a multiple of four bytes).

use std::fmt;

use super::message::{HEADER_LEN, MAGIC_COOKIE, padding};
use super::reader::Reader;

/// A channel number. RFC 8656 §12 allows 0x4000..=0x4FFF, RFC 5766 allowed up to 0x7FFF and
/// deployed clients (coturn's among them) still pick from that wider range, so we accept it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ChannelNumber(pub u16);

impl ChannelNumber {
    /// Lowest valid channel number.
    pub const MIN: u16 = 0x4000;
    /// Highest channel number accepted (RFC 5766 §11).
    pub const MAX: u16 = 0x7FFF;

    /// Whether the number may be bound by ChannelBind.
    pub const fn is_valid(self) -> bool {
        self.0 >= Self::MIN && self.0 <= Self::MAX
    }
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelDataError {
    /// Shorter than the header or the declared length.
    Truncated,
    /// First two bits are not 0b01.
    NotChannelData,
}

impl fmt::Display for ChannelDataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated ChannelData",
            Self::NotChannelData => "not ChannelData",
        })
    }
}

impl std::error::Error for ChannelDataError {}

/// A decoded ChannelData message borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel.
    pub channel: ChannelNumber,
    /// The application data.
    pub data: &'a [u8],
}

/// Size of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData message; bytes after the declared length (padding) are ignored.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ChannelDataError> {
        let mut r = Reader::new(bytes);
        let channel = r.u16().ok_or(ChannelDataError::Truncated)?;
        if channel & 0xC000 != 0x4000 {
            return Err(ChannelDataError::NotChannelData);
        }
        let len = usize::from(r.u16().ok_or(ChannelDataError::Truncated)?);
        let data = r.take(len).ok_or(ChannelDataError::Truncated)?;
        Ok(Self {
            channel: ChannelNumber(channel),
            data,
        })
    }

    /// Encodes into `out`; `pad` adds the zero padding required on stream transports.
    pub fn encode_into(channel: ChannelNumber, data: &[u8], pad: bool, out: &mut Vec<u8>) {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        let data = data.get(..usize::from(len)).unwrap_or(data);
        out.extend_from_slice(&channel.0.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
        if pad {
            out.extend(std::iter::repeat_n(0, padding(data.len())));
        }
    }

    /// Encodes a fresh buffer.
    pub fn encode(channel: ChannelNumber, data: &[u8], pad: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHANNEL_DATA_HEADER_LEN + data.len() + 3);
        Self::encode_into(channel, data, pad, &mut out);
        out
    }
}

/// What the next frame in a byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A STUN message of this many bytes.
    Stun(usize),
    /// A ChannelData message: bytes of the message itself, and bytes to consume incl. padding.
    ChannelData {
        /// Header plus payload.
        len: usize,
        /// `len` rounded up to a multiple of 4.
        consumed: usize,
    },
}

/// The stream carries neither STUN nor ChannelData: the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError;

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream is neither STUN nor ChannelData")
    }
}

impl std::error::Error for FramingError {}

/// Looks at the start of a stream buffer: `Ok(None)` means more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Result<Option<Frame>, FramingError> {
    let mut r = Reader::new(buf);
    let Some(first) = r.u16() else {
        return Ok(None);
    };
    let Some(len) = r.u16() else { return Ok(None) };
    let len = usize::from(len);
    match first >> 14 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FramingError);
            }
            // Check the cookie early so garbage is rejected without buffering 64 KiB of it.
            match r.u32() {
                Some(MAGIC_COOKIE) => {}
                Some(_) => return Err(FramingError),
                None => return Ok(None),
            }
            let total = HEADER_LEN + len;
            Ok((buf.len() >= total).then_some(Frame::Stun(total)))
        }
        0b01 => {
            let total = CHANNEL_DATA_HEADER_LEN + len;
            let consumed = total + padding(len);
            Ok((buf.len() >= consumed).then_some(Frame::ChannelData {
                len: total,
                consumed,
            }))
        }
        _ => Err(FramingError),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests use fixed, known-good inputs"
)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trips_with_and_without_padding() {
        let unpadded = ChannelData::encode(ChannelNumber(0x4001), b"hello", false);
        assert_eq!(unpadded.len(), 9);
        let padded = ChannelData::encode(ChannelNumber(0x4001), b"hello", true);
        assert_eq!(padded.len(), 12);
        for bytes in [&unpadded[..], &padded[..]] {
            let cd = ChannelData::decode(bytes).unwrap();
            assert_eq!(cd.channel, ChannelNumber(0x4001));
            assert_eq!(cd.data, b"hello");
        }
        assert_eq!(
            ChannelData::decode(&unpadded[..8]),
            Err(ChannelDataError::Truncated)
        );
        assert_eq!(
            ChannelData::decode(&[0x00, 0x01, 0, 0]),
            Err(ChannelDataError::NotChannelData)
        );
    }

    #[test]
    fn stream_framing() {
        let cd = ChannelData::encode(ChannelNumber(0x4000), b"abcde", true);
        assert_eq!(next_frame(&cd[..3]), Ok(None));
        assert_eq!(next_frame(&cd[..9]), Ok(None));
        assert_eq!(
            next_frame(&cd),
            Ok(Some(Frame::ChannelData {
                len: 9,
                consumed: 12
            }))
        );
        let mut stun = vec![0, 1, 0, 0];
        stun.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(next_frame(&stun), Ok(None));
        stun.extend_from_slice(&[0; 12]);
        assert_eq!(next_frame(&stun), Ok(Some(Frame::Stun(20))));
        // A TLS ClientHello sent to the plain port is refused at once.
        assert_eq!(next_frame(b"\x16\x03\x01\x02\x00\x01"), Err(FramingError));
        assert_eq!(next_frame(&[0xFF, 0, 0, 0]), Err(FramingError));
        assert_eq!(next_frame(&[0, 1, 0, 4, 1, 2, 3, 4]), Err(FramingError));
    }
}
