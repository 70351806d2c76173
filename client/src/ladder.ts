/**
 * The fallback ladder as pure functions: which rungs exist, which are usable
 * with the ICE servers at hand, where a pair of peers starts and where it goes
 * next. `peer.ts` owns the timers and the RTCPeerConnections; this module only
 * decides, so it can be unit-tested without a browser.
 */
import type { IceServer } from "./protocol.js";

/** A rung of the ladder, best first. */
export type Path = "p2p" | "turn" | "sfu" | "websocket";

interface Rung {
  path: Path;
  /**
   * The RTCConfiguration for this rung, `null` when the rung cannot be used
   * with these ICE servers, or `"no-rtc"` for the WebSocket rung.
   */
  configure(iceServers: readonly IceServer[]): RTCConfiguration | null | "no-rtc";
}

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

/**
 * The ladder, best rung first. A new rung (the relay's server-side peer,
 * "sfu") is added by giving it an entry here that returns a configuration once
 * the relay offers one; today no relay does, so it is never usable.
 */
const RUNGS: readonly Rung[] = [
  {
    path: "p2p",
    // Direct: host and STUN-reflexive candidates only, so a working pair is really peer-to-peer.
    configure: (iceServers) => ({ iceServers: filterIceServers(iceServers, ["stun", "stuns"]), iceTransportPolicy: "all" }),
  },
  {
    path: "turn",
    configure: (iceServers) => {
      const turn = filterIceServers(iceServers, ["turn", "turns"]).filter(
        (server) => server.username !== undefined && server.credential !== undefined,
      );
      // "relay" policy: only TURN-relayed candidates, so this rung never silently uses a direct pair.
      return turn.length > 0 ? { iceServers: turn, iceTransportPolicy: "relay" } : null;
    },
  },
  { path: "sfu", configure: () => null },
  { path: "websocket", configure: () => "no-rtc" },
];

export const PATHS: readonly Path[] = RUNGS.map((rung) => rung.path);

export function isPath(value: unknown): value is Path {
  return typeof value === "string" && (PATHS as readonly string[]).includes(value);
}

export function rank(path: Path): number {
  return PATHS.indexOf(path);
}

/** The RTCConfiguration of an RTC rung; `null` for the WebSocket rung or an unusable rung. */
export function rtcConfiguration(path: Path, iceServers: readonly IceServer[]): RTCConfiguration | null {
  const rung = RUNGS.find((r) => r.path === path);
  const config = rung?.configure(iceServers) ?? null;
  return config === "no-rtc" ? null : config;
}

/** The rungs usable with these ICE servers, best first (the WebSocket rung always is). */
export function availablePaths(iceServers: readonly IceServer[], rtcSupported = true): Path[] {
  return RUNGS.filter((rung) => {
    const config = rung.configure(iceServers);
    return config === "no-rtc" || (rtcSupported && config !== null);
  }).map((rung) => rung.path);
}

/**
 * Where a pair starts: the best available rung, or with a forced rung (by
 * either peer) the worse of the two forced rungs, since a peer behind a
 * strict firewall cannot use anything better than what it forced. A forced
 * rung that is not available falls to the next available one below it.
 */
export function startPath(available: readonly Path[], forcedA: Path | null, forcedB: Path | null): Path {
  const floor = Math.max(forcedA === null ? 0 : rank(forcedA), forcedB === null ? 0 : rank(forcedB));
  return available.find((path) => rank(path) >= floor) ?? "websocket";
}

/** The next available rung below `current`, or `null` at the bottom. */
export function lowerPath(available: readonly Path[], current: Path): Path | null {
  return available.find((path) => rank(path) > rank(current)) ?? null;
}
