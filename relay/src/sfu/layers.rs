//! Simulcast layer choice: which of a publisher's layers (RIDs) each subscriber gets, from the
//! subscriber's egress bandwidth estimate, with hysteresis. Sans IO: rates, estimates and time
//! come in as values.
//!
//! Layers are ranked by their measured bitrate, not by their RID names (browsers use `q/h/f`,
//! `0/1/2`, `low/mid/high`, …). A subscriber goes down one or more layers once the layer it gets
//! has needed more than its estimate for [`DOWN_HOLD`], and up one layer once the next one has
//! fit in [`UP_HEADROOM_PERCENT`] of the estimate for [`UP_HOLD`]; the gap between the two
//! thresholds and the hold times keep a noisy estimate from flapping between layers. A switch
//! takes effect at the new layer's next keyframe (the caller requests one, RFC 4585 PLI), so the
//! subscriber's decoder never gets a delta frame of a stream it has no keyframe for.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// How long the current layer must exceed the estimate before going down.
pub const DOWN_HOLD: Duration = Duration::from_millis(1_000);
/// How long the next layer must fit with headroom before going up.
pub const UP_HOLD: Duration = Duration::from_millis(4_000);
/// Going up needs the next layer to use at most this share of the estimate.
pub const UP_HEADROOM_PERCENT: u64 = 80;
/// The window over which a layer's bitrate is measured.
pub const RATE_WINDOW: Duration = Duration::from_millis(1_000);

/// The bitrate of one simulcast layer, measured over [`RATE_WINDOW`]s of its frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
}

impl RateMeter {
    /// A frame of `bytes` arrived at `now`.
    pub fn record(&mut self, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let ms = u64::try_from(elapsed.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.bps = self.bytes.saturating_mul(8_000) / ms;
            self.bytes = 0;
            self.window_start = Some(now);
        }
    }

    /// Bits per second over the last full window; 0 until one has passed.
    pub fn bps(&self) -> u64 {
        self.bps
    }
}

/// One subscriber's choice among one publisher track's layers.
#[derive(Debug, Clone, Default)]
pub struct LayerChoice {
    /// The layer chosen for the subscriber.
    target: Option<Rid>,
    /// The layer being forwarded: the target's once one of its keyframes went through.
    forwarding: Option<Rid>,
    /// Since when the next layer up has fit with headroom (and which one it was).
    up_since: Option<(Rid, Instant)>,
    /// Since when the target has exceeded the estimate.
    over_since: Option<Instant>,
}

impl LayerChoice {
    /// The layer chosen for the subscriber.
    pub fn target(&self) -> Option<Rid> {
        self.target
    }

    /// The layer being forwarded now.
    pub fn forwarding(&self) -> Option<Rid> {
        self.forwarding
    }

    /// Whether a switch waits for the target's keyframe.
    pub fn switching(&self) -> bool {
        self.target.is_some() && self.target != self.forwarding
    }

    /// Re-decides with the layers' current bitrates (any order) and the subscriber's estimate
    /// (`None` before the first one). Returns the new target when it changes: the caller asks
    /// the publisher for a keyframe of that layer.
    pub fn update(
        &mut self,
        layers: &[(Rid, u64)],
        estimate: Option<u64>,
        now: Instant,
    ) -> Option<Rid> {
        let mut ranked: Vec<(Rid, u64)> = layers.to_vec();
        // Unmeasured layers (0 bit/s: just started, or paused by the publisher) rank lowest.
        ranked.sort_by_key(|(_, bps)| *bps);
        let fits = |bps: u64, e: u64| bps <= e;
        let Some(index) = self
            .target
            .and_then(|t| ranked.iter().position(|(rid, _)| *rid == t))
        else {
            // First choice (or the target layer is gone): the best layer that fits, else the
            // lowest; without an estimate, the lowest.
            let lowest = ranked.first().map(|(rid, _)| *rid)?;
            let pick = estimate
                .and_then(|e| {
                    ranked
                        .iter()
                        .rev()
                        .find(|(_, bps)| *bps > 0 && fits(*bps, e))
                })
                .map_or(lowest, |(rid, _)| *rid);
            return self.switch_to(pick);
        };
        let e = estimate?;
        let current = ranked.get(index).map_or(0, |(_, bps)| *bps);
        if current > e && index > 0 {
            self.up_since = None;
            let since = *self.over_since.get_or_insert(now);
            if now.saturating_duration_since(since) < DOWN_HOLD {
                return None;
            }
            let below = ranked.get(..index).unwrap_or_default();
            let pick = below
                .iter()
                .rev()
                .find(|(_, bps)| fits(*bps, e))
                .or_else(|| below.first())
                .map(|(rid, _)| *rid)?;
            return self.switch_to(pick);
        }
        self.over_since = None;
        let Some((next, next_bps)) = ranked.get(index + 1).copied() else {
            self.up_since = None;
            return None;
        };
        let headroom = e.saturating_mul(UP_HEADROOM_PERCENT) / 100;
        if next_bps == 0 || next_bps > headroom {
            self.up_since = None;
            return None;
        }
        match self.up_since {
            Some((rid, since)) if rid == next => {
                if now.saturating_duration_since(since) >= UP_HOLD {
                    return self.switch_to(next);
                }
            }
            _ => self.up_since = Some((next, now)),
        }
        None
    }

    fn switch_to(&mut self, rid: Rid) -> Option<Rid> {
        self.up_since = None;
        self.over_since = None;
        if self.target == Some(rid) {
            return None;
        }
        self.target = Some(rid);
        Some(rid)
    }

    /// Whether a frame of layer `rid` goes to the subscriber. The old layer keeps flowing until a
    /// keyframe of the new target arrives, which completes the switch.
    pub fn forward(&mut self, rid: Rid, keyframe: bool) -> bool {
        if self.target == Some(rid) {
            if self.forwarding != Some(rid) && (keyframe || self.forwarding.is_none()) {
                self.forwarding = Some(rid);
            }
            return self.forwarding == Some(rid);
        }
        self.forwarding == Some(rid)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests use known inputs"
)]
mod tests {
    use super::*;

    fn rid(s: &str) -> Rid {
        Rid::from(s)
    }

    /// Three layers as Chromium sends a 720p camera: 150, 500 and 1,500 kbit/s.
    fn layers() -> Vec<(Rid, u64)> {
        vec![
            (rid("f"), 1_500_000),
            (rid("q"), 150_000),
            (rid("h"), 500_000),
        ]
    }

    #[test]
    fn the_first_choice_is_the_best_layer_that_fits_and_the_lowest_without_an_estimate() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        assert_eq!(c.update(&layers(), None, t0), Some(rid("q")));
        let mut c = LayerChoice::default();
        assert_eq!(c.update(&layers(), Some(800_000), t0), Some(rid("h")));
        let mut c = LayerChoice::default();
        assert_eq!(c.update(&layers(), Some(5_000_000), t0), Some(rid("f")));
        let mut c = LayerChoice::default();
        assert_eq!(c.update(&layers(), Some(50_000), t0), Some(rid("q")));
        assert_eq!(c.update(&[], Some(50_000), t0), None);
    }

    #[test]
    fn a_short_dip_keeps_the_layer_a_lasting_one_goes_down_to_what_fits() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        c.update(&layers(), Some(3_000_000), t0);
        assert_eq!(c.target(), Some(rid("f")));
        // 900 ms below the layer's rate: not yet.
        for ms in (0..=900).step_by(100) {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(c.update(&layers(), Some(1_000_000), now), None);
        }
        // Back up: the clock restarts.
        assert_eq!(c.update(&layers(), Some(3_000_000), t0 + ms(950)), None);
        assert_eq!(c.update(&layers(), Some(400_000), t0 + ms(1_000)), None);
        assert_eq!(c.update(&layers(), Some(400_000), t0 + ms(1_900)), None);
        // A full DOWN_HOLD: straight to the best layer that fits (skipping `h`).
        assert_eq!(
            c.update(&layers(), Some(400_000), t0 + ms(2_000)),
            Some(rid("q"))
        );
        assert_eq!(c.target(), Some(rid("q")));
    }

    #[test]
    fn going_up_needs_headroom_for_the_whole_hold_one_layer_at_a_time() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        c.update(&layers(), Some(200_000), t0);
        assert_eq!(c.target(), Some(rid("q")));
        // 550 kbit/s: `h` (500) fits, but not within the 80% headroom (440): no switch, ever.
        for s in 0..20 {
            assert_eq!(c.update(&layers(), Some(550_000), t0 + secs(s)), None);
        }
        // 5 Mbit/s: every layer fits with headroom; after UP_HOLD one step up, to `h`.
        let t1 = t0 + secs(20);
        assert_eq!(c.update(&layers(), Some(5_000_000), t1), None);
        assert_eq!(c.update(&layers(), Some(5_000_000), t1 + ms(3_900)), None);
        assert_eq!(
            c.update(&layers(), Some(5_000_000), t1 + UP_HOLD),
            Some(rid("h"))
        );
        // The next step needs its own hold.
        let t2 = t1 + UP_HOLD;
        assert_eq!(c.update(&layers(), Some(5_000_000), t2 + ms(100)), None);
        assert_eq!(
            c.update(&layers(), Some(5_000_000), t2 + ms(100) + UP_HOLD),
            Some(rid("f"))
        );
    }

    #[test]
    fn an_estimate_that_flaps_around_a_layer_does_not_flap_the_layer() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        c.update(&layers(), Some(700_000), t0);
        assert_eq!(c.target(), Some(rid("h")));
        // Alternating 450 / 700 kbit/s every 500 ms for a minute: below `h` never lasts
        // DOWN_HOLD, and `f` never fits.
        let mut switches = 0;
        for i in 0..120u64 {
            let e = if i % 2 == 0 { 450_000 } else { 700_000 };
            if c.update(&layers(), Some(e), t0 + ms(500 * i)).is_some() {
                switches += 1;
            }
        }
        assert_eq!(switches, 0);
    }

    #[test]
    fn a_switch_waits_for_the_new_layers_keyframe() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        c.update(&layers(), Some(200_000), t0);
        assert!(c.forward(rid("q"), false), "the first layer flows at once");
        assert!(!c.forward(rid("h"), true));
        for s in 0..=4 {
            c.update(&layers(), Some(5_000_000), t0 + secs(s));
        }
        assert_eq!(c.target(), Some(rid("h")));
        assert!(c.switching());
        // Until `h` sends a keyframe, `q` still flows and `h` does not.
        assert!(c.forward(rid("q"), false));
        assert!(!c.forward(rid("h"), false));
        assert!(c.forward(rid("h"), true));
        assert!(!c.switching());
        assert!(!c.forward(rid("q"), false));
        assert!(!c.forward(rid("q"), true));
        assert!(c.forward(rid("h"), false));
        assert_eq!(c.forwarding(), Some(rid("h")));
    }

    #[test]
    fn a_layer_that_goes_away_is_replaced() {
        let t0 = Instant::now();
        let mut c = LayerChoice::default();
        c.update(&layers(), Some(5_000_000), t0);
        assert_eq!(c.target(), Some(rid("f")));
        let without_f = vec![(rid("q"), 150_000), (rid("h"), 500_000)];
        assert_eq!(
            c.update(&without_f, Some(5_000_000), t0 + ms(10)),
            Some(rid("h"))
        );
    }

    #[test]
    fn the_rate_meter_measures_per_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        // 30 frames of 2,500 bytes over one second: 600 kbit/s.
        for i in 0..=30u64 {
            m.record(2_500, t0 + Duration::from_micros(i * 1_000_000 / 30));
        }
        assert!((590_000..=630_000).contains(&m.bps()), "{}", m.bps());
        assert_eq!(RateMeter::default().bps(), 0);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}
