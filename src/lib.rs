//! The Switchboard signaling Worker.
//!
//! A thin shell around `switchboard-proto`: `router` answers HTTP (health,
//! ICE servers, authentication) and hands each room's WebSockets to that room's
//! Durable Object, [`room::Room`], which runs the sans-IO room state machine
//! over the Hibernation API and SQLite storage.

mod alarm;
mod config;
mod ffi;
mod http;
mod registry;
mod room;
mod router;

pub use registry::Registry;
pub use room::Room;

use worker::{Context, Env, Request, Response, Result, event};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match router::handle(req, &env).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            worker::console_error!(
                "{}",
                http::log_line("error", None, None, Some(&e.to_string()))
            );
            http::error(switchboard_proto::ErrorCode::Internal, "internal error")
        }
    }
}
