//! A room's relays: which registered relay nodes a room hands to its peers, and when it moves.
//!
//! A room pins up to [`ROOM_NODES`] nodes of the registry ([`crate::registry`]) while it lives:
//! every peer of the room gets their STUN/TURN URLs in `welcome.ice_servers`, and the first of
//! them that runs an SFU is the room's SFU node (`welcome.sfu`), so every peer of the room meets
//! on one node. The pin is kept as long as its nodes are selectable (lease running, not
//! draining): a node that gets busier does not move a room, only one that dies or drains does.
//! [`repin`] is the whole decision, fed the registry's records and the time; the Worker's room
//! object stores the result ([`RoomRelays`]) so it survives hibernation and restarts.

use serde::{Deserialize, Serialize};

use crate::ice::IceConfig;
use crate::registry::{self, Dice, NodeId, NodeRecord, NodeUrls, Region};
use crate::sfu_token::SfuConfig;
use crate::types::Millis;

/// How many nodes a room pins: two, so a browser has a second TURN server to fall back to.
pub const ROOM_NODES: usize = 2;

/// One pinned node: its id and the URLs it announced when it was pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedNode {
    /// The node.
    pub node_id: NodeId,
    /// Its public URLs.
    pub urls: NodeUrls,
}

impl PinnedNode {
    fn of(rec: &NodeRecord) -> PinnedNode {
        PinnedNode {
            node_id: rec.node_id().clone(),
            urls: rec.heartbeat.urls.clone(),
        }
    }
}

/// The nodes a room hands out, as stored in the room's storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRelays {
    /// The region the nodes were chosen for (the region of the join that made the first pin).
    pub region: Option<Region>,
    /// The pinned nodes, best first (at most [`ROOM_NODES`]).
    pub nodes: Vec<PinnedNode>,
    /// The room's SFU node, if any pinned node runs an SFU.
    pub sfu: Option<NodeId>,
}

/// Why a room's relays changed (the `reason` of the `relays-changed` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// A pinned node's lease ran out (it stopped sending heartbeats).
    NodeLost,
    /// A pinned node is draining.
    NodeDraining,
    /// The registry has no live node any more: the room fell back to the static configuration.
    NoNodes,
    /// The registry had no live node when the room pinned; now it has.
    NodesAvailable,
}

impl MoveReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::NodeLost => "node_lost",
            MoveReason::NodeDraining => "node_draining",
            MoveReason::NoNodes => "no_nodes",
            MoveReason::NodesAvailable => "nodes_available",
        }
    }
}

/// The outcome of [`repin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repin {
    /// Nothing to change (also: no pin and still no live node).
    Keep,
    /// The room's first pin: no peer was given registry nodes before, nobody needs telling.
    First(RoomRelays),
    /// The pin changed: store it and tell the connected peers.
    Moved(Option<RoomRelays>, MoveReason),
}

impl RoomRelays {
    /// The pinned node `id`, if pinned.
    pub fn node(&self, id: &NodeId) -> Option<&PinnedNode> {
        self.nodes.iter().find(|n| &n.node_id == id)
    }

    /// The SFU node's session base URL.
    pub fn sfu_url(&self) -> Option<&str> {
        let id = self.sfu.as_ref()?;
        self.node(id)?.urls.sfu.as_deref()
    }

    /// `base` with the pinned nodes' STUN and TURN URLs instead of the static ones
    /// (secret and lifetime stay).
    pub fn ice(&self, base: &IceConfig) -> IceConfig {
        IceConfig {
            stun_urls: self
                .nodes
                .iter()
                .flat_map(|n| n.urls.stun.iter().cloned())
                .collect(),
            turn_urls: self
                .nodes
                .iter()
                .flat_map(|n| n.urls.turn.iter().cloned())
                .collect(),
            ..base.clone()
        }
    }

    /// The SFU grant configuration: the pinned SFU node with the secret and lifetime of
    /// `base`; `base` itself (`SFU_URLS`) when no pinned node runs an SFU. `secret` is the
    /// TURN secret the relays share; without it there is no SFU grant at all.
    pub fn sfu_config(
        &self,
        base: Option<&SfuConfig>,
        secret: Option<&str>,
        ttl_s: u64,
    ) -> Option<SfuConfig> {
        match self.sfu_url() {
            Some(url) => SfuConfig::new(&[url.to_owned()], secret, ttl_s),
            None => base.cloned(),
        }
    }
}

/// Decides the room's relays at `now` from the registry's `records`.
///
/// - No pin yet: [`ROOM_NODES`] selectable nodes for `region` drawn by [`registry::select`]
///   (same region first, weighted by free capacity), the SFU node the first of them with an
///   SFU URL. No selectable node: no pin.
/// - A pin whose nodes are all selectable: kept.
/// - A pinned node that lapsed or drains: the surviving nodes stay, others drawn the same way
///   fill up;
///   the SFU node stays if it survived, else the first node of the new pin with an SFU URL.
/// - No selectable node at all: the pin is dropped (the room falls back to its static
///   configuration).
pub fn repin(
    current: Option<&RoomRelays>,
    records: &[NodeRecord],
    region: Option<&Region>,
    now: Millis,
    dice: &mut Dice,
) -> Repin {
    let selectable = |id: &NodeId| {
        records
            .iter()
            .any(|r| r.node_id() == id && r.selectable(now))
    };
    let region = current.map_or(region, |c| c.region.as_ref());
    // Enough candidates to fill a pin whatever survives of it.
    let ranked = registry::select(records, region, 2 * ROOM_NODES, now, dice);
    let Some(current) = current else {
        if ranked.is_empty() {
            return Repin::Keep;
        }
        return Repin::First(pin_from(region.cloned(), Vec::new(), None, &ranked));
    };
    let lost: Vec<&PinnedNode> = current
        .nodes
        .iter()
        .filter(|n| !selectable(&n.node_id))
        .collect();
    if lost.is_empty() {
        return Repin::Keep;
    }
    if ranked.is_empty() {
        return Repin::Moved(None, MoveReason::NoNodes);
    }
    // A lapsed lease is a death; a node still in the records with a running lease drains.
    let reason = if lost.iter().any(|n| {
        !records
            .iter()
            .any(|r| r.node_id() == &n.node_id && r.lease_until > now)
    }) {
        MoveReason::NodeLost
    } else {
        MoveReason::NodeDraining
    };
    let survivors: Vec<PinnedNode> = current
        .nodes
        .iter()
        .filter(|n| selectable(&n.node_id))
        .cloned()
        .collect();
    let sfu = current
        .sfu
        .clone()
        .filter(|id| survivors.iter().any(|n| &n.node_id == id));
    Repin::Moved(
        Some(pin_from(current.region.clone(), survivors, sfu, &ranked)),
        reason,
    )
}

/// A pin of `kept` filled up from `ranked` (in its order), the SFU node `sfu` or the first with an SFU URL.
fn pin_from(
    region: Option<Region>,
    kept: Vec<PinnedNode>,
    sfu: Option<NodeId>,
    ranked: &[&NodeRecord],
) -> RoomRelays {
    let mut nodes = kept;
    for rec in ranked {
        if nodes.len() >= ROOM_NODES {
            break;
        }
        if nodes.iter().all(|n| n.node_id != *rec.node_id()) {
            nodes.push(PinnedNode::of(rec));
        }
    }
    let sfu = sfu.or_else(|| {
        nodes
            .iter()
            .find(|n| n.urls.sfu.is_some())
            .map(|n| n.node_id.clone())
    });
    RoomRelays { region, nodes, sfu }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::registry::{Heartbeat, NodeLoad};

    fn rec(id: &str, region: &str, cpu: u32, sfu: bool, draining: bool, lease: u64) -> NodeRecord {
        NodeRecord {
            heartbeat: Heartbeat {
                node_id: NodeId::parse(id).unwrap(),
                region: Region::parse(region).unwrap(),
                urls: NodeUrls {
                    stun: vec![format!("stun:{id}:3478")],
                    turn: vec![format!("turn:{id}:3478?transport=udp")],
                    sfu: sfu.then(|| format!("http://{id}:3480")),
                },
                load: NodeLoad {
                    cpu_percent: cpu,
                    cores: 1,
                    ..NodeLoad::default()
                },
                draining,
            },
            first_seen: Millis(0),
            last_seen: Millis(0),
            last_signed: Millis(0),
            lease_until: Millis(lease),
            transport: crate::registry::Transport::Http,
        }
    }

    fn ids(r: &RoomRelays) -> Vec<&str> {
        r.nodes.iter().map(|n| n.node_id.as_str()).collect()
    }

    fn d() -> Dice {
        Dice::new(7)
    }

    fn eu() -> Region {
        Region::parse("eu").unwrap()
    }

    #[test]
    fn a_first_pin_takes_two_nodes_of_the_region_and_the_first_sfu() {
        // eu-full has no free capacity: it comes after every node with some.
        let records = vec![
            rec("eu-busy", "eu", 100, true, false, 10_000),
            rec("eu-idle", "eu", 5, false, false, 10_000),
            rec("us-idle", "us", 0, true, false, 10_000),
        ];
        let Repin::First(pin) = repin(None, &records, Some(&eu()), Millis(1), &mut d()) else {
            panic!("no first pin");
        };
        assert_eq!(ids(&pin), ["eu-idle", "eu-busy"]);
        assert_eq!(pin.sfu.as_ref().map(NodeId::as_str), Some("eu-busy"));
        assert_eq!(pin.sfu_url(), Some("http://eu-busy:3480"));
        let ice = pin.ice(&IceConfig {
            stun_urls: vec!["stun:static:3478".into()],
            turn_urls: vec![],
            turn_secret: Some("s".into()),
            ttl_s: 60,
        });
        assert_eq!(ice.stun_urls, ["stun:eu-idle:3478", "stun:eu-busy:3478"]);
        assert_eq!(ice.turn_secret.as_deref(), Some("s"));
        let sfu = pin.sfu_config(None, Some("s"), 60).unwrap();
        assert_eq!(sfu.urls, ["http://eu-busy:3480"]);
    }

    #[test]
    fn without_live_nodes_there_is_no_pin() {
        let records = vec![
            rec("gone", "eu", 0, true, false, 5),
            rec("drain", "eu", 0, true, true, 10_000),
        ];
        assert_eq!(
            repin(None, &records, Some(&eu()), Millis(5), &mut d()),
            Repin::Keep
        );
        assert_eq!(repin(None, &[], None, Millis(5), &mut d()), Repin::Keep);
    }

    #[test]
    fn a_pin_holds_while_its_nodes_live_even_when_better_ones_appear() {
        let mut records = vec![
            rec("a", "eu", 50, true, false, 10_000),
            rec("b", "eu", 50, true, false, 10_000),
        ];
        let Repin::First(pin) = repin(None, &records, Some(&eu()), Millis(1), &mut d()) else {
            panic!();
        };
        records.push(rec("c", "eu", 0, true, false, 10_000));
        assert_eq!(
            repin(Some(&pin), &records, None, Millis(2), &mut d()),
            Repin::Keep
        );
    }

    #[test]
    fn a_lapsed_sfu_node_moves_the_room_and_the_survivor_stays() {
        let records = vec![
            rec("a", "eu", 0, true, false, 1_000),
            rec("b", "eu", 10, true, false, 10_000),
            rec("c", "eu", 20, true, false, 10_000),
            rec("far", "us", 0, true, false, 10_000),
        ];
        let pin = RoomRelays {
            region: Some(eu()),
            nodes: vec![PinnedNode::of(&records[0]), PinnedNode::of(&records[1])],
            sfu: Some(NodeId::parse("a").unwrap()),
        };
        assert_eq!(pin.sfu_url(), Some("http://a:3480"));
        for seed in 0..50 {
            // The region of the pin holds even when the check itself carries none: c (the
            // region's only other node) fills up, never the idler far node.
            let Repin::Moved(Some(moved), why) = repin(
                Some(&pin),
                &records,
                None,
                Millis(1_000),
                &mut Dice::new(seed),
            ) else {
                panic!("did not move");
            };
            assert_eq!(why, MoveReason::NodeLost);
            assert_eq!(ids(&moved), ["b", "c"]);
            assert_eq!(moved.sfu.as_ref().map(NodeId::as_str), Some("b"));
            assert_eq!(moved.region, Some(eu()));
        }
    }

    #[test]
    fn first_pins_spread_over_equally_loaded_nodes() {
        let records = vec![
            rec("a", "eu", 20, true, false, 10_000),
            rec("b", "eu", 20, true, false, 10_000),
            rec("c", "eu", 20, true, false, 10_000),
        ];
        let mut sfu_on = std::collections::BTreeMap::new();
        let mut dice = Dice::new(42);
        for _ in 0..300 {
            let Repin::First(pin) = repin(None, &records, Some(&eu()), Millis(1), &mut dice) else {
                panic!();
            };
            assert_eq!(pin.nodes.len(), 2);
            assert_ne!(pin.nodes[0].node_id, pin.nodes[1].node_id);
            *sfu_on.entry(pin.sfu.unwrap().to_string()).or_insert(0) += 1;
        }
        // 100 each expected; every node takes a fair share of the rooms' SFU sessions.
        assert_eq!(sfu_on.len(), 3, "{sfu_on:?}");
        assert!(sfu_on.values().all(|&n| n > 60), "{sfu_on:?}");
    }

    #[test]
    fn losing_the_other_node_keeps_the_sfu_node() {
        let records = vec![
            rec("a", "eu", 0, true, false, 10_000),
            rec("b", "eu", 10, true, true, 10_000),
            rec("c", "eu", 20, false, false, 10_000),
        ];
        let pin = RoomRelays {
            region: Some(eu()),
            nodes: vec![PinnedNode::of(&records[0]), PinnedNode::of(&records[1])],
            sfu: Some(NodeId::parse("a").unwrap()),
        };
        let Repin::Moved(Some(moved), why) = repin(Some(&pin), &records, None, Millis(5), &mut d())
        else {
            panic!();
        };
        assert_eq!(why, MoveReason::NodeDraining);
        assert_eq!(ids(&moved), ["a", "c"]);
        assert_eq!(moved.sfu.as_ref().map(NodeId::as_str), Some("a"));
    }

    #[test]
    fn a_removed_record_counts_as_lost_and_no_nodes_drops_the_pin() {
        let records = vec![rec("a", "eu", 0, true, false, 10_000)];
        let Repin::First(pin) = repin(None, &records, Some(&eu()), Millis(1), &mut d()) else {
            panic!();
        };
        assert_eq!(
            repin(Some(&pin), &[], None, Millis(2), &mut d()),
            Repin::Moved(None, MoveReason::NoNodes)
        );
        let other = vec![rec("z", "us", 0, false, false, 10_000)];
        let Repin::Moved(Some(moved), MoveReason::NodeLost) =
            repin(Some(&pin), &other, None, Millis(2), &mut d())
        else {
            panic!();
        };
        assert_eq!(ids(&moved), ["z"]);
        assert_eq!(moved.sfu, None);
        let base = SfuConfig::new(&["http://static:1".into()], Some("s"), 60);
        assert_eq!(moved.sfu_config(base.as_ref(), Some("s"), 60), base);
    }

    #[test]
    fn the_pin_survives_a_round_trip_through_storage() {
        let records = vec![rec("a", "eu", 0, true, false, 10_000)];
        let Repin::First(pin) = repin(None, &records, Some(&eu()), Millis(1), &mut d()) else {
            panic!();
        };
        let text = serde_json::to_string(&pin).unwrap();
        let back: RoomRelays = serde_json::from_str(&text).unwrap();
        assert_eq!(back, pin);
    }
}
