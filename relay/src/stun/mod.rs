//! Sans-IO STUN codec (RFC 8489) with the TURN attributes (RFC 8656): parsing never panics on peer
//! bytes, building computes MESSAGE-INTEGRITY and FINGERPRINT over the right bytes.

pub mod attributes;
pub mod channel_data;
pub mod integrity;
pub mod message;
pub mod reader;

#[cfg(test)]
mod rfc5769;

pub use attributes::{AttributeType, ErrorCode};
pub use channel_data::{ChannelData, ChannelNumber};
pub use integrity::{IntegrityKey, IntegrityKind};
pub use message::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
