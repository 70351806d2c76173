/**
 * The fallback ladder as pure functions: which rungs exist, which are usable
 * with the ICE servers at hand, where a pair starts and what it tries next.
 * `peer.ts` owns the timers and the RTCPeerConnections; this module only
 * decides, so it can be unit-tested without a browser.
 *
 * Rungs, best first: `rtc` (one RTCPeerConnection per pair with STUN and TURN
 * in one ICE agent, so direct and relayed candidates race and the selected
 * candidate pair says whether the pair is `p2p` or `turn`), `sfu` (the relay's
 * server-side peer, one RTCPeerConnection per page shared by the pairs on it;
 * offered when `welcome.sfu` names the room's relay), `websocket` (`relay`
 * frames over signaling).
 */
import type { IceServer } from "./protocol.js";

/** Where a pair's data and media go, as reported by `room.path()`. */
export type Path = "p2p" | "turn" | "sfu" | "websocket";

/** A rung of the ladder, best first. */
export type Rung = "rtc" | "sfu" | "websocket";

/**
 * What an RTC connection may use: `auto` (STUN and TURN, policy `all`: the
 * ICE agent picks direct when it works, relayed otherwise), `p2p` (STUN only)
 * or `turn` (TURN only, policy `relay`).
 */
export type RtcMode = "auto" | "p2p" | "turn";

export const PATHS: readonly Path[] = ["p2p", "turn", "sfu", "websocket"];
export const RUNGS: readonly Rung[] = ["rtc", "sfu", "websocket"];
export const RTC_MODES: readonly RtcMode[] = ["auto", "p2p", "turn"];

/** What a pair should build: an RTC connection in some mode, or a rung without a connection of its own. */
export type Target = { rung: "rtc"; mode: RtcMode } | { rung: "sfu" } | { rung: "websocket" };

function urlsOf(server: IceServer): string[] {
  return Array.isArray(server.urls) ? server.urls : [server.urls];
}

/** Keeps the entries (and the URLs within them) whose scheme is one of `schemes`. */
export function filterIceServers(iceServers: readonly IceServer[], schemes: readonly string[]): IceServer[] {
  const out: IceServer[] = [];
  for (const server of iceServers) {
    const urls = urlsOf(server).filter((url) => schemes.some((scheme) => url.startsWith(`${scheme}:`)));
    if (urls.length > 0) out.push({ ...server, urls });
  }
  return out;
}

function turnServers(iceServers: readonly IceServer[]): IceServer[] {
  return filterIceServers(iceServers, ["turn", "turns"]).filter(
    (server) => server.username !== undefined && server.credential !== undefined,
  );
}

export function isPath(value: unknown): value is Path {
  return typeof value === "string" && (PATHS as readonly string[]).includes(value);
}

export function isRtcMode(value: unknown): value is RtcMode {
  return typeof value === "string" && (RTC_MODES as readonly string[]).includes(value);
}

export function rank(path: Path): number {
  return PATHS.indexOf(path);
}

/** The RTCConfiguration of an RTC connection in `mode`; `null` when the mode cannot work with these servers. */
export function rtcConfiguration(mode: RtcMode, iceServers: readonly IceServer[]): RTCConfiguration | null {
  switch (mode) {
    case "auto":
      return {
        iceServers: [...filterIceServers(iceServers, ["stun", "stuns"]), ...turnServers(iceServers)],
        iceTransportPolicy: "all",
      };
    case "p2p":
      // Host and STUN-reflexive candidates only, so a working pair is really peer-to-peer.
      return { iceServers: filterIceServers(iceServers, ["stun", "stuns"]), iceTransportPolicy: "all" };
    case "turn": {
      const turn = turnServers(iceServers);
      // "relay" policy: only TURN-relayed candidates, so this mode never silently uses a direct pair.
      return turn.length > 0 ? { iceServers: turn, iceTransportPolicy: "relay" } : null;
    }
  }
}

/**
 * The paths a pair can be on with these ICE servers, best first (the WebSocket
 * rung always is). `sfu`: the room's relay offers a session endpoint
 * (`welcome.sfu`); it needs RTCPeerConnection too.
 */
export function availablePaths(iceServers: readonly IceServer[], rtcSupported = true, sfu = false): Path[] {
  const out: Path[] = [];
  if (rtcSupported) {
    out.push("p2p");
    if (turnServers(iceServers).length > 0) out.push("turn");
  }
  if (rtcSupported && sfu) out.push("sfu");
  out.push("websocket");
  return out;
}

/**
 * What a pair builds first. Without forcing: the `rtc` rung in `auto` mode.
 * With a forced path (by either peer) the worse of the two forced paths wins,
 * since a peer behind a strict firewall cannot use anything better than what
 * it forced; a forced path that is not available falls to the next available
 * one below it.
 */
export function startTarget(
  iceServers: readonly IceServer[],
  rtcSupported: boolean,
  forcedA: Path | null,
  forcedB: Path | null,
  sfu = false,
): Target {
  const available = availablePaths(iceServers, rtcSupported, sfu);
  if (forcedA === null && forcedB === null) return targetOf(available[0] ?? "websocket", false);
  const floor = Math.max(forcedA === null ? 0 : rank(forcedA), forcedB === null ? 0 : rank(forcedB));
  return targetOf(available.find((path) => rank(path) >= floor) ?? "websocket", true);
}

function targetOf(path: Path, forced: boolean): Target {
  switch (path) {
    case "p2p":
      return { rung: "rtc", mode: forced ? "p2p" : "auto" };
    case "turn":
      return { rung: "rtc", mode: "turn" };
    case "sfu":
      return { rung: "sfu" };
    case "websocket":
      return { rung: "websocket" };
  }
}

/** The rung below `rung` that can be used (`sfu`: whether the SFU rung is offered), or `null` at the bottom. */
export function lowerRung(rung: Rung, sfu = false): Rung | null {
  const below = RUNGS.slice(RUNGS.indexOf(rung) + 1);
  return below.find((r) => r !== "sfu" || sfu) ?? null;
}

/**
 * What an upgrade probe builds from where the pair is, or `null` when it is
 * already as good as it gets. From `turn` only a direct connection is an
 * upgrade (STUN-only, so a success is really direct); from below `rtc`, the
 * `rtc` rung in `auto` mode.
 */
export function upgradeTarget(current: Path, rtcSupported: boolean): Target | null {
  if (!rtcSupported || current === "p2p") return null;
  if (current === "turn") return { rung: "rtc", mode: "p2p" };
  return { rung: "rtc", mode: "auto" };
}
