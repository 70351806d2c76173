//! Sans-IO bookkeeping of one client: which probe messages arrived from which sender (exact loss
//! and duplicate detection per sender -> receiver stream), the v1.1 outbox of unacknowledged
//! client frames, and a small random source for jitter. No clock, no sockets.

use std::collections::{BTreeMap, VecDeque};

/// Index of a load-generator client, unique within one loadgen process (and, with
/// `--first-client`, across the processes of one run).
pub type ClientIdx = u32;

/// The probe numbers `n` received from one sender: a bit per `n`.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    bits: Vec<u64>,
    /// Distinct numbers received.
    pub distinct: u64,
    /// Numbers received again after the first time.
    pub duplicated: u64,
}

impl Stream {
    /// Records `n`; returns true the first time `n` is seen.
    pub fn record(&mut self, n: u64) -> bool {
        let word = usize::try_from(n / 64).unwrap_or(usize::MAX);
        let bit = 1u64 << (n % 64);
        if word >= self.bits.len() {
            // A probe number is at most the sender's count, bounded by rate x duration.
            if word > (1 << 24) {
                self.duplicated += 1;
                return false;
            }
            self.bits.resize(word + 1, 0);
        }
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if *w & bit != 0 {
            self.duplicated += 1;
            false
        } else {
            *w |= bit;
            self.distinct += 1;
            true
        }
    }
}

/// Everything one receiver got, by sender.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Streams by sender.
    pub by_sender: BTreeMap<ClientIdx, Stream>,
}

impl Received {
    /// Records probe `n` from `sender`; true when it is new.
    pub fn record(&mut self, sender: ClientIdx, n: u64) -> bool {
        self.by_sender.entry(sender).or_default().record(n)
    }
}

/// Counts of sent probes per destination, from the sender's side.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Probes sent to each destination client (for a broadcast: to every member it was sent to).
    pub to: BTreeMap<ClientIdx, u64>,
}

/// Loss and duplicates of a whole run, matching every sender's counts with its receivers' streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Probes the senders sent, summed over destinations.
    pub expected: u64,
    /// Distinct probes received.
    pub delivered: u64,
    /// Sent but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received although the sender did not count it as sent to this receiver.
    pub unexpected: u64,
}

/// Matches senders' `Sent` with receivers' `Received` (indexed by client).
pub fn tally(sent: &BTreeMap<ClientIdx, Sent>, received: &BTreeMap<ClientIdx, Received>) -> Tally {
    let mut t = Tally::default();
    for (s, out) in sent {
        for (r, count) in &out.to {
            t.expected += count;
            let got = received
                .get(r)
                .and_then(|rx| rx.by_sender.get(s))
                .map_or(0, |st| st.distinct);
            t.lost += count.saturating_sub(got);
            t.unexpected += got.saturating_sub(*count);
        }
    }
    for rx in received.values() {
        for st in rx.by_sender.values() {
            t.delivered += st.distinct;
            t.duplicated += st.duplicated;
        }
    }
    t
}

/// Protocol v1.1 outbox: client frames carrying `cseq`, kept until the room acknowledges them.
#[derive(Debug, Default)]
pub struct Outbox {
    next: u64,
    frames: VecDeque<(u64, String)>,
}

impl Outbox {
    /// Assigns the next `cseq` (from 1) and keeps `make(cseq)` until acknowledged.
    pub fn push(&mut self, make: impl FnOnce(u64) -> String) -> &str {
        self.next += 1;
        let cseq = self.next;
        self.frames.push_back((cseq, make(cseq)));
        self.frames.back().map_or("", |(_, f)| f.as_str())
    }

    /// Forgets every frame with `cseq <= upto` (an `ack`, or `welcome.cseq` on resume); returns how many.
    pub fn confirm(&mut self, upto: u64) -> usize {
        let before = self.frames.len();
        while self.frames.front().is_some_and(|(c, _)| *c <= upto) {
            self.frames.pop_front();
        }
        before - self.frames.len()
    }

    /// Frames with `cseq >= from`, in order, to send again.
    pub fn from(&self, from: u64) -> impl Iterator<Item = &str> {
        self.frames
            .iter()
            .filter(move |(c, _)| *c >= from)
            .map(|(_, f)| f.as_str())
    }

    /// Frames still unacknowledged.
    pub fn len(&self) -> usize {
        self.frames.len()
    }
}

/// xorshift64*: jitter and send-phase offsets; seeded from the OS once per client.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// A generator seeded from the OS.
    pub fn from_os() -> Rng {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Rng::new(u64::from_le_bytes(b))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, max]` (inclusive): the full-jitter wait of a `retry_after_ms`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }
}

/// Percentiles of a latency sample set, in milliseconds.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Percentiles of microsecond samples (sorts `us` in place), reported in milliseconds.
pub fn percentiles(us: &mut [u32]) -> Percentiles {
    us.sort_unstable();
    let at = |q: f64| -> f64 {
        if us.is_empty() {
            return 0.0;
        }
        let last = us.len() - 1;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((last as f64) * q).round() as usize;
        us.get(i.min(last)).map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    Percentiles {
        samples: us.len() as u64,
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Latency of the probes sent in one second of the send phase.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SecondLatency {
    /// Seconds since the send phase began (0: its first second).
    pub second: u64,
    /// Percentiles of the probes sent in that second.
    #[serde(flatten)]
    pub latency_ms: Percentiles,
}

/// Latency by the second the probe was sent in (`sent_unix_ms` pairs with `us`): a queue that
/// grows shows as a rising line, a stall as one bad second. Probes sent before `start_unix_ms`
/// count in second 0.
pub fn by_second(us: &[u32], sent_unix_ms: &[u64], start_unix_ms: u64) -> Vec<SecondLatency> {
    let mut seconds: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (lat, sent) in us.iter().zip(sent_unix_ms) {
        let second = sent.saturating_sub(start_unix_ms) / 1000;
        seconds.entry(second).or_default().push(*lat);
    }
    seconds
        .into_iter()
        .map(|(second, mut us)| SecondLatency {
            second,
            latency_ms: percentiles(&mut us),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)] // test data is ours
mod tests {
    use super::*;

    #[test]
    fn latency_by_second_groups_by_send_time() {
        // Three probes sent in second 0 (one before the start), two in second 2.
        let us = [1_000, 2_000, 3_000, 50_000, 70_000];
        let sent = [9_990, 10_000, 10_999, 12_000, 12_500];
        let s = by_second(&us, &sent, 10_000);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].second, s[0].latency_ms.samples), (0, 3));
        assert!((s[0].latency_ms.max - 3.0).abs() < 1e-9);
        assert_eq!((s[1].second, s[1].latency_ms.samples), (2, 2));
        assert!(
            (s[1].latency_ms.p50 - 70.0).abs() < 1e-9 || (s[1].latency_ms.p50 - 50.0).abs() < 1e-9
        );
        assert!((s[1].latency_ms.max - 70.0).abs() < 1e-9);
    }

    #[test]
    fn stream_counts_duplicates_and_distinct() {
        let mut s = Stream::default();
        assert!(s.record(0));
        assert!(s.record(130));
        assert!(!s.record(130));
        assert!(s.record(64));
        assert_eq!((s.distinct, s.duplicated), (3, 1));
    }

    #[test]
    fn tally_finds_lost_duplicated_and_unexpected() {
        let mut sent = BTreeMap::new();
        sent.insert(
            1,
            Sent {
                to: BTreeMap::from([(2, 5)]),
            },
        );
        sent.insert(
            2,
            Sent {
                to: BTreeMap::from([(1, 2)]),
            },
        );
        let mut rx2 = Received::default();
        for n in [0, 1, 1, 3] {
            rx2.record(1, n);
        }
        let mut rx1 = Received::default();
        for n in [0, 1, 2] {
            rx1.record(2, n);
        }
        let received = BTreeMap::from([(1, rx1), (2, rx2)]);
        let t = tally(&sent, &received);
        assert_eq!(
            t,
            Tally {
                expected: 7,
                delivered: 6,
                lost: 2,
                duplicated: 1,
                unexpected: 1
            }
        );
    }

    #[test]
    fn outbox_confirms_cumulatively_and_resends_from() {
        let mut o = Outbox::default();
        for _ in 0..5 {
            o.push(|c| format!("f{c}"));
        }
        assert_eq!(o.confirm(2), 2);
        assert_eq!(o.from(4).collect::<Vec<_>>(), ["f4", "f5"]);
        assert_eq!(o.from(0).count(), 3);
        assert_eq!(o.confirm(1), 0);
        assert_eq!(o.confirm(9), 3);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn jitter_stays_in_window_and_spreads() {
        let mut r = Rng::new(7);
        let mut tenths = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.upto(999);
            assert!(v <= 999);
            tenths[(v / 100) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| n > 800 && n < 1200), "{tenths:?}");
    }

    #[test]
    fn percentiles_of_known_samples() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.samples, 100);
        assert!((p.p50 - 51.0).abs() < 1.01);
        assert!((p.max - 100.0).abs() < f64::EPSILON);
    }
}
