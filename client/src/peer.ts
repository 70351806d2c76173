/**
 * One remote peer as seen from this client: the RTCPeerConnection with perfect
 * negotiation, its DataChannel, ICE restarts, and the pair's place on the
 * fallback ladder.
 *
 * Agreement on the rung: the impolite peer of the pair (the greater
 * `peer_id`) is the *controller*. It alone moves the pair between rungs and
 * announces each move as an SDK-internal signal `{"sb":"rtc","t":"path",...}`
 * with a fresh `epoch`; the polite peer follows. Every SDP and ICE payload
 * carries its epoch, and payloads of another epoch are dropped, so the two
 * ends never mix connections of different rungs. Signals are delivered in
 * order (one `seq` stream per recipient), so "the last announced epoch wins"
 * needs no clocks.
 *
 * Until a rung's DataChannel is open, data travels as `relay` frames over the
 * signaling WebSocket, so sending never waits for ICE and nothing is dropped
 * while the ladder moves.
 */
import { Clock, Timer } from "./clock.js";
import { SwitchboardError } from "./errors.js";
import { availablePaths, isPath, lowerPath, rank, rtcConfiguration, startPath, type Path } from "./ladder.js";
import type { IceServer } from "./protocol.js";

/** The key that marks an SDK-internal signal payload; app payloads must not use `"sb": "rtc"`. */
export const INTERNAL_KEY = "sb";
export const INTERNAL_VALUE = "rtc";

export type RtcPayload =
  | { sb: "rtc"; t: "hello"; link: string; knows: string | null; forced: Path | null }
  | { sb: "rtc"; t: "path"; epoch: string; path: Path }
  | { sb: "rtc"; t: "sdp"; epoch: string; description: RTCSessionDescriptionInit }
  | { sb: "rtc"; t: "ice"; epoch: string; candidate: RTCIceCandidateInit };

export function isInternalPayload(payload: unknown): payload is RtcPayload {
  return (
    typeof payload === "object" &&
    payload !== null &&
    (payload as Record<string, unknown>)[INTERNAL_KEY] === INTERNAL_VALUE
  );
}

export type LinkState = "new" | "connecting" | "connected" | "disconnected" | "failed" | "closed";

export interface LadderOptions {
  /** How long a rung may take to open its DataChannel (or recover from a failure) before the pair moves down. */
  rungTimeoutMs: number;
  /** While below the best rung, how often the controller tries the best rung again. */
  upgradeIntervalMs: number;
  /** How long ICE may stay `disconnected` before an ICE restart. */
  iceGraceMs: number;
  /** Largest DataChannel `bufferedAmount` before sends reject with `backpressure`. */
  maxDataChannelBuffer: number;
}

export const defaultLadderOptions: LadderOptions = {
  rungTimeoutMs: 10_000,
  upgradeIntervalMs: 60_000,
  iceGraceMs: 3_000,
  maxDataChannelBuffer: 1024 * 1024,
};

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
  createPeerConnection(config: RTCConfiguration): RTCPeerConnection;
  onPath(peerId: string, path: Path, previous: Path | null): void;
  onState(peerId: string, state: LinkState, path: Path): void;
  onData(peerId: string, data: unknown, via: "datachannel" | "relay"): void;
  onTrack(peerId: string, track: MediaStreamTrack, streams: readonly MediaStream[]): void;
  onError(error: SwitchboardError): void;
}

function randomId(): string {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class PeerLink {
  /** The impolite peer (greater `peer_id`) is the controller of the pair's ladder. */
  readonly polite: boolean;
  readonly linkId = randomId();

  private remoteLink: string | null = null;
  private remoteForced: Path | null = null;
  private epochCounter = 0;
  private epoch: string | null = null;
  private pathValue: Path | null = null;
  private stateValue: LinkState = "new";

  private pc: RTCPeerConnection | null = null;
  private dc: RTCDataChannel | null = null;
  private makingOffer = false;
  /** Local tracks may be attached: at once on the controller, after the first remote offer on the follower. */
  private mediaReady = false;
  private readonly attached = new Set<MediaStreamTrack>();
  private ignoreOffer = false;
  private settingRemoteAnswer = false;
  private closed = false;

  private readonly rungTimer: Timer;
  private readonly upgradeTimer: Timer;
  private readonly graceTimer: Timer;

  constructor(
    readonly peerId: string,
    readonly meta: unknown,
    private readonly host: PeerLinkHost,
  ) {
    this.polite = host.localId < peerId;
    this.rungTimer = new Timer(host.clock);
    this.upgradeTimer = new Timer(host.clock);
    this.graceTimer = new Timer(host.clock);
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
    return this.pc;
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
      case "path":
        // Only the controller announces rungs; a stray announcement from the other side is ignored.
        if (this.polite && isPath(payload.path) && payload.epoch !== this.epoch) {
          this.enter(payload.epoch, payload.path);
        }
        return;
      case "sdp":
      case "ice":
        if (payload.epoch === this.epoch && this.pc) this.enqueueNegotiation(payload);
        return;
    }
  }

  /** Sends app data on the best working path of the pair. */
  send(data: unknown): Promise<void> {
    const dc = this.dc;
    if (dc && dc.readyState === "open") {
      if (dc.bufferedAmount > this.host.options.maxDataChannelBuffer) {
        return Promise.reject(
          new SwitchboardError("backpressure", `DataChannel to ${this.peerId} has ${dc.bufferedAmount} bytes buffered`, {
            peerId: this.peerId,
          }),
        );
      }
      try {
        dc.send(JSON.stringify(data));
        return Promise.resolve();
      } catch {
        // The channel closed between the check and the send: the relay still reaches the peer.
      }
    }
    return this.host.sendRelay(this.peerId, data);
  }

  /** Sends a local track on the current connection (later rungs get it from `localTracks`). */
  addTrack(track: MediaStreamTrack, streams: MediaStream[]): void {
    // The follower attaches its tracks when the controller's first offer arrives.
    if (this.pc && this.mediaReady) this.attachTrack(this.pc, track, streams);
  }

  /** New TURN credentials: applied to the live connection without renegotiation. */
  updateIceServers(): void {
    if (!this.pc || !this.pathValue) return;
    const config = rtcConfiguration(this.pathValue, this.host.iceServers());
    if (!config) return;
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: config.iceServers ?? [] });
    } catch (error) {
      this.reportError("could not apply refreshed ICE servers", error);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.teardown();
    this.setState("closed");
  }

  private onHello(link: string, knows: string | null, forced: Path | null): void {
    const newRemote = link !== this.remoteLink;
    const forcedChanged = forced !== this.remoteForced;
    this.remoteLink = link;
    this.remoteForced = forced;
    // The other end does not know this link yet (it is new, or we are): introduce ourselves.
    if (knows !== this.linkId) this.sendHello();
    if (!this.controller) return;
    if (newRemote || this.epoch === null) this.decide(true);
    else if (forcedChanged) this.decide(false);
  }

  private available(): Path[] {
    return availablePaths(this.host.iceServers(), this.host.rtcSupported);
  }

  private forcedPair(): boolean {
    return this.host.forced() !== null || this.remoteForced !== null;
  }

  /** Controller: (re)starts the pair at its start rung; `always` restarts even on the same rung. */
  private decide(always: boolean): void {
    const target = startPath(this.available(), this.host.forced(), this.remoteForced);
    if (always || target !== this.pathValue) this.announce(target);
  }

  /** Controller: moves the pair to `path` under a fresh epoch. */
  private announce(path: Path): void {
    this.epochCounter += 1;
    const epoch = `${this.linkId}.${this.epochCounter}`;
    this.host.sendSignal(this.peerId, { sb: "rtc", t: "path", epoch, path });
    this.enter(epoch, path);
  }

  private enter(epoch: string, path: Path): void {
    this.teardown();
    this.epoch = epoch;
    const previous = this.pathValue;
    this.pathValue = path;
    if (previous !== path) this.host.onPath(this.peerId, path, previous);

    const config = rtcConfiguration(path, this.host.iceServers());
    if (!config) {
      // The WebSocket rung: data goes as relay frames, which work as long as signaling does.
      this.setState("connected");
      this.scheduleUpgrade();
      return;
    }
    this.setState("connecting");
    this.openPeerConnection(config);
    if (this.controller) this.rungTimer.set(this.host.options.rungTimeoutMs, () => this.onRungTimeout());
  }

  private teardown(): void {
    this.rungTimer.clear();
    this.upgradeTimer.clear();
    this.graceTimer.clear();
    const pc = this.pc;
    const dc = this.dc;
    this.pc = null;
    this.dc = null;
    this.makingOffer = false;
    this.mediaReady = false;
    this.attached.clear();
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    if (dc) {
      dc.onopen = dc.onclose = dc.onmessage = null;
      dc.close();
    }
    if (pc) {
      pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = pc.ondatachannel = null;
      pc.close();
    }
  }

  private onRungTimeout(): void {
    if (this.closed || !this.controller || !this.pathValue) return;
    if (this.dc?.readyState === "open" && this.pc?.connectionState === "connected") return;
    if (this.forcedPair()) {
      // A forced rung is kept; try it again from scratch instead of moving down.
      this.announce(this.pathValue);
      return;
    }
    const lower = lowerPath(this.available(), this.pathValue);
    this.announce(lower ?? this.pathValue);
  }

  /** Controller, below the best rung: periodically try the best rung again. */
  private scheduleUpgrade(): void {
    if (!this.controller || this.forcedPair() || !this.pathValue) return;
    const best = startPath(this.available(), null, null);
    if (rank(best) >= rank(this.pathValue)) return;
    this.upgradeTimer.set(this.host.options.upgradeIntervalMs, () => {
      if (!this.closed) this.announce(best);
    });
  }

  private openPeerConnection(config: RTCConfiguration): void {
    let pc: RTCPeerConnection;
    try {
      pc = this.host.createPeerConnection(config);
    } catch (error) {
      this.reportError("could not create an RTCPeerConnection", error);
      return;
    }
    this.pc = pc;
    const epoch = this.epoch;

    // Not queued behind incoming descriptions: the collision check in `negotiate`
    // relies on `makingOffer` being true from the moment the offer is started.
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (this.pc === pc && pc.localDescription && epoch) {
          this.host.sendSignal(this.peerId, { sb: "rtc", t: "sdp", epoch, description: pc.localDescription.toJSON() });
        }
      } catch (error) {
        if (this.pc === pc) this.reportError("could not create an offer", error);
      } finally {
        if (this.pc === pc) this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      // A null candidate only marks the end of gathering; the peer does not need it.
      if (candidate && this.pc === pc && epoch) {
        this.host.sendSignal(this.peerId, { sb: "rtc", t: "ice", epoch, candidate: candidate.toJSON() });
      }
    };
    pc.ontrack = ({ track, streams }) => {
      if (this.pc === pc) this.host.onTrack(this.peerId, track, streams);
    };
    pc.onconnectionstatechange = () => {
      if (this.pc === pc) this.onConnectionState(pc);
    };

    if (this.controller) {
      // Only the controller makes the first offer, so a new connection never starts with
      // glare (rolling back a first offer with a DataChannel is fragile in Chromium).
      // One sendrecv transceiver per kind is allocated up front: starting a camera later
      // is then a `replaceTrack`, which needs no renegotiation.
      pc.addTransceiver("audio", { direction: "sendrecv" });
      pc.addTransceiver("video", { direction: "sendrecv" });
      this.attachDataChannel(pc.createDataChannel("switchboard", { ordered: true }));
      this.mediaReady = true;
      this.attachLocalTracks(pc);
    } else {
      pc.ondatachannel = ({ channel }) => {
        if (this.pc === pc && channel.label === "switchboard") this.attachDataChannel(channel);
      };
    }
  }

  private attachDataChannel(dc: RTCDataChannel): void {
    this.dc = dc;
    const opened = () => {
      if (this.dc !== dc) return;
      this.rungTimer.clear();
      this.setState("connected");
      this.scheduleUpgrade();
    };
    dc.onopen = opened;
    dc.onmessage = (event) => {
      if (this.dc !== dc || typeof event.data !== "string") return;
      let data: unknown;
      try {
        data = JSON.parse(event.data);
      } catch {
        this.reportError("a DataChannel message was not JSON", undefined);
        return;
      }
      this.host.onData(this.peerId, data, "datachannel");
    };
    dc.onclose = () => {
      if (this.dc === dc && !this.closed) this.setState("disconnected");
    };
    // A channel announced by the remote end may already be open when it is handed over.
    if (dc.readyState === "open") opened();
  }

  private attachLocalTracks(pc: RTCPeerConnection): void {
    for (const { track, streams } of this.host.localTracks()) this.attachTrack(pc, track, streams);
  }

  /** Puts `track` on a free sending transceiver of its kind, or adds one (which renegotiates). */
  private attachTrack(pc: RTCPeerConnection, track: MediaStreamTrack, streams: MediaStream[]): void {
    if (this.attached.has(track)) return;
    this.attached.add(track);
    const free = pc
      .getTransceivers()
      .find(
        (t) =>
          t.receiver.track?.kind === track.kind &&
          t.sender.track === null &&
          (t.direction === "sendrecv" || t.direction === "sendonly"),
      );
    const onError = (error: unknown) => {
      if (this.pc === pc) this.reportError("could not send a track", error);
    };
    try {
      if (free) free.sender.replaceTrack(track).catch(onError);
      else pc.addTrack(track, ...streams);
    } catch (error) {
      onError(error);
    }
  }

  private onConnectionState(pc: RTCPeerConnection): void {
    const state = pc.connectionState;
    if (state === "connected") {
      this.graceTimer.clear();
      if (this.dc?.readyState === "open") {
        this.rungTimer.clear();
        this.setState("connected");
      }
      return;
    }
    if (state === "failed") {
      this.setState("failed");
      this.restartIce(pc);
    } else if (state === "disconnected") {
      this.setState("disconnected");
      // Brief outages heal by themselves; restart ICE only if this one lasts.
      this.graceTimer.set(this.host.options.iceGraceMs, () => {
        if (this.pc === pc && pc.connectionState === "disconnected") this.restartIce(pc);
      });
    } else {
      return;
    }
    // Controller: if the rung does not recover within the rung timeout, move down.
    if (this.controller && !this.rungTimer.armed) {
      this.rungTimer.set(this.host.options.rungTimeoutMs, () => this.onRungTimeout());
    }
  }

  private restartIce(pc: RTCPeerConnection): void {
    // One side restarts, so the two restart offers never collide.
    if (!this.controller) return;
    try {
      // Triggers `negotiationneeded`; perfect negotiation sends the ICE-restart offer.
      pc.restartIce();
    } catch (error) {
      this.reportError("ICE restart failed", error);
    }
  }

  private enqueueNegotiation(payload: Extract<RtcPayload, { t: "sdp" | "ice" }>): void {
    const pc = this.pc;
    if (!pc) return;
    // Not serialized here: the collision check must see the state at arrival, and
    // the RTCPeerConnection's own operations chain keeps the calls in order.
    this.negotiate(pc, payload).catch((error: unknown) => {
      if (this.pc === pc) this.reportError("negotiation failed", error);
    });
  }

  /** The perfect negotiation pattern (W3C WebRTC 1.0, §10.7 "Perfect negotiation example"). */
  private async negotiate(pc: RTCPeerConnection, payload: Extract<RtcPayload, { t: "sdp" | "ice" }>): Promise<void> {
    if (this.pc !== pc) return;
    if (payload.t === "sdp") {
      const description = payload.description;
      const readyForOffer =
        !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const offerCollision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && offerCollision;
      if (this.ignoreOffer) return;
      this.settingRemoteAnswer = description.type === "answer";
      try {
        await pc.setRemoteDescription(description);
      } finally {
        this.settingRemoteAnswer = false;
      }
      if (description.type === "offer") {
        if (!this.mediaReady && this.pc === pc) {
          // Answer the controller's pre-allocated transceivers with sendrecv, carrying our tracks.
          for (const transceiver of pc.getTransceivers()) {
            if (transceiver.direction === "recvonly") transceiver.direction = "sendrecv";
          }
          this.mediaReady = true;
          this.attachLocalTracks(pc);
        }
        await pc.setLocalDescription();
        if (this.pc === pc && pc.localDescription && this.epoch === payload.epoch) {
          this.host.sendSignal(this.peerId, {
            sb: "rtc",
            t: "sdp",
            epoch: payload.epoch,
            description: pc.localDescription.toJSON(),
          });
        }
      }
      return;
    }
    try {
      await pc.addIceCandidate(payload.candidate);
    } catch (error) {
      // Candidates of an offer we ignored are expected to fail.
      if (!this.ignoreOffer) throw error;
    }
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
