//! What a peer's resume queue holds: sequenced frames, each a reference to a
//! shared body, and whether storage already has it.
//!
//! A broadcast builds one [`Body`] and every recipient's queue points at it, so
//! its payload is held (and stored) once however many peers it goes to.

use std::cell::Cell;
use std::rc::Rc;

use crate::types::{Millis, PeerId};
use crate::wire::SeqBody;

/// A frame body shared by the queues it was delivered to.
#[derive(Debug)]
pub(crate) struct Body {
    /// Its row id in storage (`bodies.id`).
    pub(crate) id: u64,
    /// The frame without its `seq`.
    pub(crate) frame: SeqBody,
    /// Whether storage has the body row.
    pub(crate) written: Cell<bool>,
}

impl Body {
    pub(crate) fn new(id: u64, frame: SeqBody) -> Rc<Body> {
        Rc::new(Body {
            id,
            frame,
            written: Cell::new(false),
        })
    }
}

/// One frame in one peer's queue.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The recipient's sequence number for it.
    pub(crate) seq: u64,
    /// The shared body.
    pub(crate) body: Rc<Body>,
    /// Whether storage has this queue row (so a restart keeps it).
    pub(crate) durable: bool,
    /// When it was queued.
    pub(crate) at: Millis,
    /// The client frame it came from, `(sender, cseq)`, for frames from v1.1 senders.
    pub(crate) origin: Option<(PeerId, u64)>,
}

/// A queued frame as read back from storage, for [`crate::room::Room::load_queue`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFrame {
    /// The recipient's sequence number it was stored with.
    pub seq: u64,
    /// The body's row id.
    pub body_id: u64,
    /// The body.
    pub body: SeqBody,
}

/// What storage holds for one peer's queue, read at wake instead of the frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredQueue {
    /// The peer.
    pub peer: PeerId,
    /// Rows.
    pub len: usize,
    /// Bytes, counted as [`SeqBody::len`] per row.
    pub bytes: usize,
    /// Highest stored `seq`.
    pub max_seq: u64,
}
