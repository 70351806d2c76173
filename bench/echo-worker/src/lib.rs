//! The echo floor: a Worker that routes `/v1/rooms/{room}` to one Durable Object per room, which
//! accepts WebSockets with the Hibernation API and forwards each message to every other socket
//! of the room. No protocol, no storage: what a room costs on this runtime before any logic.

use worker::{
    Context, DurableObject, Env, Request, Response, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair, durable_object, event,
};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    if path == "/healthz" {
        return Response::ok("ok");
    }
    let Some(room) = path.strip_prefix("/v1/rooms/") else {
        return Response::error("not found", 404);
    };
    let valid = !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Response::error("invalid room", 400);
    }
    let stub = env.durable_object("ROOM")?.id_from_name(room)?.get_stub()?;
    stub.fetch_with_request(req).await
}

/// One room: its sockets, nothing else.
#[durable_object]
pub struct EchoRoom {
    state: State,
}

impl DurableObject for EchoRoom {
    fn new(state: State, _env: Env) -> Self {
        EchoRoom { state }
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        Response::from_websocket(pair.client)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let me: &wasm_bindgen::JsValue = ws.as_ref();
        for other in self.state.get_websockets() {
            let them: &wasm_bindgen::JsValue = other.as_ref();
            if them == me {
                continue;
            }
            let _ = match &message {
                WebSocketIncomingMessage::String(s) => other.send_with_str(s),
                WebSocketIncomingMessage::Binary(b) => other.send_with_bytes(b),
            };
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        // 1005/1006 may not be sent back; a normal close is always allowed.
        let _ = ws.close(Some(1000), Some("closed"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, _error: worker::Error) -> Result<()> {
        Ok(())
    }
}
