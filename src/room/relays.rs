//! The room's pinned relay nodes and failover (docs/PROTOCOL.md, "Relay failover").
//!
//! With the relay registry on (`REGISTRY_SECRET`), a room pins up to two live registry nodes
//! ([`switchboard_proto::relays::repin`]) at its first join: every peer gets their STUN/TURN
//! URLs in `welcome.ice_servers` and meets the others on the first one that runs an SFU
//! (`welcome.sfu`). The pin is stored in the room's `kv` table, so hibernation and restarts
//! keep it, and recorded with the Registry, which calls the room's `/relays` when a pinned
//! node's lease expires or it starts draining. The room then looks at the registry (bypassing
//! the isolate's copy), re-pins, and pushes `relays-changed` to its connected peers that
//! asked for it (`caps=relays`, kept as a socket tag). Joins read the node list from the
//! isolate's copy ([`crate::registry::CACHE_MS`]), so the Registry is on no join's path but
//! the room's first (and only when that copy is stale). Without live nodes the room uses
//! `STUN_URLS`/`TURN_URLS`/`SFU_URLS` as before.

use std::rc::Rc;

use serde::Deserialize;
use switchboard_proto::ConnId;
use switchboard_proto::registry::Region;
use switchboard_proto::relays::{self, MoveReason, Repin, RoomRelays};
use worker::{Result, SqlStorage, SqlStorageValue};

use super::Inner;
use crate::config;
use crate::http::{self, now};
use crate::registry;

/// Internal query parameter of `join`: the joining client's region (for the room's first pin).
pub const Q_REGION: &str = "region";
/// Internal query parameter of `join`: the client's capabilities (`relays`, `acks`).
pub const Q_CAPS: &str = "caps";
/// The capability of a client that handles `relays-changed`.
pub const CAP_RELAYS: &str = "relays";
/// The socket tag of clients with [`CAP_RELAYS`] (a tag, so it survives hibernation).
pub const TAG_RELAYS: &str = "cap:relays";

#[derive(Deserialize)]
struct KvRow {
    value: String,
}

/// Whether a `caps` value (comma-separated) names `cap`.
pub fn has_cap(caps: Option<&str>, cap: &str) -> bool {
    caps.is_some_and(|c| c.split(',').any(|x| x.trim() == cap))
}

impl Inner {
    /// Reads the stored pin (at wake-up) and hands its nodes to the core's `welcome`s.
    pub(super) fn load_relays(&self, sql: &SqlStorage) -> Result<()> {
        let pin: Option<RoomRelays> = sql
            .exec("SELECT value FROM kv WHERE key = 'relays'", None)?
            .to_array::<KvRow>()?
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str(&r.value).ok());
        if let Some(pin) = &pin {
            self.apply_relays(Some(pin));
        }
        *self.pin.borrow_mut() = pin;
        Ok(())
    }

    /// Sets the core's relays from `pin` (none: the static configuration).
    fn apply_relays(&self, pin: Option<&RoomRelays>) {
        let (ice, sfu) = self.relay_configs(pin);
        self.with_core(|room| room.set_relays(ice, sfu));
    }

    fn relay_configs(
        &self,
        pin: Option<&RoomRelays>,
    ) -> (
        switchboard_proto::ice::IceConfig,
        Option<switchboard_proto::sfu_token::SfuConfig>,
    ) {
        let base_ice = config::ice(&self.env);
        let base_sfu = config::sfu(&self.env);
        match pin {
            None => (base_ice, base_sfu),
            Some(pin) => {
                let secret = config::string(&self.env, "TURN_SECRET");
                let ttl = base_sfu
                    .as_ref()
                    .map_or_else(|| config::sfu_token_ttl_s(&self.env), |c| c.ttl_s);
                (
                    pin.ice(&base_ice),
                    pin.sfu_config(base_sfu.as_ref(), secret.as_deref(), ttl),
                )
            }
        }
    }

    /// The SFU base URL the room hands out now, if any.
    pub(super) fn sfu_base(&self) -> Option<String> {
        let (_, sfu) = self.relay_configs(self.pin.borrow().as_ref());
        let room = self.core.borrow();
        let name = &room.as_ref()?.config().name;
        sfu.map(|c| c.node_for(name).to_owned())
    }

    /// Looks at the registry and re-pins if a pinned node died or drains (or pins the room's
    /// first nodes). `fresh`: read the Registry itself rather than the isolate's copy (the
    /// Registry's call after a node died; a stale copy could still list it). The caller
    /// performs the core's outputs. Registry off: nothing.
    pub(super) async fn check_relays(
        this: &Rc<Inner>,
        region: Option<Region>,
        fresh: bool,
    ) -> Result<()> {
        if config::registry_secret(&this.env).is_none() {
            return Ok(());
        }
        let current = this.pin.borrow().clone();
        let empty = this.core.borrow().as_ref().is_none_or(|r| r.is_empty());
        if empty && current.is_some() {
            // Nobody to hand nodes to (the Registry's call to a room that emptied meanwhile);
            // the room lets go of its pin after this event.
            return Ok(());
        }
        let mut records = registry::nodes(&this.env, fresh).await;
        let mut dice = registry::dice();
        let mut decision = relays::repin(
            current.as_ref(),
            &records,
            region.as_ref(),
            now(),
            &mut dice,
        );
        if matches!(decision, Repin::Moved(..)) && !fresh {
            // The isolate's copy may be a few seconds old: confirm with the Registry first.
            records = registry::nodes(&this.env, true).await;
            decision = relays::repin(
                current.as_ref(),
                &records,
                region.as_ref(),
                now(),
                &mut dice,
            );
        }
        let t = now();
        let (pin, reason) = match decision {
            Repin::Keep => return Ok(()),
            Repin::First(pin) => {
                // Peers that joined before the registry had nodes were sent elsewhere; they
                // move too, so that the room keeps meeting on one SFU node.
                let connected = this
                    .core
                    .borrow()
                    .as_ref()
                    .is_some_and(|r| r.stats().peers_connected > 0);
                (Some(pin), connected.then_some(MoveReason::NodesAvailable))
            }
            Repin::Moved(pin, reason) => (pin, Some(reason)),
        };
        let sql = this.state.storage().sql();
        match &pin {
            Some(p) => {
                let text = serde_json::to_string(p).unwrap_or_default();
                sql.exec(
                    "INSERT OR REPLACE INTO kv (key, value) VALUES ('relays', ?)",
                    vec![SqlStorageValue::from(text)],
                )?;
            }
            None => {
                sql.exec("DELETE FROM kv WHERE key = 'relays'", None)?;
            }
        }
        *this.pin.borrow_mut() = pin.clone();
        let (ice, sfu) = this.relay_configs(pin.as_ref());
        match reason {
            None => this.with_core(|room| room.set_relays(ice, sfu)),
            Some(reason) => {
                let notify = this.relay_sockets();
                this.with_core(|room| {
                    room.handle_relays_changed(ice, sfu, reason.as_str(), &notify, t);
                });
            }
        }
        Inner::record_pin(this, pin.as_ref());
        Ok(())
    }

    /// An empty room holds on to no nodes: the next first join pins afresh.
    pub(super) fn release_relays_if_empty(this: &Rc<Inner>) -> Result<()> {
        let empty = this.core.borrow().as_ref().is_some_and(|r| r.is_empty());
        if !empty || this.pin.borrow().is_none() {
            return Ok(());
        }
        *this.pin.borrow_mut() = None;
        this.state
            .storage()
            .sql()
            .exec("DELETE FROM kv WHERE key = 'relays'", None)?;
        this.apply_relays(None);
        Inner::record_pin(this, None);
        Ok(())
    }

    /// Sockets of connected clients that handle `relays-changed`.
    fn relay_sockets(&self) -> Vec<ConnId> {
        self.state
            .as_raw()
            .get_websockets_with_tag(TAG_RELAYS)
            .unwrap_or_default()
            .into_iter()
            .map(worker::WebSocket::from)
            .filter_map(|ws| self.conn_of(&ws))
            .collect()
    }

    /// Tells the Registry which nodes the room pinned, after the current event: the pin is
    /// the room's own decision, the Registry only needs it to call the room back. One request
    /// at a time, the latest pin last (a move right after a pin must not be overtaken by it).
    fn record_pin(this: &Rc<Inner>, pin: Option<&RoomRelays>) {
        let nodes: Vec<String> = pin
            .map(|p| {
                p.nodes
                    .iter()
                    .map(|n| n.node_id.as_str().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        *this.pin_to_record.borrow_mut() = Some(nodes);
        if this.pin_recording.replace(true) {
            return; // the running task sends it next
        }
        let Some(room) = this
            .core
            .borrow()
            .as_ref()
            .map(|r| r.config().name.as_str().to_owned())
        else {
            this.pin_recording.set(false);
            return;
        };
        let inner = Rc::clone(this);
        worker::wasm_bindgen_futures::spawn_local(async move {
            loop {
                let next = inner.pin_to_record.borrow_mut().take();
                let Some(nodes) = next else {
                    break;
                };
                if let Err(e) = registry::pin_room(&inner.env, &room, nodes).await {
                    worker::console_error!(
                        "{}",
                        http::log_line("pin_not_recorded", Some(&room), None, Some(&e.to_string()))
                    );
                }
            }
            inner.pin_recording.set(false);
        });
    }
}
