//! Room limits and the per-peer rate limiter.

use crate::types::Millis;

/// Everything a room enforces, with the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Ping period clients are told to use (`HEARTBEAT_MS`); dead after 3 missed.
    pub heartbeat_ms: u64,
    /// How long an away peer may resume (`RESUME_WINDOW_MS`).
    pub resume_window_ms: u64,
    /// Room capacity, away peers included (`MAX_PEERS`).
    pub max_peers: usize,
    /// Peers that receive presence (`peer-joined`, `peer-left`, `welcome.peers`), away peers
    /// included (`PRESENCE_MAX_PEERS`). Each join or leave costs one frame per such peer, so
    /// this, not `max_peers`, bounds the cost of a join in a large room; peers that join with
    /// `presence=off` do not count.
    pub presence_max_peers: usize,
    /// Largest client frame in bytes (`MAX_FRAME_BYTES`).
    pub max_frame_bytes: usize,
    /// Sustained frames per second per peer (`RATE_PER_S`).
    pub rate_per_s: u32,
    /// Burst size of the rate limiter (`RATE_BURST`).
    pub rate_burst: u32,
    /// Frames kept per peer for resume (`QUEUE_MAX_FRAMES`).
    pub queue_max_frames: usize,
    /// Bytes kept per peer for resume (`QUEUE_MAX_BYTES`).
    pub queue_max_bytes: usize,
    /// Bytes kept for resume by all the room's queues together (`ROOM_QUEUE_MAX_BYTES`).
    pub room_queue_max_bytes: usize,
    /// How long a frame to a connected peer may stay unacknowledged in memory only
    /// before a checkpoint writes it (`FLUSH_AFTER_MS`). Kept above `ack_delay_ms`
    /// (see [`Limits::normalized`]), so a client that acknowledges on time is
    /// never the reason for a write.
    pub flush_after_ms: u64,
    /// How soon after an unacknowledged frame clients are asked to send `ack`
    /// (`ACK_DELAY_MS`, announced in `welcome.limits`).
    pub ack_delay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heartbeat_ms: 30_000,
            resume_window_ms: 60_000,
            max_peers: 64,
            presence_max_peers: 64,
            max_frame_bytes: 64 * 1024,
            rate_per_s: 50,
            rate_burst: 100,
            queue_max_frames: 256,
            queue_max_bytes: 1024 * 1024,
            room_queue_max_bytes: 16 * 1024 * 1024,
            flush_after_ms: 5000,
            ack_delay_ms: 2000,
        }
    }
}

impl Limits {
    /// The limits with `flush_after_ms` raised to at least twice `ack_delay_ms`:
    /// a frame is written only when its recipient is late by a whole ack delay.
    pub fn normalized(mut self) -> Self {
        self.flush_after_ms = self.flush_after_ms.max(self.ack_delay_ms.saturating_mul(2));
        self
    }

    /// Silence after which a connected peer counts as dead: three missed heartbeats.
    pub fn dead_after_ms(&self) -> u64 {
        self.heartbeat_ms.saturating_mul(3)
    }
}

/// A token bucket with integer milli-tokens, fed the caller's time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    milli_tokens: u64,
    capacity: u64,
    refill_per_s: u64,
    last: Millis,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `per_s` tokens per second.
    pub fn new(per_s: u32, burst: u32, now: Millis) -> TokenBucket {
        let capacity = u64::from(burst).saturating_mul(1000);
        TokenBucket {
            milli_tokens: capacity,
            capacity,
            refill_per_s: u64::from(per_s),
            last: now,
        }
    }

    fn refill(&mut self, now: Millis) {
        let elapsed = now.since(self.last);
        // per_s tokens per 1000 ms = per_s milli-tokens per ms.
        let refill = elapsed.saturating_mul(self.refill_per_s);
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Milliseconds from `now` until a token is available (0 if one is).
    pub fn wait_ms(&mut self, now: Millis) -> u64 {
        self.refill(now);
        let missing = 1000u64.saturating_sub(self.milli_tokens);
        if missing == 0 {
            0
        } else if self.refill_per_s == 0 {
            // A zero rate never refills; say "a minute" rather than forever.
            60_000
        } else {
            missing.div_ceil(self.refill_per_s)
        }
    }

    /// Takes one token if there is one; `false` means rate limited.
    pub fn try_take(&mut self, now: Millis) -> bool {
        self.refill(now);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_after_stays_above_the_ack_delay() {
        let d = Limits::default().normalized();
        assert_eq!((d.ack_delay_ms, d.flush_after_ms), (2000, 5000));
        let late = Limits {
            ack_delay_ms: 4000,
            flush_after_ms: 1000,
            ..Limits::default()
        }
        .normalized();
        assert_eq!(late.flush_after_ms, 8000);
    }

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Millis(1_000_000);
        let mut b = TokenBucket::new(50, 100, t0);
        for _ in 0..100 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0), "the burst is 100");
        assert_eq!(b.wait_ms(t0), 20);
        assert_eq!(b.wait_ms(t0.plus(5)), 15);
        // 50/s = one token per 20 ms.
        assert!(!b.try_take(t0.plus(19)));
        assert!(b.try_take(t0.plus(20)));
        assert!(!b.try_take(t0.plus(20)));
        // A long pause refills to the burst, never beyond.
        let later = t0.plus(60_000);
        let taken = (0..500).filter(|_| b.try_take(later)).count();
        assert_eq!(taken, 100);
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let t0 = Millis(5_000);
        let mut b = TokenBucket::new(1, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(Millis(0)));
        assert!(!b.try_take(t0.plus(999)));
        assert!(b.try_take(t0.plus(1000)));
    }
}
