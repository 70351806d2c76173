//! What a peer's resume queue holds: sequenced frames, each a reference to a
//! shared body, and whether storage already has it.
//!
//! A broadcast builds one [`Body`] and every recipient's queue points at it, so
//! its payload is held (and stored) once however many peers it goes to.

use std::cell::Cell;
use std::collections::VecDeque;
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

/// A sender's client frames still only in memory: `(cseq, copies)` in `cseq` order, a copy per
/// recipient queue holding one. A deque, not a map: frames are processed in `cseq` order and
/// mostly settle oldest first, and a two-peer room's count goes 0 → 1 → 0 with every frame, so
/// a map would allocate and free a node each time.
#[derive(Debug, Default)]
pub(crate) struct Inflight(VecDeque<(u64, u32)>);

impl Inflight {
    /// One more copy of frame `cseq` is held.
    pub(crate) fn add(&mut self, cseq: u64) {
        match self.0.back_mut() {
            Some((n, copies)) if *n == cseq => *copies = copies.saturating_add(1),
            Some((n, _)) if *n > cseq => {
                // Not in order (cannot happen while frames are processed in `cseq` order).
                match self.0.binary_search_by_key(&cseq, |(n, _)| *n) {
                    Ok(i) => {
                        if let Some((_, copies)) = self.0.get_mut(i) {
                            *copies = copies.saturating_add(1);
                        }
                    }
                    Err(i) => self.0.insert(i, (cseq, 1)),
                }
            }
            _ => self.0.push_back((cseq, 1)),
        }
    }

    /// One copy of frame `cseq` was written or acknowledged.
    pub(crate) fn done(&mut self, cseq: u64) {
        if let Ok(i) = self.0.binary_search_by_key(&cseq, |(n, _)| *n)
            && let Some((_, copies)) = self.0.get_mut(i)
        {
            *copies = copies.saturating_sub(1);
            if *copies == 0 {
                self.0.remove(i);
            }
        }
    }

    /// The oldest frame still held.
    pub(crate) fn first(&self) -> Option<u64> {
        self.0.front().map(|(n, _)| *n)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Inflight;

    #[test]
    fn inflight_counts_copies_and_keeps_the_oldest_first() {
        let mut f = Inflight::default();
        assert_eq!(f.first(), None);
        // A broadcast to two recipients, then a signal; then one out of order.
        f.add(3);
        f.add(3);
        f.add(4);
        f.add(1);
        assert_eq!(f.first(), Some(1));
        f.done(1);
        assert_eq!(f.first(), Some(3));
        f.done(3);
        assert_eq!(f.first(), Some(3), "one copy of 3 is still held");
        f.done(4);
        f.done(7); // never held: nothing happens
        assert_eq!(f.first(), Some(3));
        f.done(3);
        assert!(f.is_empty());
    }
}
