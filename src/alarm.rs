//! The Durable Object alarm, set only when an object must wake earlier than it already will.

use std::cell::Cell;

use switchboard_proto::Millis;
use worker::{Result, State};

/// What an object knows of its alarm: `None` until read from storage, then the alarm time
/// (`Some(None)`: no alarm set). Reading it once per wake-up saves a storage call per event.
pub type KnownAlarm = Cell<Option<Option<u64>>>;

/// Whether [`wake_by`] would touch storage for `want`: the alarm is unknown (not read since the
/// object woke) or later than `want`. `false` lets an event finish without awaiting anything.
pub fn must_set(known: &KnownAlarm, want: Option<Millis>) -> bool {
    let Some(want) = want else {
        return false;
    };
    match known.get() {
        None => true,
        Some(current) => current.is_none_or(|at| at > clamp(want).0),
    }
}

/// Whether [`clear`] would touch storage: an alarm may be set (set, or not read since the object
/// woke).
pub fn may_be_set(known: &KnownAlarm) -> bool {
    known.get() != Some(None)
}

/// Deletes the alarm if one may be set: for an object with nothing left to wake for (an emptied
/// room), which is then not rebuilt and its storage read just to find that out.
pub async fn clear(state: &State, known: &KnownAlarm) -> Result<()> {
    if may_be_set(known) {
        state.storage().delete_alarm().await?;
        known.set(Some(None));
    }
    Ok(())
}

/// Never at or before now: `Date.now()` stands still between I/O, and an alarm set for the
/// time of the alarm being handled is deleted when its handler returns.
fn clamp(want: Millis) -> Millis {
    Millis(want.0.max(crate::http::now().0.saturating_add(1)))
}

/// Sets the alarm to `want` if none is set or the set one is later.
pub async fn wake_by(state: &State, known: &KnownAlarm, want: Option<Millis>) -> Result<()> {
    let Some(want) = want else {
        return Ok(());
    };
    let want = clamp(want);
    let current = match known.get() {
        Some(k) => k,
        None => {
            let a = state
                .storage()
                .get_alarm()
                .await?
                .and_then(|ms| u64::try_from(ms).ok());
            known.set(Some(a));
            a
        }
    };
    if current.is_none_or(|at| at > want.0) {
        // An absolute time: `set_alarm(i64)` would be read as an offset.
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(want.0 as f64));
        state
            .storage()
            .set_alarm(worker::ScheduledTime::new(at))
            .await?;
        known.set(Some(Some(want.0)));
    }
    Ok(())
}
