//! The shell's clock: wall time as [`Millis`], never going backwards.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::turn::Millis;

/// Wall clock as [`Millis`]; a step backwards is held at the last reading, so expired state
/// cannot come back to life.
#[derive(Debug, Default)]
pub struct Clock {
    last: Millis,
}

impl Clock {
    /// The current time.
    pub fn now(&mut self) -> Millis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last = self.last.max(Millis(ms));
        self.last
    }
}
