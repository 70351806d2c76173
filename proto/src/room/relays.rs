//! The room's relays as the room hands them out: the ICE servers and SFU grant of `welcome`,
//! and the `relays-changed` frame that moves connected peers when the relays change
//! (docs/PROTOCOL.md, "Relay failover"). Which nodes those are is decided outside the room
//! ([`crate::relays`]); the room only issues per-peer credentials for them.

use serde::Serialize;

use super::{Output, Room};
use crate::ice::{self, IceConfig, IceServer};
use crate::sfu_token::{SfuConfig, SfuGrant};
use crate::types::{ConnId, Millis, PeerId};

/// The `relays-changed` frame.
#[derive(Serialize)]
struct RelaysChanged<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    reason: &'static str,
    ice_servers: &'a [IceServer],
    #[serde(skip_serializing_if = "Option::is_none")]
    sfu: Option<&'a SfuGrant>,
}

impl Room {
    /// The ICE servers and SFU grant for `peer_id` at `now`, with its own credentials: TURN
    /// username `<expiry>:<user>.<trace>` (the relay's quota key is the user, and the trace
    /// ties the relay's logs to this peer) and a session token naming the peer.
    pub(super) fn relay_grants(
        &self,
        peer_id: &PeerId,
        now: Millis,
    ) -> Option<(Vec<IceServer>, Option<SfuGrant>)> {
        let me = self.peers.get(peer_id)?;
        let turn_user = format!("{}.{}", me.user(), me.rec.trace_id.as_str());
        let ice_servers = ice::ice_servers(&self.cfg.ice, &turn_user, now);
        let sfu = self
            .cfg
            .sfu
            .as_ref()
            .map(|c| c.grant(&self.cfg.name, peer_id, now));
        Some((ice_servers, sfu))
    }

    /// Sets the relays later `welcome`s hand out, telling nobody (the room's first pin, or
    /// the stored pin after a wake-up).
    pub fn set_relays(&mut self, ice: IceConfig, sfu: Option<SfuConfig>) {
        self.cfg.ice = ice;
        self.cfg.sfu = sfu;
    }

    /// The room's relays changed: later `welcome`s hand out `ice`/`sfu`, and each socket in
    /// `notify` that is a connected peer's gets a `relays-changed` frame with its own fresh
    /// credentials. `notify` lists the sockets whose clients said they understand the frame
    /// (`caps=relays`); other clients learn the new relays from their next `welcome`.
    pub fn handle_relays_changed(
        &mut self,
        ice: IceConfig,
        sfu: Option<SfuConfig>,
        reason: &'static str,
        notify: &[ConnId],
        now: Millis,
    ) {
        self.set_relays(ice, sfu);
        for conn in notify {
            let Some(peer_id) = self.by_conn.get(conn).cloned() else {
                continue;
            };
            if self.peers.get(&peer_id).and_then(|p| p.conn()) != Some(*conn) {
                continue;
            }
            let Some((ice_servers, sfu)) = self.relay_grants(&peer_id, now) else {
                continue;
            };
            let frame = RelaysChanged {
                ty: "relays-changed",
                reason,
                ice_servers: &ice_servers,
                sfu: sfu.as_ref(),
            };
            let Ok(text) = serde_json::to_string(&frame) else {
                continue;
            };
            self.out.push(Output::Send { conn: *conn, text });
            self.counters.frames_out += 1;
            self.counters_dirty = true;
        }
        self.log("relays_changed", None, Some(reason));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::super::*;
    use crate::sfu_token;

    fn cfg() -> RoomConfig {
        RoomConfig {
            name: RoomName::parse("lobby").unwrap(),
            limits: Limits::default(),
            ice: IceConfig {
                stun_urls: vec!["stun:old:3478".into()],
                turn_urls: vec!["turn:old:3478".into()],
                turn_secret: Some("secret".into()),
                ttl_s: 600,
            },
            sfu: SfuConfig::new(&["http://old:1".into()], Some("secret"), 600),
        }
    }

    fn join(room: &mut Room, conn: u64, n: u8) -> PeerId {
        room.handle_join(
            Join {
                conn: ConnId(conn),
                meta: Meta::empty(),
                resume: None,
                fresh_peer: PeerId::from_random([n; 8]),
                fresh_token: ResumeToken::from_random([n; 16]),
                fresh_trace: TraceId::from_random([n; 8]),
                user: None,
                reads_acked: false,
                presence_off: false,
            },
            Millis(1_000),
        );
        room.peer_of(ConnId(conn)).unwrap().clone()
    }

    fn sent_to(out: &[Output], conn: u64) -> Vec<serde_json::Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn: c, text } if c.0 == conn => {
                    Some(serde_json::from_str(text).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn connected_peers_that_asked_get_their_own_fresh_relays_and_welcomes_follow() {
        let mut room = Room::new(cfg());
        let a = join(&mut room, 1, 1);
        let _b = join(&mut room, 2, 2);
        room.drain_outputs();
        let ice = IceConfig {
            stun_urls: vec!["stun:new:3478".into()],
            turn_urls: vec!["turn:new:3478".into()],
            ..cfg().ice
        };
        let sfu = SfuConfig::new(&["http://new:1".into()], Some("secret"), 600);
        // Conn 2 did not ask for the frame; conn 9 belongs to nobody.
        room.handle_relays_changed(
            ice,
            sfu,
            "node_lost",
            &[ConnId(1), ConnId(9)],
            Millis(2_000),
        );
        let out = room.drain_outputs();
        let to_a = sent_to(&out, 1);
        assert_eq!(to_a.len(), 1);
        let f = &to_a[0];
        assert_eq!(f["type"], "relays-changed");
        assert_eq!(f["reason"], "node_lost");
        assert_eq!(f["ice_servers"][0]["urls"][0], "stun:new:3478");
        assert_eq!(f["ice_servers"][1]["urls"][0], "turn:new:3478");
        let username = f["ice_servers"][1]["username"].as_str().unwrap();
        assert!(username.ends_with(&format!(":{a}.{}", room.trace_of(&a).unwrap().as_str())));
        assert_eq!(f["sfu"]["url"], "http://new:1/v1/sessions");
        let claims = sfu_token::verify(
            b"secret",
            f["sfu"]["token"].as_str().unwrap(),
            Millis(2_000),
        )
        .unwrap();
        assert_eq!(claims.peer_id, a);
        assert!(sent_to(&out, 2).is_empty());
        assert!(sent_to(&out, 9).is_empty());
        // A later welcome hands out the new relays too.
        join(&mut room, 3, 3);
        let welcome = &sent_to(&room.drain_outputs(), 3)[0];
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["ice_servers"][0]["urls"][0], "stun:new:3478");
        assert_eq!(welcome["sfu"]["url"], "http://new:1/v1/sessions");
    }

    #[test]
    fn without_an_sfu_the_frame_has_none_and_away_peers_get_nothing() {
        let mut room = Room::new(cfg());
        join(&mut room, 1, 1);
        room.handle_close(ConnId(1), false, Millis(1_500));
        room.drain_outputs();
        room.handle_relays_changed(cfg().ice, None, "no_nodes", &[ConnId(1)], Millis(2_000));
        assert!(sent_to(&room.drain_outputs(), 1).is_empty());
        join(&mut room, 2, 2);
        let welcome = &sent_to(&room.drain_outputs(), 2)[0];
        assert!(welcome.get("sfu").is_none());
    }
}
