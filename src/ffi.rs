//! Runtime APIs that workers-rs does not bind yet.

use wasm_bindgen::prelude::*;
use worker::worker_sys::DurableObjectState;
use worker::worker_sys::web_sys::WebSocket;

#[wasm_bindgen]
extern "C" {
    /// The slice of `DurableObjectState` bound here.
    #[wasm_bindgen(extends = js_sys::Object)]
    type HibernationState;

    /// `DurableObjectState.getWebSocketAutoResponseTimestamp(ws)`: when the runtime
    /// last answered this socket's ping without waking the object (a `Date` or null).
    #[wasm_bindgen(method, catch, js_name = getWebSocketAutoResponseTimestamp)]
    fn get_web_socket_auto_response_timestamp(
        this: &HibernationState,
        ws: &WebSocket,
    ) -> Result<JsValue, JsValue>;
}

/// Milliseconds since the epoch of the last auto-answered ping on `ws`, if any.
pub fn auto_response_timestamp(state: &DurableObjectState, ws: &WebSocket) -> Option<u64> {
    let this: &HibernationState = state.unchecked_ref();
    let v = this.get_web_socket_auto_response_timestamp(ws).ok()?;
    let date = v.dyn_into::<js_sys::Date>().ok()?;
    let ms = date.get_time();
    (ms.is_finite() && ms >= 0.0).then_some(ms as u64)
}
