/**
 * The public API: `Switchboard.join(url, roomName, options)` resolves to a
 * `Room`, which ties the signaling session (signaling.ts) to one `PeerLink`
 * per remote peer (peer.ts) and keeps TURN credentials fresh.
 */
import { Clock, Timer, systemClock } from "./clock.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError } from "./errors.js";
import { isPath, type Path } from "./ladder.js";
import { PeerLink, defaultLadderOptions, isInternalPayload, type LadderOptions, type LinkState, type PeerLinkHost } from "./peer.js";
import type { IceServer, PeerLeftReason, RelaysChangedFrame, SequencedFrame, WelcomeFrame } from "./protocol.js";
import { SfuSession, defaultSfuOptions, isSfuGrant, type LocalTrack, type SfuGrant, type SfuState } from "./sfu.js";
import { simulcastEncodings, type Simulcast } from "./simulcast.js";
import { SignalingConnection, type SignalingDiagnostics, type SignalingOptions, type SignalingState, type TokenSource } from "./signaling.js";

export { SwitchboardError } from "./errors.js";
export type { ErrorCode, ServerErrorCode, ClientErrorCode } from "./errors.js";
export type { Path, Rung, RtcMode, Target } from "./ladder.js";
export { PATHS, RUNGS, availablePaths, rtcConfiguration, startTarget, lowerRung, upgradeTarget } from "./ladder.js";
export type { LinkState, LadderOptions } from "./peer.js";
export type { SfuGrant, SfuState } from "./sfu.js";
export { defaultLayersFor, defaultSimulcastLayers, simulcastEncodings } from "./simulcast.js";
export type { Simulcast, SimulcastLayer } from "./simulcast.js";
export type { IceServer, PeerLeftReason } from "./protocol.js";
export { SignalingConnection, backoffDelay } from "./signaling.js";
export type {
  SignalingState,
  SignalingOptions,
  SignalingDiagnostics,
  WebSocketLike,
  WebSocketFactory,
  BackoffOptions,
  TokenSource,
} from "./signaling.js";
export type { Clock } from "./clock.js";

export interface JoinOptions {
  /**
   * HS256 JWT, when the Worker requires one: a string, or a function returning
   * (a promise of) a fresh one, called before every (re)connect and TURN
   * credential refresh. On a 401 the function is asked once more; a second
   * refusal (or any refusal of a fixed token) ends the session with
   * `unauthorized`.
   */
  token?: TokenSource;
  /** Describes this peer to the others (JSON, at most 1 KiB). */
  meta?: unknown;
  /** Pin the pair to one rung ("p2p" | "turn" | "websocket"); `null`/absent lets the ladder choose. */
  forcePath?: Path | null;
  /** Ladder timing: `rungTimeoutMs`, `upgradeIntervalMs`, `iceGraceMs`, `maxDataChannelBuffer`. */
  ladder?: Partial<LadderOptions>;
  /** Signaling tuning: backoff, give-up time, outbox bounds, ack cadence, connect timeout; and injection points for tests. */
  signaling?: Omit<SignalingOptions, "url" | "token" | "meta" | "fetch" | "presence">;
  /**
   * On `pagehide` (a reload, a navigation, a closed tab) send `leave`, so the
   * others see `peer-left` `leave` at once instead of a ghost peer for the
   * resume window. Default `true`; a reloaded page joins as a new peer.
   */
  leaveOnPageHide?: boolean;
  /**
   * Simulcast of video tracks on the `sfu` rung, for every `addTrack` that does not say
   * otherwise: `true` sends `defaultSimulcastLayers` (rids `q`/`h`/`f` at 1/4, 1/2 and full
   * resolution, capped at 150 kbit/s, 500 kbit/s and 1.5 Mbit/s from a 720p source; `h`/`f`
   * only from a source below 960×540, one encoding below 480×270, caps by each layer's size:
   * `defaultLayersFor`), an array sends those layers,
   * `false` (the default) one encoding. The relay forwards each subscriber one layer, picked from
   * that subscriber's bandwidth estimate. Pair connections (`p2p`/`turn`) always send one encoding.
   */
  simulcast?: Simulcast;
  /** Creates the RTCPeerConnection for a rung (defaults to `new RTCPeerConnection(config)`). */
  createPeerConnection?: (config: RTCConfiguration) => RTCPeerConnection;
  /** Used to refresh TURN credentials from `/v1/ice-servers`. */
  fetch?: typeof fetch;
}

/** The second argument of `room.addTrack(track, options)`. */
export interface TrackOptions {
  /** The streams the track belongs to (what the remote `track` event's `streams` are made from). */
  streams?: MediaStream[];
  /** Simulcast of this track on the `sfu` rung; default: the room's `simulcast` option. */
  simulcast?: Simulcast;
}

export interface RoomDiagnostics {
  room: string;
  traceId: string | undefined;
  signaling: SignalingDiagnostics;
  forcedPath: Path | null;
  peers: Array<{ peerId: string; path: Path | null; state: LinkState; connections: number; unacknowledged: number }>;
  /** How many `error` events were emitted, by code. */
  errors: Record<string, number>;
}

export interface PeerSummary {
  peerId: string;
  meta: unknown;
  path: Path | null;
  state: LinkState;
}

export interface RoomEvents {
  /** A peer arrived after this client joined (those present at join are in `room.peers`). */
  "peer-joined": { peerId: string; meta: unknown };
  "peer-left": { peerId: string; reason: PeerLeftReason };
  /** An app-level signal payload from a peer (SDK-internal `{"sb":"rtc"}` payloads never surface). */
  signal: { from: string; payload: unknown };
  /** The state of the pair's current rung. */
  "connection-state": { peerId: string; state: LinkState; path: Path };
  /** The pair moved to another rung of the ladder. */
  path: { peerId: string; path: Path; previous: Path | null };
  /** App data from a peer, whichever path it took: exactly once and in order per sender (see `send`). */
  data: { from: string; data: unknown; via: "datachannel" | "relay" | "sfu" };
  track: { peerId: string; track: MediaStreamTrack; streams: readonly MediaStream[] };
  /** The signaling session: connecting, open (resumed or not), reconnecting (with the backoff delay), closed. */
  "signaling-state": { state: SignalingState; attempt: number; delayMs?: number; reason?: string; resumed?: boolean };
  /**
   * The room moved its relays (a relay node died or drains; `relays-changed`, opt-in with `caps=relays`): the new ICE
   * servers are applied (connections relaying through TURN restart ICE) and, when the room's SFU
   * node changed, pairs on the `sfu` rung move to a session on the new node.
   */
  relays: { reason: string; sfuMoved: boolean };
  error: SwitchboardError;
}

const MAX_TIMER_MS = 2 ** 31 - 1;

const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** `http(s)://host[/prefix]` or `ws(s)://…` → `ws(s)://host[/prefix]/v1/rooms/<room>`. */
export function roomUrl(base: string, roomName: string): string {
  const url = new URL(base);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  const prefix = url.pathname.replace(/\/+$/, "");
  url.pathname = `${prefix}/v1/rooms/${roomName}`;
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** Seconds since the epoch at which the TURN credentials in `iceServers` expire (username "<expiry>:<id>"). */
export function turnExpiry(iceServers: readonly IceServer[]): number | null {
  let earliest: number | null = null;
  for (const server of iceServers) {
    const match = /^(\d+):/.exec(server.username ?? "");
    if (!match) continue;
    const expiry = Number(match[1]);
    if (earliest === null || expiry < earliest) earliest = expiry;
  }
  return earliest;
}

export class Room {
  readonly roomName: string;
  private readonly events: Emitter<RoomEvents>;
  private readonly signaling: SignalingConnection;
  private readonly links = new Map<string, PeerLink>();
  private readonly tracks: LocalTrack[] = [];
  private readonly clock: Clock;
  private readonly ladder: LadderOptions;
  private readonly iceRefreshTimer: Timer;
  private forced: Path | null;
  private iceServersValue: IceServer[] = [];
  private sfuGrant: SfuGrant | null = null;
  private sfuSession: SfuSession | null = null;
  /** Closers of SFU sessions replaced by `relays-changed`, run once the new session is open. */
  private readonly retiring: Array<() => void> = [];
  /**
   * Tracks the relay forwards, by publisher: a track can arrive before the pair with its
   * publisher exists (the session is the page's, not the pair's), and a pair made again (a
   * resumed peer) gets the publisher's live tracks too.
   */
  private readonly sfuTracks = new Map<string, Array<{ track: MediaStreamTrack; streams: readonly MediaStream[] }>>();
  private readonly sfuRefreshTimer: Timer;
  private left = false;
  private onPageHide: (() => void) | undefined;
  private readonly errorCounts = new Map<string, number>();

  /** Use `Switchboard.join`. */
  constructor(
    private readonly url: string,
    roomName: string,
    private readonly options: JoinOptions,
  ) {
    this.roomName = roomName;
    this.clock = options.signaling?.clock ?? systemClock;
    this.ladder = { ...defaultLadderOptions, ...options.ladder };
    this.forced = options.forcePath ?? null;
    this.iceRefreshTimer = new Timer(this.clock);
    this.sfuRefreshTimer = new Timer(this.clock);
    this.events = new Emitter<RoomEvents>((error, name) => {
      const wrapped = new SwitchboardError("listener", `a "${String(name)}" listener threw`, { cause: error });
      if (name !== "error" && this.events.listenerCount("error") > 0) this.events.emit("error", wrapped);
      else console.error(wrapped);
    });
    const signalingOptions: SignalingOptions = { ...options.signaling, url: roomUrl(url, roomName) };
    if (options.token !== undefined) signalingOptions.token = options.token;
    if (options.meta !== undefined) signalingOptions.meta = options.meta;
    if (options.fetch !== undefined) signalingOptions.fetch = options.fetch;
    if (options.leaveOnPageHide !== false && typeof addEventListener === "function" && typeof document !== "undefined") {
      this.onPageHide = () => this.leave();
      addEventListener("pagehide", this.onPageHide);
    }
    this.signaling = new SignalingConnection(signalingOptions);
    this.signaling.events.on("welcome", ({ frame, previousPeerId }) => this.onWelcome(frame, previousPeerId));
    this.signaling.events.on("frame", (frame) => this.onFrame(frame));
    this.signaling.events.on("relays", (frame) => this.onRelaysChanged(frame));
    this.signaling.events.on("error", (error) => this.emitError(error));
    this.signaling.events.on("state", (event) => {
      if (event.state === "open") return; // reported with `resumed` from onWelcome
      if (event.state === "closed") this.onClosed();
      this.events.emit("signaling-state", event);
    });
  }

  /** @internal */
  async connect(): Promise<void> {
    await this.signaling.connect();
  }

  /** This client's `peer_id` (stable across resumes; new only if a resume failed). */
  get peerId(): string {
    return this.signaling.peerId ?? "";
  }

  get signalingState(): SignalingState {
    return this.signaling.state;
  }

  /** The other peers present, with their current rung and its state. */
  get peers(): PeerSummary[] {
    return [...this.links.values()].map((link) => ({
      peerId: link.peerId,
      meta: link.meta,
      path: link.path,
      state: link.state,
    }));
  }

  get iceServers(): readonly IceServer[] {
    return this.iceServersValue;
  }

  /** This peer's `trace_id` from `welcome` (protocol v1.1): the room logs it with every event about the peer. */
  get traceId(): string | undefined {
    return this.signaling.traceId;
  }

  /**
   * A snapshot for bug reports and support: the signaling session (trace id,
   * protocol revision, seq and cseq positions, outbox, limits), every pair
   * (path, state, connections, unacknowledged messages) and error counts.
   */
  diagnostics(): RoomDiagnostics {
    return {
      room: this.roomName,
      traceId: this.signaling.traceId,
      signaling: this.signaling.diagnostics(),
      forcedPath: this.forced,
      peers: [...this.links.values()].map((link) => ({
        peerId: link.peerId,
        path: link.path,
        state: link.state,
        connections: link.connectionCount,
        unacknowledged: link.unacknowledged,
      })),
      errors: Object.fromEntries(this.errorCounts),
    };
  }

  on<K extends keyof RoomEvents>(name: K, listener: (event: RoomEvents[K]) => void): () => void {
    return this.events.on(name, listener);
  }
  off<K extends keyof RoomEvents>(name: K, listener: (event: RoomEvents[K]) => void): void {
    this.events.off(name, listener);
  }
  once<K extends keyof RoomEvents>(name: K, listener: (event: RoomEvents[K]) => void): () => void {
    return this.events.once(name, listener);
  }

  /** The pair's current rung with `peerId`, or `null` for an unknown peer or before the pair agreed on one. */
  path(peerId: string): Path | null {
    return this.links.get(peerId)?.path ?? null;
  }

  connectionState(peerId: string): LinkState | null {
    return this.links.get(peerId)?.state ?? null;
  }

  /** The pair's current RTCPeerConnection (none on the WebSocket rung), e.g. for `getStats()`. */
  peerConnection(peerId: string): RTCPeerConnection | null {
    return this.links.get(peerId)?.peerConnection ?? null;
  }

  /** The rung this client forces, or `null`. */
  get forcedPath(): Path | null {
    return this.forced;
  }

  /** Forces a rung for every pair (`null` lets the ladder choose again). */
  forcePath(path: Path | null): void {
    if (path !== null && !isPath(path)) throw new SwitchboardError("invalid_data", `unknown path ${String(path)}`);
    if (path === this.forced) return;
    this.forced = path;
    for (const link of this.links.values()) link.forcedChanged();
  }

  /**
   * Sends app data (any JSON value but `null`) to one peer or to all (`"*"`):
   * over the pair's DataChannel when one is usable, as `relay` frames
   * otherwise. Each message is numbered in the pair's stream and kept until
   * the receiver acknowledges it, so it arrives exactly once and in order
   * whatever path switches happen. Resolves once the message is in the
   * stream; rejects with `backpressure` (too many unacknowledged),
   * `payload_too_large` (it would not fit a `relay` frame), `unknown_peer`,
   * `invalid_data` or `closed`.
   */
  send(to: string, data: unknown): Promise<void> {
    if (this.left) return Promise.reject(new SwitchboardError("closed", "the room was left"));
    if (data === null || data === undefined) {
      return Promise.reject(new SwitchboardError("invalid_data", "data must be a JSON value other than null"));
    }
    if (to === "*") return Promise.all([...this.links.values()].map((link) => link.send(data))).then(() => undefined);
    const link = this.links.get(to);
    if (!link) return Promise.reject(new SwitchboardError("unknown_peer", `no peer ${to} in the room`, { peerId: to }));
    return link.send(data);
  }

  /** Sends an app-level signal payload (not `null`; `{"sb":"rtc"}` is reserved) to one peer or all (`"*"`). */
  signal(to: string, payload: unknown): Promise<void> {
    if (payload === null || payload === undefined || isInternalPayload(payload)) {
      return Promise.reject(new SwitchboardError("invalid_data", "signal payloads must be non-null and not SDK-internal"));
    }
    return to === "*"
      ? this.signaling.send({ type: "broadcast", payload })
      : this.signaling.send({ type: "signal", to, payload });
  }

  /**
   * Sends a local track to every peer, now and later, on every RTC rung: `addTrack(track,
   * ...streams)`, or `addTrack(track, { streams, simulcast })` to choose simulcast for this track
   * (on the `sfu` rung; see `JoinOptions.simulcast`). Invalid simulcast layers throw
   * `invalid_data` and the track is not added.
   */
  addTrack(track: MediaStreamTrack, ...streams: MediaStream[]): void;
  addTrack(track: MediaStreamTrack, options: TrackOptions): void;
  addTrack(track: MediaStreamTrack, ...rest: Array<MediaStream | TrackOptions>): void {
    const options = trackOptions(rest);
    const streams = options ? (options.streams ?? []) : (rest as MediaStream[]);
    // The source's size picks the default layers; `getSettings` is what a camera track reports.
    const size = typeof track.getSettings === "function" ? track.getSettings() : {};
    const sendEncodings = simulcastEncodings(track.kind, options?.simulcast ?? this.options.simulcast ?? false, size);
    this.tracks.push({ track, streams, sendEncodings });
    this.sfuSession?.addTrack(track, streams, sendEncodings);
    for (const link of this.links.values()) link.addTrack(track, streams);
  }

  /** Leaves for good: the others receive `peer-left` `leave`. */
  leave(): void {
    if (this.left) return;
    this.signaling.leave();
    this.onClosed();
  }

  /** Drops the signaling socket as a network failure would; the room reconnects and resumes. */
  dropConnection(): void {
    this.signaling.dropConnection();
  }

  private onClosed(): void {
    this.left = true;
    if (this.onPageHide) removeEventListener("pagehide", this.onPageHide);
    this.iceRefreshTimer.clear();
    this.sfuRefreshTimer.clear();
    for (const link of this.links.values()) link.close();
    this.links.clear();
    this.sfuSession?.close();
    for (const retire of this.retiring.splice(0)) retire();
  }

  /** The page's session with the room's relay (the `sfu` rung), if one was started. */
  get sfuState(): SfuState | null {
    return this.sfuSession?.state ?? null;
  }

  /** The RTCPeerConnection to the room's relay, if the `sfu` rung was used. */
  get sfuPeerConnection(): RTCPeerConnection | null {
    return this.sfuSession?.peerConnection ?? null;
  }

  private onWelcome(frame: WelcomeFrame, previousPeerId: string | undefined): void {
    this.setIceServers(frame.ice_servers ?? []);
    // A resume after the room moved its relays names the new SFU node: move there too.
    if (frame.resumed) this.moveSfu(isSfuGrant(frame.sfu) ? frame.sfu : null);
    else this.setSfuGrant(isSfuGrant(frame.sfu) ? frame.sfu : null);
    if (!frame.resumed && previousPeerId !== undefined && this.sfuSession) {
      // A new peer id: the relay session speaks for the old one.
      this.sfuSession.close();
      this.sfuSession = null;
    }
    const present = new Map((frame.peers ?? []).map((peer) => [peer.peer_id, peer.meta] as const));
    if (!frame.resumed && previousPeerId !== undefined) {
      // A failed resume: the others now know this client under a new peer_id, so every pair starts over.
      for (const peerId of [...this.links.keys()]) this.removePeer(peerId, "closed");
    }
    for (const peerId of [...this.links.keys()]) {
      if (!present.has(peerId)) this.removePeer(peerId, "timeout");
    }
    const initial = previousPeerId === undefined;
    for (const [peerId, meta] of present) {
      if (!this.links.has(peerId)) this.addPeer(peerId, meta, !initial);
    }
    const event: RoomEvents["signaling-state"] = { state: "open", attempt: 0, resumed: frame.resumed };
    this.events.emit("signaling-state", event);
  }

  /**
   * `relays-changed`: the room's relay node died or drains. New ICE servers go to every
   * connection at once (TURN connections restart ICE, so they move to the new node before their
   * own consent checks notice). A new SFU node gets a new session; pairs on the `sfu` rung carry
   * their data over `relay` frames until it is proven (make-before-break, the stream resends
   * what is unacknowledged), then the old session is closed.
   */
  private onRelaysChanged(frame: RelaysChangedFrame): void {
    if (this.left) return;
    this.setIceServers(frame.ice_servers);
    const sfuMoved = this.moveSfu(isSfuGrant(frame.sfu) ? frame.sfu : null);
    this.events.emit("relays", { reason: frame.reason, sfuMoved });
  }

  /** Takes `grant`; when it names another node than the page's session, the pairs move there. */
  private moveSfu(grant: SfuGrant | null): boolean {
    const moved = grant?.url !== this.sfuGrant?.url;
    this.setSfuGrant(grant);
    if (moved && this.sfuSession) {
      const old = this.sfuSession;
      this.sfuSession = null;
      if (grant === null) old.close();
      else this.retireSfuSession(old);
      for (const link of this.links.values()) link.onSfuMoved(grant !== null);
    }
    return moved;
  }

  /** Closes a replaced SFU session once the new one is open, or after the rung timeout. */
  private retireSfuSession(old: SfuSession): void {
    const timer = new Timer(this.clock);
    const retire = () => {
      timer.clear();
      old.close();
    };
    timer.set(this.ladder.rungTimeoutMs * 2, retire);
    this.retiring.push(retire);
  }

  private onFrame(frame: SequencedFrame): void {
    switch (frame.type) {
      case "peer-joined":
        if (!this.links.has(frame.peer_id) && frame.peer_id !== this.peerId) this.addPeer(frame.peer_id, frame.meta, true);
        return;
      case "peer-left":
        this.removePeer(frame.peer_id, frame.reason);
        return;
      case "relay": {
        const link = this.links.get(frame.from);
        if (link) link.onRelay(frame.data);
        else this.events.emit("data", { from: frame.from, data: frame.data, via: "relay" });
        return;
      }
      case "signal":
        if (isInternalPayload(frame.payload)) {
          let link = this.links.get(frame.from);
          // A hello can overtake presence after a failed resume; it proves the peer is here.
          if (!link && frame.payload.t === "hello" && frame.from !== this.peerId) link = this.addPeer(frame.from, {}, true);
          link?.onPayload(frame.payload);
        } else {
          this.events.emit("signal", { from: frame.from, payload: frame.payload });
        }
        return;
    }
  }

  private addPeer(peerId: string, meta: unknown, announce: boolean): PeerLink {
    const link = new PeerLink(peerId, meta, this.linkHost());
    this.links.set(peerId, link);
    for (const { track, streams } of this.sfuTracks.get(peerId) ?? []) {
      if (track.readyState !== "ended") link.onSfuTrack(track, streams);
    }
    if (announce) this.events.emit("peer-joined", { peerId, meta });
    link.sendHello();
    return link;
  }

  private removePeer(peerId: string, reason: PeerLeftReason): void {
    const link = this.links.get(peerId);
    if (!link) return;
    link.close();
    this.links.delete(peerId);
    this.events.emit("peer-left", { peerId, reason });
  }

  private linkHost(): PeerLinkHost {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- read by the `open` getter below
    const room = this;
    const create = this.options.createPeerConnection ?? ((config: RTCConfiguration) => new RTCPeerConnection(config));
    return {
      localId: this.peerId,
      clock: this.clock,
      options: this.ladder,
      rtcSupported: this.options.createPeerConnection !== undefined || typeof RTCPeerConnection !== "undefined",
      iceServers: () => this.iceServersValue,
      forced: () => this.forced,
      localTracks: () => this.tracks,
      sendSignal: (to, payload) => {
        this.signaling.send({ type: "signal", to, payload }).catch((error: unknown) => this.emitError(error));
      },
      sendRelay: (to, data) => this.signaling.send({ type: "relay", to, data }),
      relayHasRoom: () => this.signaling.hasRoom(),
      maxRelayBytes: () => this.signaling.maxFrameBytes,
      createPeerConnection: create,
      sfu: {
        available: () => this.sfuGrant !== null,
        ensure: () => this.sfu()?.ensure(),
        get open() {
          return room.sfuSession?.open ?? false;
        },
        send: (to, message) => this.sfuSession?.send(to, message) ?? false,
      },
      onPath: (peerId, path, previous) => this.events.emit("path", { peerId, path, previous }),
      onState: (peerId, state, path) => this.events.emit("connection-state", { peerId, state, path }),
      onData: (from, data, via) => this.events.emit("data", { from, data, via }),
      onTrack: (peerId, track, streams) => this.events.emit("track", { peerId, track, streams }),
      onError: (error) => this.emitError(error),
    };
  }

  /** The page's SFU session, created on first use. */
  private sfu(): SfuSession | null {
    if (this.left || this.sfuGrant === null) return null;
    if (this.sfuSession) return this.sfuSession;
    const create = this.options.createPeerConnection ?? ((config: RTCConfiguration) => new RTCPeerConnection(config));
    const doFetch = this.options.fetch ?? globalThis.fetch.bind(globalThis);
    const session: SfuSession = new SfuSession(
      {
        clock: this.clock,
        createPeerConnection: create,
        fetch: doFetch,
        grant: () => this.sfuGrant,
        localTracks: () => this.tracks,
        onMessage: (from, message) => this.links.get(from)?.onSfuMessage(message),
        onTrack: (from, track, streams) => {
          const live = (this.sfuTracks.get(from) ?? []).filter((t) => t.track.readyState !== "ended");
          live.push({ track, streams });
          this.sfuTracks.set(from, live);
          this.links.get(from)?.onSfuTrack(track, streams);
        },
        onState: (state) => {
          // A new or failed session: the tracks of the old one are gone (a session retired by
          // `relays-changed` closing later must not clear its successor's).
          if (state !== "open" && this.sfuSession === session) this.sfuTracks.clear();
          if (state !== "open" && state !== "failed") return;
          if (state === "open") for (const retire of this.retiring.splice(0)) retire();
          for (const link of this.links.values()) link.onSfuSession(state);
        },
        onError: (error) => this.emitError(error),
      },
      {
        ...defaultSfuOptions,
        // A relay that does not answer, or a path that does not come back, fails the rung in the
        // time the ladder gives any rung.
        requestTimeoutMs: this.ladder.rungTimeoutMs,
        controlTimeoutMs: this.ladder.rungTimeoutMs,
        restartTimeoutMs: this.ladder.rungTimeoutMs,
        restartDelayMs: this.ladder.iceGraceMs,
      },
    );
    this.sfuSession = session;
    return session;
  }

  private setSfuGrant(grant: SfuGrant | null): void {
    this.sfuGrant = grant;
    this.scheduleSfuRefresh();
  }

  /** Renews the SFU token at 80% of its lifetime, so a new session (after a failure) can be made. */
  private scheduleSfuRefresh(): void {
    this.sfuRefreshTimer.clear();
    const grant = this.sfuGrant;
    if (grant === null || this.left) return;
    const dueMs = Math.max(1_000, (grant.expires * 1000 - this.clock.now()) * 0.8);
    if (dueMs > MAX_TIMER_MS) this.sfuRefreshTimer.set(MAX_TIMER_MS, () => this.scheduleSfuRefresh());
    else this.sfuRefreshTimer.set(dueMs, () => void this.refreshSfuToken());
  }

  private async refreshSfuToken(): Promise<void> {
    const current = this.sfuGrant;
    if (current === null) return;
    const doFetch = this.options.fetch ?? globalThis.fetch.bind(globalThis);
    const url = new URL(roomUrl(this.url, this.roomName));
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/\/v1\/rooms\/[^/]*$/, "/v1/sfu-token");
    url.searchParams.set("room", this.roomName);
    url.searchParams.set("sfu_token", current.token);
    try {
      const headers: Record<string, string> = {};
      const source = this.options.token;
      const token = typeof source === "function" ? await source() : source;
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      const response = await doFetch(url.toString(), { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body: unknown = await response.json();
      if (!isSfuGrant(body)) throw new Error("no SFU grant in the answer");
      // A welcome may have replaced the grant meanwhile (a resume); keep the newer one.
      if (!this.left && this.sfuGrant === current) this.setSfuGrant(body);
    } catch (cause) {
      this.emitError(new SwitchboardError("sfu_token", "could not refresh the SFU session token", { cause }));
      if (!this.left && this.sfuGrant === current && current.expires * 1000 > this.clock.now()) {
        this.sfuRefreshTimer.set(30_000, () => void this.refreshSfuToken());
      }
    }
  }

  private setIceServers(iceServers: IceServer[]): void {
    this.iceServersValue = iceServers;
    for (const link of this.links.values()) link.updateIceServers();
    this.scheduleIceRefresh();
  }

  /** TURN credentials expire (`username` "<expiry>:<id>"): fetch new ones when 80 % of their life has passed. */
  private scheduleIceRefresh(): void {
    this.iceRefreshTimer.clear();
    const expiry = turnExpiry(this.iceServersValue);
    if (expiry === null || this.left) return;
    const dueMs = Math.max(1_000, (expiry * 1000 - this.clock.now()) * 0.8);
    // Timers fire at once when given more than 2^31-1 ms; wait in steps for far-off expiries.
    if (dueMs > MAX_TIMER_MS) this.iceRefreshTimer.set(MAX_TIMER_MS, () => this.scheduleIceRefresh());
    else this.iceRefreshTimer.set(dueMs, () => void this.refreshIceServers());
  }

  private async refreshIceServers(): Promise<void> {
    const doFetch = this.options.fetch ?? globalThis.fetch.bind(globalThis);
    const url = new URL(roomUrl(this.url, this.roomName));
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/\/v1\/rooms\/[^/]*$/, "/v1/ice-servers");
    try {
      const headers: Record<string, string> = {};
      const source = this.options.token;
      const token = typeof source === "function" ? await source() : source;
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      const response = await doFetch(url.toString(), { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = (await response.json()) as { iceServers?: IceServer[] };
      if (!Array.isArray(body.iceServers)) throw new Error("no iceServers in the answer");
      if (!this.left) this.setIceServers(body.iceServers);
    } catch (cause) {
      this.emitError(new SwitchboardError("ice_servers", "could not refresh TURN credentials", { cause }));
      // Keep trying while the old credentials may still be valid.
      if (!this.left) this.iceRefreshTimer.set(30_000, () => void this.refreshIceServers());
    }
  }

  private emitError(error: unknown): void {
    const typed =
      error instanceof SwitchboardError ? error : new SwitchboardError("internal", String(error), { cause: error });
    if (typed.traceId === undefined) typed.traceId = this.signaling.traceId;
    this.errorCounts.set(typed.code, (this.errorCounts.get(typed.code) ?? 0) + 1);
    if (this.events.listenerCount("error") > 0) this.events.emit("error", typed);
    else console.warn(typed);
  }
}

/** Joins `roomName` on the Switchboard Worker at `url` (http(s) or ws(s) base URL). */
async function join(url: string, roomName: string, options: JoinOptions = {}): Promise<Room> {
  if (!ROOM_NAME.test(roomName)) {
    throw new SwitchboardError("invalid_data", "room names match [A-Za-z0-9_-]{1,64}");
  }
  const room = new Room(url, roomName, options);
  await room.connect();
  return room;
}

export const Switchboard = { join };
export default Switchboard;

/** `addTrack`'s options object, when that is what it was given (a `MediaStream` always has a string `id`). */
function trackOptions(rest: ReadonlyArray<MediaStream | TrackOptions>): TrackOptions | null {
  const [first] = rest;
  if (rest.length !== 1 || typeof first !== "object" || first === null) return null;
  return typeof (first as { id?: unknown }).id === "string" ? null : (first as TrackOptions);
}
