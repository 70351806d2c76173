/**
 * One remote peer as seen from this client: its RTCPeerConnections (perfect
 * negotiation each), the pair's place on the fallback ladder, and the pair's
 * exactly-once data stream (stream.ts).
 *
 * Agreement: the impolite peer of the pair (the greater `peer_id`) is the
 * *controller*. It alone opens and closes connections, each under a fresh
 * `epoch`, with SDK-internal signals (`{"sb":"rtc","t":"open"|"close",…}`);
 * the polite peer (the *follower*) builds and drops its side when told. SDP
 * and ICE payloads carry their connection's epoch. Signals are delivered in
 * order (one `seq` stream per recipient), so no clocks are needed.
 *
 * Make-before-break: a move (an upgrade probe, a forced rung, a replacement)
 * builds a new connection while the current one keeps carrying data and
 * media. A connection becomes *usable* once its DataChannel is open and a
 * probe message made the round trip over it; each end then switches its own
 * sending to it, and the controller closes the older connections. A probe
 * that fails (not usable within `rungTimeoutMs`, or no better than the current
 * path) is closed and leaves the current connection untouched.
 *
 * Data: every `room.send` message carries the pair stream's number and is
 * acknowledged by the receiver; on any change of the path it is sent on, every
 * unacknowledged message is sent again on the new path and the receiver drops
 * duplicates, so `data` events are exactly-once and in order across paths.
 * While no connection is usable, data travels as `relay` frames over the
 * signaling WebSocket, so sending never waits for ICE.
 */
import { Clock, Timer } from "./clock.js";
import { SwitchboardError } from "./errors.js";
import {
  isPath,
  isRtcMode,
  lowerRung,
  rank,
  rtcConfiguration,
  startTarget,
  upgradeTarget,
  type Path,
  type RtcMode,
  type Target,
} from "./ladder.js";
import type { IceServer } from "./protocol.js";
import { ReceiveStream, SendStream, parseEnvelope, type DataEnvelope, type StreamEnvelope } from "./stream.js";

/** The key that marks an SDK-internal signal payload; app payloads must not use `"sb": "rtc"`. */
export const INTERNAL_KEY = "sb";
export const INTERNAL_VALUE = "rtc";

export type RtcPayload =
  | { sb: "rtc"; t: "hello"; link: string; knows: string | null; forced: Path | null }
  | { sb: "rtc"; t: "open"; epoch: string; mode: RtcMode }
  | { sb: "rtc"; t: "close"; epoch: string }
  | { sb: "rtc"; t: "path"; path: Path }
  | { sb: "rtc"; t: "sfu"; on: boolean }
  | { sb: "rtc"; t: "restart"; epoch: string }
  | { sb: "rtc"; t: "sdp"; epoch: string; description: RTCSessionDescriptionInit }
  | { sb: "rtc"; t: "ice"; epoch: string; candidates: RTCIceCandidateInit[] };

export function isInternalPayload(payload: unknown): payload is RtcPayload {
  return (
    typeof payload === "object" &&
    payload !== null &&
    (payload as Record<string, unknown>)[INTERNAL_KEY] === INTERNAL_VALUE
  );
}

export type LinkState = "new" | "connecting" | "connected" | "disconnected" | "failed" | "closed";

export interface LadderOptions {
  /** How long a new connection may take to become usable (or a broken one to recover) before it is given up. */
  rungTimeoutMs: number;
  /** Below the best path, how often the controller probes for a better one (without leaving the current one). */
  upgradeIntervalMs: number;
  /** How long ICE may stay `disconnected` before an ICE restart. */
  iceGraceMs: number;
  /** Largest DataChannel `bufferedAmount`; beyond it messages wait in the pair's stream. */
  maxDataChannelBuffer: number;
  /** Most unacknowledged messages per pair; beyond it `send` rejects with `backpressure`. */
  maxUnackedMessages: number;
  /** The receiver acknowledges this long after the first unacknowledged message… */
  dataAckDelayMs: number;
  /** …or at once after this many. */
  dataAckEvery: number;
  /** Without any ack progress for this long, unacknowledged messages are sent again on the current path. */
  retransmitMs: number;
  /** Trickled ICE candidates of a connection are gathered this long and sent in one signal. */
  candidateBatchMs: number;
}

export const defaultLadderOptions: LadderOptions = {
  rungTimeoutMs: 10_000,
  upgradeIntervalMs: 60_000,
  iceGraceMs: 3_000,
  maxDataChannelBuffer: 1024 * 1024,
  maxUnackedMessages: 4096,
  dataAckDelayMs: 40,
  dataAckEvery: 32,
  retransmitMs: 3_000,
  candidateBatchMs: 50,
};

/** The page's shared session with the room's relay (sfu.ts), as a pair sees it. */
export interface SfuPort {
  /** Whether the room's relay offers the `sfu` rung (`welcome.sfu`). */
  available(): boolean;
  /** Starts the session unless it is open or being made. */
  ensure(): void;
  /** Whether messages can be sent now. */
  readonly open: boolean;
  /** Sends `message` to `to` through the relay; `false`: not now (no room or not open). */
  send(to: string, message: unknown): boolean;
}

export interface PeerLinkHost {
  readonly localId: string;
  readonly clock: Clock;
  readonly options: LadderOptions;
  /** Whether RTCPeerConnection can be created here (otherwise only the WebSocket rung exists). */
  readonly rtcSupported: boolean;
  iceServers(): readonly IceServer[];
  forced(): Path | null;
  localTracks(): ReadonlyArray<{ track: MediaStreamTrack; streams: MediaStream[] }>;
  sendSignal(to: string, payload: RtcPayload): void;
  sendRelay(to: string, data: unknown): Promise<void>;
  /** Whether the signaling queue can take another `relay` frame now. */
  relayHasRoom(): boolean;
  /** The room's largest frame: every message must fit a `relay` frame, since any path may carry it. */
  maxRelayBytes(): number;
  createPeerConnection(config: RTCConfiguration): RTCPeerConnection;
  sfu: SfuPort;
  onPath(peerId: string, path: Path, previous: Path | null): void;
  onState(peerId: string, state: LinkState, path: Path): void;
  onData(peerId: string, data: unknown, via: "datachannel" | "relay" | "sfu"): void;
  onTrack(peerId: string, track: MediaStreamTrack, streams: readonly MediaStream[]): void;
  onError(error: SwitchboardError): void;
}

function randomId(): string {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** How often the SFU probe is sent until answered. */
const SFU_PROBE_MS = 250;

/** How long a connection must look direct before a pair on `turn` reports `p2p`. */
const ROUTE_SETTLE_MS = 300;

/** The counter part of an epoch `<link>.<n>`: later connections of a controller have larger ones. */
function epochOrder(epoch: string): number {
  const n = Number(epoch.slice(epoch.lastIndexOf(".") + 1));
  return Number.isFinite(n) ? n : 0;
}

/** One RTCPeerConnection of the pair and its negotiation state. */
interface Conn {
  readonly epoch: string;
  readonly order: number;
  readonly mode: RtcMode;
  readonly pc: RTCPeerConnection;
  /** Built by the controller as an upgrade probe: kept only if it is better than the current path. */
  readonly probe: boolean;
  dc: RTCDataChannel | null;
  /** DataChannel open and a probe message answered over it. */
  usable: boolean;
  /** `turn` when the selected candidate pair has a relayed candidate on either end, else `p2p`; `null` until known. */
  route: "p2p" | "turn" | null;
  /** Whether this end's / the other end's candidate of the selected pair is relayed (`null`: not known yet). */
  localRelay: boolean | null;
  remoteRelay: boolean | null;
  /** The remote candidate of the selected pair, as seen here, is a (signalled) relayed one. */
  remoteSeenRelay: boolean;
  readonly routeTimer: Timer;
  makingOffer: boolean;
  ignoreOffer: boolean;
  settingRemoteAnswer: boolean;
  /** Local tracks may be attached: at once on the controller, after the first remote offer on the follower. */
  mediaReady: boolean;
  readonly attached: Set<MediaStreamTrack>;
  /** Transceivers given a local track (`replaceTrack` is asynchronous: `sender.track` is set later). */
  readonly claimed: Set<RTCRtpTransceiver>;
  /** Remote tracks of a connection that is not carrying the pair yet; surfaced when it takes over. */
  readonly heldTracks: Array<{ track: MediaStreamTrack; streams: readonly MediaStream[] }>;
  readonly candidates: RTCIceCandidateInit[];
  readonly candidateTimer: Timer;
  /** Controller: the deadline to become usable, or to recover from `failed`/`disconnected`. */
  readonly deadline: Timer;
  readonly graceTimer: Timer;
  closed: boolean;
}

export class PeerLink {
  /** The impolite peer (greater `peer_id`) is the controller of the pair's ladder. */
  readonly polite: boolean;
  readonly linkId = randomId();

  private remoteLink: string | null = null;
  private remoteForced: Path | null = null;
  private epochCounter = 0;
  private readonly conns = new Map<string, Conn>();
  /** The connection carrying the pair's data and media; `null` on the WebSocket rung or before the first one works. */
  private active: Conn | null = null;
  /** Controller: the pair is on the WebSocket rung (no usable connection, none being built as the main one). */
  private onWebsocket = false;
  /** Follower: the path the controller last announced. */
  private announced: Path | null = null;
  private pathValue: Path | null = null;
  /** This end routes the pair through the relay's SFU session once `sfuUsable` (controller: decided; follower: told). */
  private sfuWanted = false;
  /** A probe made the round trip through the SFU session for this pair. */
  private sfuUsable = false;
  /** Controller: the pair is on the `sfu` rung. */
  private onSfu = false;
  /** Tracks of this peer from the SFU session, surfaced while the pair is on `sfu`. */
  private readonly sfuTracks: Array<{ track: MediaStreamTrack; streams: readonly MediaStream[] }> = [];
  private sfuTracksShown = false;
  private readonly sfuProbeTimer: Timer;
  private readonly sfuDeadline: Timer;
  private readonly sfuRetryTimer: Timer;
  private stateValue: LinkState = "new";
  private closed = false;

  private readonly sendStream: SendStream;
  private readonly recvStream = new ReceiveStream();
  /** The path (connection epoch or "relay") data was last handed to; a change means retransmission. */
  private viaKey: string | null = null;
  /** The stream number of the next message to hand to the current path. */
  private nextToHand = 1;
  private unackedAcks = 0;

  private readonly upgradeTimer: Timer;
  private readonly ackTimer: Timer;
  private readonly retransmitTimer: Timer;
  private readonly pumpTimer: Timer;

  constructor(
    readonly peerId: string,
    readonly meta: unknown,
    private readonly host: PeerLinkHost,
  ) {
    this.polite = host.localId < peerId;
    this.upgradeTimer = new Timer(host.clock);
    this.ackTimer = new Timer(host.clock);
    this.retransmitTimer = new Timer(host.clock);
    this.pumpTimer = new Timer(host.clock);
    this.sfuProbeTimer = new Timer(host.clock);
    this.sfuDeadline = new Timer(host.clock);
    this.sfuRetryTimer = new Timer(host.clock);
    this.sendStream = new SendStream(this.linkId, {
      maxUnacked: host.options.maxUnackedMessages,
      maxUnackedBytes: 8 * 1024 * 1024,
      maxReorder: host.options.maxUnackedMessages,
    });
  }

  get controller(): boolean {
    return !this.polite;
  }
  get path(): Path | null {
    return this.pathValue;
  }
  get state(): LinkState {
    return this.stateValue;
  }
  get peerConnection(): RTCPeerConnection | null {
    return this.active?.pc ?? null;
  }
  /** Messages sent to this peer and not yet acknowledged by it. */
  get unacknowledged(): number {
    return this.sendStream.pending;
  }
  /** How many RTCPeerConnections the pair holds (the active one and any being built). */
  get connectionCount(): number {
    return this.conns.size;
  }

  /** Introduces this link to the remote end (and re-announces a changed forced rung). */
  sendHello(): void {
    this.host.sendSignal(this.peerId, {
      sb: "rtc",
      t: "hello",
      link: this.linkId,
      knows: this.remoteLink,
      forced: this.host.forced(),
    });
  }

  /** The local forced rung changed. */
  forcedChanged(): void {
    this.sendHello();
    if (this.controller && this.remoteLink !== null) this.decide(false);
  }

  onPayload(payload: RtcPayload): void {
    if (this.closed) return;
    switch (payload.t) {
      case "hello":
        this.onHello(payload.link, payload.knows, isPath(payload.forced) ? payload.forced : null);
        return;
      case "open":
        // Only the controller opens connections; a stray one from the other side is ignored.
        if (this.polite && typeof payload.epoch === "string" && isRtcMode(payload.mode) && !this.conns.has(payload.epoch)) {
          this.openConn(payload.epoch, payload.mode, false);
        }
        return;
      case "close": {
        const conn = this.conns.get(payload.epoch);
        if (this.polite && conn) this.closeConn(conn, false);
        return;
      }
      case "path":
        if (this.polite && isPath(payload.path)) {
          this.announced = payload.path;
          // The controller announces `sfu` only after its probe made the round trip through both
          // pages' sessions, which proves this end's session reaches it too.
          if (payload.path === "sfu" && this.sfuWanted && !this.sfuUsable && this.host.sfu.open) {
            this.sfuUsable = true;
            this.sfuProbeTimer.clear();
            this.onSfuUsable();
          }
          this.updatePath();
          if ((payload.path === "websocket" || payload.path === "sfu") && this.active === null) this.setState("connected");
        }
        return;
      case "sfu":
        if (typeof payload.on !== "boolean") return;
        if (this.polite) {
          // The controller moves the pair onto (or off) the SFU rung.
          if (payload.on) this.wantSfu();
          else this.dropSfu();
        } else if (!payload.on && (this.sfuWanted || this.onSfu)) {
          // The follower's session failed: the pair cannot stay on the SFU rung.
          this.onSfuLost();
        }
        return;
      case "restart": {
        const conn = this.conns.get(payload.epoch);
        if (this.controller && conn) this.restartIce(conn);
        return;
      }
      case "sdp":
      case "ice": {
        const conn = this.conns.get(payload.epoch);
        if (conn) this.enqueueNegotiation(conn, payload);
        return;
      }
    }
  }

  /**
   * Sends app data to the peer: numbered in the pair's stream, then handed to
   * the current path (DataChannel or `relay` frames). Resolves once the
   * message is in the stream, which delivers it exactly once; rejects with
   * `backpressure` when the stream holds `maxUnackedMessages` unacknowledged.
   */
  send(data: unknown): Promise<void> {
    let text: string;
    try {
      text = JSON.stringify(data);
    } catch (cause) {
      return Promise.reject(new SwitchboardError("invalid_data", "data must be JSON-serializable", { cause }));
    }
    const bytes = new TextEncoder().encode(text).length;
    if (this.closed) return Promise.reject(new SwitchboardError("closed", "the peer is gone", { peerId: this.peerId }));
    // The relay frame around it: {"type":"relay","to":…,"data":{"sb":"d","s":…,"n":…,"d":…},"cseq":…}.
    const limit = this.host.maxRelayBytes() - (this.peerId.length + this.linkId.length + 120);
    if (bytes > limit) {
      return Promise.reject(
        new SwitchboardError("payload_too_large", `a ${bytes}-byte message exceeds the ${limit} bytes a relay frame can carry`, {
          peerId: this.peerId,
        }),
      );
    }
    if (!this.sendStream.fits(bytes)) {
      return Promise.reject(
        new SwitchboardError("backpressure", `${this.sendStream.pending} messages to ${this.peerId} are unacknowledged`, {
          peerId: this.peerId,
        }),
      );
    }
    this.sendStream.push(data, bytes);
    this.armRetransmit();
    this.pump();
    return Promise.resolve();
  }

  /** A `relay` frame from this peer: an envelope of the pair's stream, or plain data from a client without one. */
  onRelay(data: unknown): void {
    if (this.closed) return;
    const envelope = parseEnvelope(data);
    if (envelope) this.onEnvelope(envelope, "relay");
    else this.host.onData(this.peerId, data, "relay");
  }

  /** Sends a local track on every connection of the pair. */
  addTrack(track: MediaStreamTrack, streams: MediaStream[]): void {
    // The follower attaches its tracks when the controller's first offer arrives.
    for (const conn of this.conns.values()) {
      if (conn.mediaReady) this.attachTrack(conn, track, streams);
    }
  }

  /**
   * New TURN credentials: applied to every connection, and connections that
   * relay through TURN restart ICE so the new credentials take effect before
   * the old ones expire on the relay (`setConfiguration` alone waits for the
   * next ICE restart). Only the controller restarts; the follower asks it to.
   */
  updateIceServers(): void {
    for (const conn of this.conns.values()) {
      const config = rtcConfiguration(conn.mode, this.host.iceServers());
      if (!config) continue;
      try {
        conn.pc.setConfiguration({ ...conn.pc.getConfiguration(), iceServers: config.iceServers ?? [] });
      } catch (error) {
        this.reportError("could not apply refreshed ICE servers", error);
        continue;
      }
      if (conn.route !== "turn" && conn.mode !== "turn") continue;
      if (this.controller) this.restartIce(conn);
      else this.host.sendSignal(this.peerId, { sb: "rtc", t: "restart", epoch: conn.epoch });
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const conn of [...this.conns.values()]) this.closeConn(conn, false);
    for (const timer of [
      this.upgradeTimer,
      this.ackTimer,
      this.retransmitTimer,
      this.pumpTimer,
      this.sfuProbeTimer,
      this.sfuDeadline,
      this.sfuRetryTimer,
    ]) {
      timer.clear();
    }
    this.setState("closed");
  }

  // ---- the ladder (controller decides, follower follows) ----

  private onHello(link: string, knows: string | null, forced: Path | null): void {
    const restarted = this.remoteLink !== null && link !== this.remoteLink;
    const newRemote = link !== this.remoteLink;
    const forcedChanged = forced !== this.remoteForced;
    this.remoteLink = link;
    this.remoteForced = forced;
    // The other end does not know this link yet (it is new, or we are): introduce ourselves.
    if (knows !== this.linkId) this.sendHello();
    if (restarted) {
      // A new remote instance: its connections and its receiving stream are gone.
      for (const conn of [...this.conns.values()]) this.closeConn(conn, false);
      this.dropSfu();
      this.sendStream.restart();
      this.viaKey = null;
      this.pump();
    }
    if (!this.controller) return;
    const idle = this.active === null && this.conns.size === 0 && !this.onWebsocket && !this.sfuWanted && !this.onSfu;
    if (newRemote || idle) this.decide(true);
    else if (forcedChanged) this.decide(false);
  }

  private forcedPair(): boolean {
    return this.host.forced() !== null || this.remoteForced !== null;
  }

  private target(): Target {
    return startTarget(
      this.host.iceServers(),
      this.host.rtcSupported,
      this.host.forced(),
      this.remoteForced,
      this.host.sfu.available(),
    );
  }

  /** Controller: moves the pair towards its start target; `fresh` rebuilds even a matching connection. */
  private decide(fresh: boolean): void {
    const target = this.target();
    if (target.rung === "websocket") {
      this.goWebsocket();
      return;
    }
    if (target.rung === "sfu") {
      if (fresh) {
        for (const conn of [...this.conns.values()]) if (conn !== this.active) this.closeConn(conn, true);
        this.leaveSfu();
      }
      if (this.onSfu) {
        for (const conn of [...this.conns.values()]) this.closeConn(conn, true);
        return;
      }
      // Make-before-break: whatever carries the pair keeps doing so until the SFU rung works.
      if (!this.sfuWanted) this.buildSfu();
      return;
    }
    if (fresh) {
      for (const conn of [...this.conns.values()]) this.closeConn(conn, true);
      this.leaveSfu();
    } else {
      if (this.active && (this.active.mode === target.mode || (!this.forcedPair() && target.mode === "auto"))) {
        // Already there (or unforced again on a working connection): drop builds for other targets.
        for (const conn of [...this.conns.values()]) if (conn !== this.active) this.closeConn(conn, true);
        this.scheduleUpgrade();
        return;
      }
      if ([...this.conns.values()].some((c) => c !== this.active && c.mode === target.mode && !c.probe)) return;
      for (const conn of [...this.conns.values()]) if (conn !== this.active) this.closeConn(conn, true);
    }
    this.build(target.mode, false);
  }

  /** Controller: opens a connection under a fresh epoch, while whatever carries the pair keeps doing so. */
  private build(mode: RtcMode, probe: boolean): void {
    this.upgradeTimer.clear();
    this.epochCounter += 1;
    const epoch = `${this.linkId}.${this.epochCounter}`;
    this.host.sendSignal(this.peerId, { sb: "rtc", t: "open", epoch, mode });
    const conn = this.openConn(epoch, mode, probe);
    if (!conn) {
      this.host.sendSignal(this.peerId, { sb: "rtc", t: "close", epoch });
      this.onBuildFailed(mode, probe);
      return;
    }
    if (this.active === null && !this.onWebsocket && !this.onSfu) this.setState("connecting");
    conn.deadline.set(this.host.options.rungTimeoutMs, () => {
      if (conn.closed || conn.usable) return;
      this.closeConn(conn, true);
      this.onBuildFailed(mode, probe);
    });
  }

  /** Controller: a connection did not become usable in time (or could not be created). */
  private onBuildFailed(mode: RtcMode, probe: boolean): void {
    if (this.closed) return;
    // A failed probe leaves the current path untouched; try again later.
    if (probe) {
      this.scheduleUpgrade();
      return;
    }
    // A forced rung is kept: try it again from scratch instead of moving down.
    if (this.forcedPair() && this.target().rung === "rtc") {
      this.build(mode, false);
      return;
    }
    if (this.active || this.onSfu || this.sfuWanted) {
      this.scheduleUpgrade();
      return;
    }
    const lower = lowerRung("rtc", this.host.sfu.available() && this.host.rtcSupported);
    if (lower === "sfu") this.buildSfu();
    else if (lower === "websocket") this.goWebsocket();
  }

  // ---- the SFU rung ----

  /** Controller: moves the pair onto the SFU rung once a probe made the round trip through it. */
  private buildSfu(): void {
    this.upgradeTimer.clear();
    this.sfuRetryTimer.clear();
    this.host.sendSignal(this.peerId, { sb: "rtc", t: "sfu", on: true });
    this.wantSfu();
    if (this.active === null && !this.onWebsocket) this.setState("connecting");
    this.sfuDeadline.set(this.host.options.rungTimeoutMs, () => {
      if (this.closed || this.sfuUsable) return;
      this.onSfuLost();
    });
  }

  /** Both ends: route the pair through the SFU session once it is proven. */
  private wantSfu(): void {
    this.sfuWanted = true;
    this.host.sfu.ensure();
    this.probeSfu();
  }

  /** Sends the SFU probe until it is answered (the other page's session may still be opening). */
  private probeSfu(): void {
    this.sfuProbeTimer.clear();
    if (this.closed || !this.sfuWanted || this.sfuUsable) return;
    if (this.host.sfu.open) this.host.sfu.send(this.peerId, { sb: "p", e: "sfu" });
    this.sfuProbeTimer.set(SFU_PROBE_MS, () => this.probeSfu());
  }

  /** Both ends: stop routing through the SFU session (the controller says so, or it moved on). */
  private dropSfu(): void {
    const was = this.sfuWanted || this.onSfu;
    this.sfuWanted = false;
    this.sfuUsable = false;
    this.onSfu = false;
    this.sfuTracksShown = false;
    this.sfuProbeTimer.clear();
    this.sfuDeadline.clear();
    if (was && !this.closed) {
      this.pump();
      this.updatePath();
    }
  }

  /** Controller: leaves the SFU rung and tells the follower. */
  private leaveSfu(): void {
    if (!this.sfuWanted && !this.onSfu) return;
    this.host.sendSignal(this.peerId, { sb: "rtc", t: "sfu", on: false });
    this.dropSfu();
  }

  /** Controller: the SFU rung did not become usable in time, or its session failed (here or there). */
  private onSfuLost(): void {
    if (this.closed) return;
    const wasOn = this.onSfu;
    this.leaveSfu();
    if (this.active) {
      this.scheduleUpgrade();
      return;
    }
    // A forced SFU rung is kept: try it again after a pause; otherwise relay frames carry the pair.
    if (this.forcedPair() && this.target().rung === "sfu") {
      if (wasOn) this.goWebsocket();
      this.sfuRetryTimer.set(this.host.options.iceGraceMs, () => {
        if (!this.closed && this.forcedPair() && this.target().rung === "sfu" && !this.sfuWanted) this.buildSfu();
      });
      return;
    }
    this.goWebsocket();
  }

  /** A message of this peer that came through the relay's SFU session. */
  onSfuMessage(message: unknown): void {
    if (this.closed) return;
    const fields = typeof message === "object" && message !== null ? (message as Record<string, unknown>) : {};
    if (fields.sb === "p" && fields.e === "sfu") {
      this.host.sfu.send(this.peerId, { sb: "q", e: "sfu" });
      return;
    }
    if (fields.sb === "q" && fields.e === "sfu") {
      if (this.sfuWanted && !this.sfuUsable) {
        this.sfuUsable = true;
        this.sfuProbeTimer.clear();
        this.onSfuUsable();
      }
      return;
    }
    const envelope = parseEnvelope(message);
    if (envelope) this.onEnvelope(envelope, "sfu");
    else this.host.onData(this.peerId, message, "sfu");
  }

  /** A track of this peer from the SFU session. */
  onSfuTrack(track: MediaStreamTrack, streams: readonly MediaStream[]): void {
    if (this.closed) return;
    this.sfuTracks.push({ track, streams });
    if (this.sfuTracksShown) this.host.onTrack(this.peerId, track, streams);
  }

  /** The page's SFU session changed state. */
  onSfuSession(state: "open" | "failed"): void {
    if (this.closed || !this.sfuWanted) return;
    if (state === "open") {
      this.probeSfu();
      return;
    }
    this.sfuUsable = false;
    this.sfuTracks.length = 0;
    this.sfuTracksShown = false;
    this.pump();
    if (this.controller) this.onSfuLost();
    else {
      this.host.sendSignal(this.peerId, { sb: "rtc", t: "sfu", on: false });
      this.sfuWanted = false;
    }
  }

  /**
   * The room's SFU node changed (`relays-changed`): the page's session moves to the new node.
   * Data goes over `relay` frames until this pair's probe made the round trip through the new
   * session (both pages move at once), then back through it; unacknowledged messages are sent
   * again on each change of path. `available: false`: the room has no SFU any more.
   */
  onSfuMoved(available: boolean): void {
    if (this.closed || (!this.sfuWanted && !this.onSfu)) return;
    if (!available) {
      if (this.controller) this.onSfuLost();
      else this.dropSfu();
      return;
    }
    this.sfuUsable = false;
    this.sfuTracks.length = 0;
    this.sfuTracksShown = false;
    this.pump();
    this.wantSfu();
    if (this.controller) {
      this.sfuDeadline.set(this.host.options.rungTimeoutMs, () => {
        if (this.closed || this.sfuUsable) return;
        this.onSfuLost();
      });
    }
  }

  private onSfuUsable(): void {
    if (!this.sfuTracksShown) {
      this.sfuTracksShown = true;
      for (const { track, streams } of this.sfuTracks) this.host.onTrack(this.peerId, track, streams);
    }
    if (this.controller) {
      this.sfuDeadline.clear();
      this.onSfu = true;
      this.onWebsocket = false;
      const conns = [...this.conns.values()];
      this.active = null;
      for (const conn of conns) this.closeConn(conn, true);
      this.updatePath();
      this.setState("connected");
      this.scheduleUpgrade();
    } else {
      this.updatePath();
    }
    this.pump();
  }

  /** Controller: the WebSocket rung. Data moves to `relay` frames at once, then the connections close. */
  private goWebsocket(): void {
    this.leaveSfu();
    this.onWebsocket = true;
    const conns = [...this.conns.values()];
    this.active = null;
    this.pump();
    for (const conn of conns) this.closeConn(conn, true);
    this.updatePath();
    this.setState("connected");
    this.scheduleUpgrade();
  }

  /** Controller, below the best path: periodically probe for a better one. */
  private scheduleUpgrade(): void {
    this.upgradeTimer.clear();
    if (!this.controller || this.closed || this.forcedPair() || this.pathValue === null) return;
    const target = upgradeTarget(this.pathValue, this.host.rtcSupported);
    if (target === null || target.rung !== "rtc") return;
    if (rtcConfiguration(target.mode, this.host.iceServers()) === null) return;
    this.upgradeTimer.set(this.host.options.upgradeIntervalMs, () => {
      if (this.closed) return;
      // Another connection is being built: probe after it settled.
      if ([...this.conns.values()].some((c) => c !== this.active)) this.scheduleUpgrade();
      else this.build(target.mode, true);
    });
  }

  /** A connection became usable: switch to it if it is newer (and, for a probe, better) than the current one. */
  private onUsable(conn: Conn): void {
    if (conn.closed || this.closed) return;
    this.computeRoute(conn);
    if (this.active !== null && this.active.order >= conn.order) return;
    if (this.controller && conn.probe && this.pathValue !== null) {
      const gained = conn.route !== null && rank(conn.route) < rank(this.pathValue);
      if (!gained) {
        this.closeConn(conn, true);
        this.scheduleUpgrade();
        return;
      }
    }
    this.switchTo(conn);
  }

  private switchTo(conn: Conn): void {
    this.active = conn;
    this.onWebsocket = false;
    if (this.controller) this.leaveSfu();
    conn.deadline.clear();
    for (const { track, streams } of conn.heldTracks.splice(0)) this.host.onTrack(this.peerId, track, streams);
    this.updatePath();
    this.setState("connected");
    // The new path gets every unacknowledged message (`pump` notices the change).
    this.pump();
    if (this.controller) {
      for (const other of [...this.conns.values()]) {
        if (other !== conn && other.order < conn.order) this.closeConn(other, true);
      }
      this.scheduleUpgrade();
    }
  }

  /** The path as this end sees it; emits `path` when it changed. */
  private updatePath(): void {
    let path: Path | null;
    if (this.active) path = this.active.route ?? (this.active.mode === "turn" ? "turn" : "p2p");
    else if (this.controller) path = this.onSfu ? "sfu" : this.onWebsocket ? "websocket" : this.pathValue;
    else path = this.announced === "websocket" || this.announced === "sfu" ? this.announced : this.pathValue;
    if (path === this.pathValue || path === null) return;
    const previous = this.pathValue;
    this.pathValue = path;
    if (this.controller) this.host.sendSignal(this.peerId, { sb: "rtc", t: "path", path });
    this.host.onPath(this.peerId, path, previous);
    if (this.controller) this.scheduleUpgrade();
  }

  /**
   * Reads whether this end's candidate of the selected pair is relayed. The
   * remote candidate's type cannot tell: packets from the other end's TURN
   * allocation often arrive before its relayed candidate was signalled and
   * show up as peer-reflexive. So each end reports its own over the
   * DataChannel (`relay` in the probe messages and in `{"sb":"r"}` updates).
   */
  private async refreshLocal(conn: Conn): Promise<void> {
    let relay: boolean | null = conn.mode === "turn" ? true : conn.mode === "p2p" ? false : null;
    try {
      if (relay === null && typeof conn.pc.getStats === "function") {
        const stats = await conn.pc.getStats();
        const byId = new Map<string, Record<string, unknown>>();
        let pairId: string | undefined;
        stats.forEach((report: Record<string, unknown>) => {
          byId.set(report.id as string, report);
          if (report.type === "transport" && typeof report.selectedCandidatePairId === "string") {
            pairId = report.selectedCandidatePairId;
          }
        });
        const pair = pairId === undefined ? undefined : byId.get(pairId);
        const local = pair && byId.get(pair.localCandidateId as string);
        const remote = pair && byId.get(pair.remoteCandidateId as string);
        if (local) relay = local.candidateType === "relay";
        conn.remoteSeenRelay = remote?.candidateType === "relay";
      }
    } catch {
      // No stats (the connection closed meanwhile): keep what is known.
    }
    if (relay !== null) conn.localRelay = relay;
  }

  /** `turn` when either end's candidate of the selected pair is relayed, else `p2p`. */
  private computeRoute(conn: Conn): void {
    const route = conn.localRelay === true || conn.remoteRelay === true || conn.remoteSeenRelay ? "turn" : "p2p";
    // While ICE settles, the two ends' reports can cross (each switched its own end of the
    // pair, neither has heard of the other's switch yet): only a `p2p` that lasts is believed.
    if (conn === this.active && conn.route === "turn" && route === "p2p") {
      if (!conn.routeTimer.armed) {
        conn.routeTimer.set(ROUTE_SETTLE_MS, () => {
          void this.refreshLocal(conn).then(() => {
            if (!conn.closed && conn.localRelay !== true && conn.remoteRelay !== true && !conn.remoteSeenRelay) {
              conn.route = "p2p";
              if (conn === this.active) this.updatePath();
            }
          });
        });
      }
      return;
    }
    conn.routeTimer.clear();
    conn.route = route;
    if (conn === this.active) this.updatePath();
  }

  /** The selected pair may change (relayed first, direct once it works): re-read it and tell the other end. */
  private async onSelectedPairChange(conn: Conn): Promise<void> {
    const before = conn.localRelay;
    await this.refreshLocal(conn);
    if (conn.closed) return;
    if (conn.localRelay !== before && conn.dc?.readyState === "open") this.sendOn(conn.dc, { sb: "r", relay: conn.localRelay === true });
    this.computeRoute(conn);
  }

  // ---- connections ----

  private openConn(epoch: string, mode: RtcMode, probe: boolean): Conn | null {
    const config = rtcConfiguration(mode, this.host.iceServers());
    if (!config) return null;
    let pc: RTCPeerConnection;
    try {
      pc = this.host.createPeerConnection(config);
    } catch (error) {
      this.reportError("could not create an RTCPeerConnection", error);
      return null;
    }
    const conn: Conn = {
      epoch,
      order: epochOrder(epoch),
      mode,
      pc,
      probe,
      dc: null,
      usable: false,
      route: null,
      localRelay: null,
      remoteRelay: null,
      remoteSeenRelay: false,
      routeTimer: new Timer(this.host.clock),
      makingOffer: false,
      ignoreOffer: false,
      settingRemoteAnswer: false,
      mediaReady: false,
      attached: new Set(),
      claimed: new Set(),
      heldTracks: [],
      candidates: [],
      candidateTimer: new Timer(this.host.clock),
      deadline: new Timer(this.host.clock),
      graceTimer: new Timer(this.host.clock),
      closed: false,
    };
    this.conns.set(epoch, conn);

    // Not queued behind incoming descriptions: the collision check in `negotiate`
    // relies on `makingOffer` being true from the moment the offer is started.
    pc.onnegotiationneeded = async () => {
      try {
        conn.makingOffer = true;
        await pc.setLocalDescription();
        if (!conn.closed && pc.localDescription) {
          this.host.sendSignal(this.peerId, { sb: "rtc", t: "sdp", epoch, description: pc.localDescription.toJSON() });
        }
      } catch (error) {
        if (!conn.closed) this.reportError("could not create an offer", error);
      } finally {
        conn.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      // A null candidate only marks the end of gathering; the peer does not need it.
      if (!candidate || conn.closed) return;
      // Trickled candidates go out in batches, so a pair costs a few signals, not one per candidate.
      conn.candidates.push(candidate.toJSON());
      if (!conn.candidateTimer.armed) conn.candidateTimer.set(this.host.options.candidateBatchMs, () => this.flushCandidates(conn));
    };
    pc.ontrack = ({ track, streams }) => {
      if (conn.closed) return;
      if (conn === this.active) this.host.onTrack(this.peerId, track, streams);
      else conn.heldTracks.push({ track, streams });
    };
    pc.onconnectionstatechange = () => {
      if (!conn.closed) this.onConnectionState(conn);
    };

    if (this.controller) {
      // Only the controller makes the first offer, so a new connection never starts with
      // glare (rolling back a first offer with a DataChannel is fragile in Chromium).
      // One sendrecv transceiver per kind is allocated up front: starting a camera later
      // is then a `replaceTrack`, which needs no renegotiation.
      pc.addTransceiver("audio", { direction: "sendrecv" });
      pc.addTransceiver("video", { direction: "sendrecv" });
      this.attachDataChannel(conn, pc.createDataChannel("switchboard", { ordered: true }));
      conn.mediaReady = true;
      this.attachLocalTracks(conn);
    } else {
      pc.ondatachannel = ({ channel }) => {
        if (!conn.closed && channel.label === "switchboard") this.attachDataChannel(conn, channel);
      };
    }
    return conn;
  }

  private flushCandidates(conn: Conn): void {
    conn.candidateTimer.clear();
    if (conn.closed || conn.candidates.length === 0) return;
    const candidates = conn.candidates.splice(0);
    this.host.sendSignal(this.peerId, { sb: "rtc", t: "ice", epoch: conn.epoch, candidates });
  }

  /** Drops a connection; `announce` (controller) tells the follower to drop its side too. */
  private closeConn(conn: Conn, announce: boolean): void {
    if (conn.closed) return;
    conn.closed = true;
    this.conns.delete(conn.epoch);
    for (const timer of [conn.candidateTimer, conn.deadline, conn.graceTimer, conn.routeTimer]) timer.clear();
    if (announce && this.controller) this.host.sendSignal(this.peerId, { sb: "rtc", t: "close", epoch: conn.epoch });
    const dc = conn.dc;
    if (dc) {
      dc.onopen = dc.onclose = dc.onmessage = null;
      dc.onbufferedamountlow = null;
      dc.close();
    }
    const pc = conn.pc;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = pc.ondatachannel = null;
    pc.close();
    if (this.active !== conn) return;
    // The follower falls back to its newest other usable connection, if any; otherwise to relay frames.
    let next: Conn | null = null;
    for (const other of this.conns.values()) {
      if (other.usable && (next === null || other.order > next.order)) next = other;
    }
    this.active = null;
    if (next && !this.closed) this.switchTo(next);
    else if (!this.closed) {
      this.pump();
      this.updatePath();
    }
  }

  private attachDataChannel(conn: Conn, dc: RTCDataChannel): void {
    conn.dc = dc;
    const opened = async () => {
      if (conn.closed || conn.dc !== dc) return;
      await this.refreshLocal(conn);
      if (conn.closed || conn.dc !== dc) return;
      // A round trip proves the new path passes data before anything is switched to it.
      this.sendOn(dc, { sb: "p", e: conn.epoch, relay: conn.localRelay === true });
      // ICE may move to a better candidate pair later (relayed first, direct once it works).
      const ice = (conn.pc as { sctp?: { transport?: { iceTransport?: EventTarget } } | null }).sctp?.transport?.iceTransport;
      ice?.addEventListener?.("selectedcandidatepairchange", () => void this.onSelectedPairChange(conn));
    };
    dc.onopen = () => void opened();
    dc.onmessage = (event) => {
      if (conn.closed || conn.dc !== dc || typeof event.data !== "string") return;
      let message: unknown;
      try {
        message = JSON.parse(event.data);
      } catch {
        this.reportError("a DataChannel message was not JSON", undefined);
        return;
      }
      this.onChannelMessage(conn, dc, message);
    };
    dc.onclose = () => {
      if (conn.closed || conn.dc !== dc) return;
      if (conn === this.active) {
        this.setState("disconnected");
        this.pump();
      }
    };
    dc.bufferedAmountLowThreshold = Math.floor(this.host.options.maxDataChannelBuffer / 2);
    dc.onbufferedamountlow = () => {
      if (!conn.closed && conn === this.active) this.pump();
    };
    // A channel announced by the remote end may already be open when it is handed over.
    if (dc.readyState === "open") void opened();
  }

  private onChannelMessage(conn: Conn, dc: RTCDataChannel, message: unknown): void {
    const fields = typeof message === "object" && message !== null ? (message as Record<string, unknown>) : {};
    const sb = fields.sb;
    if (sb === "p" || sb === "q" || sb === "r") {
      if (typeof fields.relay === "boolean") conn.remoteRelay = fields.relay;
    }
    if (sb === "p") {
      void this.refreshLocal(conn).then(() => {
        if (!conn.closed && conn.dc === dc) this.sendOn(dc, { sb: "q", e: conn.epoch, relay: conn.localRelay === true });
      });
      return;
    }
    if (sb === "q") {
      if (!conn.usable) {
        conn.usable = true;
        this.onUsable(conn);
      }
      return;
    }
    if (sb === "r") {
      // Our own view of the pair may have changed too: read it again before deciding.
      void this.refreshLocal(conn).then(() => {
        if (!conn.closed) this.computeRoute(conn);
      });
      return;
    }
    const envelope = parseEnvelope(message);
    if (envelope) this.onEnvelope(envelope, "datachannel");
    else this.host.onData(this.peerId, message, "datachannel");
  }

  private sendOn(dc: RTCDataChannel, message: unknown): boolean {
    try {
      dc.send(JSON.stringify(message));
      return true;
    } catch {
      return false;
    }
  }

  private attachLocalTracks(conn: Conn): void {
    for (const { track, streams } of this.host.localTracks()) this.attachTrack(conn, track, streams);
  }

  /** Puts `track` on a free sending transceiver of its kind, or adds one (which renegotiates). */
  private attachTrack(conn: Conn, track: MediaStreamTrack, streams: MediaStream[]): void {
    if (conn.attached.has(track)) return;
    conn.attached.add(track);
    const pc = conn.pc;
    const free = pc
      .getTransceivers()
      .find(
        (t) =>
          t.receiver.track?.kind === track.kind &&
          t.sender.track === null &&
          !conn.claimed.has(t) &&
          (t.direction === "sendrecv" || t.direction === "sendonly"),
      );
    if (free) conn.claimed.add(free);
    const onError = (error: unknown) => {
      if (!conn.closed) this.reportError("could not send a track", error);
    };
    try {
      if (free) free.sender.replaceTrack(track).catch(onError);
      else pc.addTrack(track, ...streams);
    } catch (error) {
      onError(error);
    }
  }

  private onConnectionState(conn: Conn): void {
    const state = conn.pc.connectionState;
    const isActive = conn === this.active;
    if (state === "connected") {
      conn.graceTimer.clear();
      if (isActive) {
        conn.deadline.clear();
        this.setState("connected");
        void this.onSelectedPairChange(conn);
        this.pump();
      }
      return;
    }
    if (state !== "failed" && state !== "disconnected") return;
    if (isActive) {
      this.setState(state);
      // Data moves to relay frames while the connection is down (and back when it recovers).
      this.pump();
    }
    if (state === "failed") this.restartIce(conn);
    else {
      // Brief outages heal by themselves; restart ICE only if this one lasts.
      conn.graceTimer.set(this.host.options.iceGraceMs, () => {
        if (!conn.closed && conn.pc.connectionState === "disconnected") this.restartIce(conn);
      });
    }
    // Controller: an active connection that does not recover within the rung timeout is replaced.
    if (this.controller && isActive && !conn.deadline.armed) {
      conn.deadline.set(this.host.options.rungTimeoutMs, () => {
        if (conn.closed || conn.pc.connectionState === "connected") return;
        this.closeConn(conn, true);
        if (this.forcedPair()) {
          this.onBuildFailed(conn.mode, false);
          return;
        }
        // The network changed under the pair: relay frames carry it while a fresh
        // connection (direct and relayed candidates again) is tried at once.
        this.goWebsocket();
        const target = upgradeTarget("websocket", this.host.rtcSupported);
        if (target?.rung === "rtc") this.build(target.mode, true);
      });
    }
  }

  private restartIce(conn: Conn): void {
    // One side restarts, so the two restart offers never collide.
    if (!this.controller || conn.closed) return;
    try {
      // Triggers `negotiationneeded`; perfect negotiation sends the ICE-restart offer.
      conn.pc.restartIce();
    } catch (error) {
      this.reportError("ICE restart failed", error);
    }
  }

  private enqueueNegotiation(conn: Conn, payload: Extract<RtcPayload, { t: "sdp" | "ice" }>): void {
    // Not serialized here: the collision check must see the state at arrival, and
    // the RTCPeerConnection's own operations chain keeps the calls in order.
    this.negotiate(conn, payload).catch((error: unknown) => {
      if (!conn.closed) this.reportError("negotiation failed", error);
    });
  }

  /** The perfect negotiation pattern (W3C WebRTC 1.0, §10.7 "Perfect negotiation example"). */
  private async negotiate(conn: Conn, payload: Extract<RtcPayload, { t: "sdp" | "ice" }>): Promise<void> {
    const pc = conn.pc;
    if (payload.t === "sdp") {
      const description = payload.description;
      const readyForOffer = !conn.makingOffer && (pc.signalingState === "stable" || conn.settingRemoteAnswer);
      const offerCollision = description.type === "offer" && !readyForOffer;
      conn.ignoreOffer = !this.polite && offerCollision;
      if (conn.ignoreOffer) return;
      conn.settingRemoteAnswer = description.type === "answer";
      try {
        await pc.setRemoteDescription(description);
      } finally {
        conn.settingRemoteAnswer = false;
      }
      if (description.type === "offer") {
        if (!conn.mediaReady && !conn.closed) {
          // Answer the controller's pre-allocated transceivers with sendrecv, carrying our tracks.
          for (const transceiver of pc.getTransceivers()) {
            if (transceiver.direction === "recvonly") transceiver.direction = "sendrecv";
          }
          conn.mediaReady = true;
          this.attachLocalTracks(conn);
        }
        await pc.setLocalDescription();
        if (!conn.closed && pc.localDescription) {
          this.host.sendSignal(this.peerId, {
            sb: "rtc",
            t: "sdp",
            epoch: conn.epoch,
            description: pc.localDescription.toJSON(),
          });
        }
      }
      return;
    }
    const candidates = Array.isArray(payload.candidates) ? payload.candidates : [];
    for (const candidate of candidates) {
      try {
        await pc.addIceCandidate(candidate);
      } catch (error) {
        // Candidates of an offer we ignored are expected to fail.
        if (!conn.ignoreOffer) throw error;
      }
    }
  }

  // ---- the pair's data stream ----

  /** Where data goes now: the active connection's DataChannel while it works, else `relay` frames. */
  private via(): Conn | "sfu" | "relay" {
    const conn = this.active;
    if (
      conn &&
      conn.usable &&
      conn.dc?.readyState === "open" &&
      conn.pc.connectionState !== "failed" &&
      conn.pc.connectionState !== "disconnected"
    ) {
      return conn;
    }
    if (this.sfuWanted && this.sfuUsable && this.host.sfu.open) return "sfu";
    return "relay";
  }

  /**
   * Hands unacknowledged messages to the current path, in order, as far as it
   * has room. After a change of path it starts over from the first
   * unacknowledged message: that is the retransmission.
   */
  private pump(): void {
    this.pumpTimer.clear();
    if (this.closed) return;
    const via = this.via();
    const key = via === "relay" || via === "sfu" ? via : via.epoch;
    const queued = this.sendStream.retransmission();
    if (key !== this.viaKey) {
      this.viaKey = key;
      this.nextToHand = queued[0]?.n ?? this.nextToHand;
    }
    let blocked = false;
    for (const envelope of queued) {
      if (envelope.n < this.nextToHand) continue;
      if (!this.handTo(via, envelope)) {
        blocked = true;
        break;
      }
      this.nextToHand = envelope.n + 1;
    }
    // WebSocket has no drain event, and a DataChannel's may not come if the channel closes: poll.
    if (blocked) this.pumpTimer.set(50, () => this.pump());
  }

  private handTo(via: Conn | "sfu" | "relay", message: DataEnvelope | StreamEnvelope): boolean {
    if (via === "sfu") return this.host.sfu.send(this.peerId, message);
    if (via === "relay") {
      if (!this.host.relayHasRoom()) return false;
      // A refusal is repaired by the retransmission timer.
      this.host.sendRelay(this.peerId, message).catch(() => undefined);
      return true;
    }
    const dc = via.dc;
    if (!dc || dc.bufferedAmount > this.host.options.maxDataChannelBuffer) return false;
    return this.sendOn(dc, message);
  }

  private armRetransmit(): void {
    if (this.retransmitTimer.armed || this.sendStream.pending === 0) return;
    this.retransmitTimer.set(this.host.options.retransmitMs, () => {
      if (this.closed || this.sendStream.pending === 0) return;
      // No ack progress for a while: send everything unacknowledged again on the current path.
      this.viaKey = null;
      this.pump();
      this.armRetransmit();
    });
  }

  private onEnvelope(envelope: StreamEnvelope, via: "datachannel" | "relay" | "sfu"): void {
    if (envelope.sb === "a") {
      if (this.sendStream.onAck(envelope) > 0) {
        this.retransmitTimer.clear();
        this.armRetransmit();
      }
      return;
    }
    const { deliver } = this.recvStream.onData(envelope);
    for (const data of deliver) this.host.onData(this.peerId, data, via);
    // Duplicates are acknowledged too: the sender evidently missed the ack.
    this.unackedAcks += Math.max(1, deliver.length);
    if (this.unackedAcks >= this.host.options.dataAckEvery) this.sendAck();
    else if (!this.ackTimer.armed) this.ackTimer.set(this.host.options.dataAckDelayMs, () => this.sendAck());
  }

  private sendAck(): void {
    this.ackTimer.clear();
    this.unackedAcks = 0;
    const ack = this.recvStream.ack();
    if (ack && !this.closed) this.handTo(this.via(), ack);
  }

  private setState(state: LinkState): void {
    if (this.stateValue === state || !this.pathValue) {
      this.stateValue = state;
      return;
    }
    this.stateValue = state;
    this.host.onState(this.peerId, state, this.pathValue);
  }

  private reportError(message: string, cause: unknown): void {
    this.host.onError(
      new SwitchboardError("webrtc", `${message} (peer ${this.peerId})`, { peerId: this.peerId, cause }),
    );
  }
}
