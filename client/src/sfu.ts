/**
 * The `sfu` rung's one RTCPeerConnection per page to the room's relay (the
 * relay's session endpoint, docs/PROTOCOL.md "Relay session endpoint"),
 * shared by every pair whose path is `sfu`.
 *
 * Set-up, WHIP-style: the SDK creates an offer with the data channel
 * `switchboard` (`protocol: "switchboard-envelope"`, ordered, reliable), the
 * control channel `switchboard-control` and a send-only transceiver per local
 * track (with one encoding per simulcast layer when the room asks for them:
 * simulcast.ts), waits for ICE gathering (bounded by `gatherTimeoutMs`; the relay is
 * ICE-lite and answers with all of its candidates), and POSTs it to
 * `welcome.sfu.url` with `Authorization: Bearer <token>`. The answer's
 * `Location` is the session; `DELETE` on it ends the session on `close()`.
 * Candidates gathered after the POST are sent with `PATCH`
 * (`application/trickle-ice-sdpfrag`).
 *
 * Data: every message is `<to>\n<json>`; the relay delivers `<from>\n<json>`.
 * Tracks: the relay adds a publisher's tracks by offering over the control
 * channel (`{"type":"offer","sdp"}`, answered `{"type":"answer","sdp"}`); the
 * stream id of a forwarded track is the publisher's peer id. Tracks added
 * later are offered by the SDK over the control channel; the SDK is the
 * impolite side and ignores a relay offer while its own is outstanding (the
 * relay offers again afterwards).
 *
 * The token is only needed to create a session; `SfuSession` keeps the latest
 * one (refreshed by the room via `/v1/sfu-token`) for a new session after a
 * failure.
 *
 * Failures the ladder acts on (the session turns `failed`, every pair on it
 * moves): the `POST` (or a `PATCH` ICE restart) not answered within
 * `requestTimeoutMs`; an SDK offer over the control channel not answered within
 * `controlTimeoutMs`; the connection not back within `restartTimeoutMs` of an
 * ICE restart.
 *
 * ICE restart (RFC 9725 §4.3.2): when ICE turns `disconnected` for
 * `restartDelayMs`, or `failed`, the SDK makes an offer with new ICE
 * credentials, `PATCH`es its `a=ice-ufrag`/`a=ice-pwd` to the session and
 * answers itself with the relay's last description under the relay's new
 * credentials from the `200` fragment. Channels, their unacknowledged data and
 * tracks stay; one restart is tried per outage. A track added during the
 * outage (or one whose control offer was still out when it began) is attached
 * and offered once ICE is connected again: the restart offer may only hold
 * m-sections the relay already has.
 */
import { Clock, Timer } from "./clock.js";
import { SwitchboardError } from "./errors.js";

/** `welcome.sfu` and the answer of `GET /v1/sfu-token`. */
export interface SfuGrant {
  /** The session endpoint (`<relay>/v1/sessions`). */
  url: string;
  /** Bearer token for `POST`. */
  token: string;
  /** Unix seconds from which the relay refuses the token. */
  expires: number;
}

export function isSfuGrant(value: unknown): value is SfuGrant {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.url === "string" && /^https?:\/\//.test(v.url) && typeof v.token === "string" && Number.isFinite(v.expires);
}

export type SfuState = "idle" | "connecting" | "open" | "failed" | "closed";

/** A local track as the page publishes it. */
export interface LocalTrack {
  track: MediaStreamTrack;
  streams: MediaStream[];
  /** Simulcast layers on the relay session (`undefined`: one encoding). */
  sendEncodings?: RTCRtpEncodingParameters[];
}

export interface SfuHost {
  readonly clock: Clock;
  createPeerConnection(config: RTCConfiguration): RTCPeerConnection;
  fetch: typeof fetch;
  grant(): SfuGrant | null;
  localTracks(): ReadonlyArray<LocalTrack>;
  /** A message from `from` (parsed JSON). */
  onMessage(from: string, message: unknown): void;
  onTrack(from: string, track: MediaStreamTrack, streams: readonly MediaStream[]): void;
  onState(state: SfuState): void;
  onError(error: SwitchboardError): void;
}

export const SFU_LABEL = "switchboard";
export const SFU_PROTOCOL = "switchboard-envelope";
export const CONTROL_LABEL = "switchboard-control";

/** Encodes a message for the relay's envelope channel: `<to>\n<json>`. */
export function encodeEnvelope(to: string, message: unknown): string {
  return `${to}\n${JSON.stringify(message)}`;
}

/** Decodes `<from>\n<json>`; `null` when it is not one. */
export function decodeEnvelope(text: string): { from: string; message: unknown } | null {
  const nl = text.indexOf("\n");
  if (nl <= 0) return null;
  try {
    return { from: text.slice(0, nl), message: JSON.parse(text.slice(nl + 1)) };
  } catch {
    return null;
  }
}

export interface SfuOptions {
  /** Longest wait for ICE gathering before the offer is sent with what was gathered. */
  gatherTimeoutMs: number;
  /** Largest `bufferedAmount` of the data channel before `send` refuses (the caller retries). */
  maxBuffer: number;
  /** Longest wait for the relay's answer (status and body) to `POST` or an ICE-restart `PATCH`. */
  requestTimeoutMs: number;
  /** Longest wait for the relay's answer to an offer the SDK sent over the control channel. */
  controlTimeoutMs: number;
  /** How long ICE may stay `disconnected` before the SDK restarts it (`failed` restarts at once). */
  restartDelayMs: number;
  /** Longest wait for the connection to come back after an ICE restart was answered. */
  restartTimeoutMs: number;
}

export const defaultSfuOptions: SfuOptions = {
  gatherTimeoutMs: 2_000,
  maxBuffer: 1024 * 1024,
  requestTimeoutMs: 10_000,
  controlTimeoutMs: 10_000,
  restartDelayMs: 2_000,
  restartTimeoutMs: 10_000,
};

/** The value of the first `a=<name>:` line of an SDP or SDP fragment. */
export function sdpAttribute(sdp: string, name: string): string | null {
  const prefix = `a=${name}:`;
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith(prefix)) return line.slice(prefix.length).trim();
  }
  return null;
}

/**
 * The answer to an ICE-restart offer, made from the relay's last description and the new
 * credentials it sent back: its ICE credentials replaced, and as an answer (the relay is the
 * DTLS server of every session, so a relay offer's `actpass` becomes `passive`).
 */
export function restartAnswer(remoteSdp: string, ufrag: string, pwd: string): string {
  return remoteSdp
    .split(/\r?\n/)
    .map((line) => {
      if (line.startsWith("a=ice-ufrag:")) return `a=ice-ufrag:${ufrag}`;
      if (line.startsWith("a=ice-pwd:")) return `a=ice-pwd:${pwd}`;
      if (line === "a=setup:actpass") return "a=setup:passive";
      return line;
    })
    .join("\r\n");
}

/** What `request` read: status, the `Location` header and the body. */
interface Answered {
  status: number;
  location: string | null;
  text: string;
}

export class SfuSession {
  private pc: RTCPeerConnection | null = null;
  private dc: RTCDataChannel | null = null;
  private control: RTCDataChannel | null = null;
  private location: string | null = null;
  private stateValue: SfuState = "idle";
  private makingOffer = false;
  /** A track was added while the session was being set up: offer it once the control channel is open. */
  private renegotiate = false;
  /** The local tracks given to this connection. */
  private readonly attached = new Map<MediaStreamTrack, LocalTrack>();
  /**
   * From the moment ICE is found lost with a restart to come until ICE is connected again: a
   * track added then is kept in `deferred`, because the restart's offer (answered by the SDK
   * itself from the relay's last description) may only hold m-sections the relay already has.
   */
  private outage = false;
  private readonly deferred: LocalTrack[] = [];
  private readonly pending: RTCIceCandidateInit[] = [];
  private readonly gatherTimer: Timer;
  /** Our offer over the control channel is unanswered when this fires. */
  private readonly controlTimer: Timer;
  /** ICE has been `disconnected` for `restartDelayMs` when this fires. */
  private readonly restartTimer: Timer;
  /** The connection is not back after an ICE restart when this fires. */
  private readonly restartDeadline: Timer;
  /** An ICE restart is being made (offer, PATCH, answer). */
  private restarting = false;
  /** An ICE restart was tried in this outage (reset once ICE is connected again). */
  private restartTried = false;
  /**
   * Control-channel work (answering a relay offer, applying an answer, making an offer) runs one
   * step at a time: a relay offer that arrives while our answer is still being applied must see
   * the result, or it would be taken for glare and ignored.
   */
  private controlChain: Promise<void> = Promise.resolve();
  /** Incremented per session attempt, so a late answer of an abandoned attempt is ignored. */
  private attempt = 0;

  constructor(
    private readonly host: SfuHost,
    private readonly options: SfuOptions = defaultSfuOptions,
  ) {
    this.gatherTimer = new Timer(host.clock);
    this.controlTimer = new Timer(host.clock);
    this.restartTimer = new Timer(host.clock);
    this.restartDeadline = new Timer(host.clock);
  }

  get state(): SfuState {
    return this.stateValue;
  }

  /** Whether `send` can carry a message now. */
  get open(): boolean {
    return this.stateValue === "open" && this.dc?.readyState === "open";
  }

  /** Whether the channel has room for more. */
  hasRoom(): boolean {
    return this.open && (this.dc?.bufferedAmount ?? 0) <= this.options.maxBuffer;
  }

  get peerConnection(): RTCPeerConnection | null {
    return this.pc;
  }

  /** Starts a session unless one is open or being made. */
  ensure(): void {
    if (this.stateValue === "connecting" || this.stateValue === "open" || this.stateValue === "closed") return;
    void this.start();
  }

  /** Sends `message` to peer `to`; `false` when the channel cannot take it now. */
  send(to: string, message: unknown): boolean {
    const dc = this.dc;
    if (!this.open || !dc || dc.bufferedAmount > this.options.maxBuffer) return false;
    try {
      dc.send(encodeEnvelope(to, message));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A local track: sent on the session (renegotiated over the control channel once open), with
   * one encoding per simulcast layer when `sendEncodings` is given. During an ICE restart it waits
   * until the connection is back: the restart offer must describe only what the relay knows.
   */
  addTrack(track: MediaStreamTrack, streams: MediaStream[], sendEncodings?: RTCRtpEncodingParameters[]): void {
    const pc = this.pc;
    if (!pc || this.attached.has(track) || this.stateValue === "closed") return;
    const local: LocalTrack = { track, streams, sendEncodings };
    this.attached.set(track, local);
    if (this.outage) this.deferred.push(local);
    else this.attach(pc, local);
  }

  private attach(pc: RTCPeerConnection, { track, streams, sendEncodings }: LocalTrack): void {
    try {
      pc.addTransceiver(track, sendEncodings ? { direction: "sendonly", streams, sendEncodings } : { direction: "sendonly", streams });
    } catch (error) {
      this.reportError("could not send a track to the relay", error);
    }
  }

  /** The connection is back after an outage: the tracks added meanwhile are attached (and offered). */
  private endOutage(pc: RTCPeerConnection): void {
    this.outage = false;
    for (const local of this.deferred.splice(0)) this.attach(pc, local);
    // A control offer withdrawn for the restart (or a track attached just now) is offered now.
    const control = this.control;
    if (this.renegotiate && control) this.serialized(() => this.offerOverControl(pc, control));
  }

  /** Ends the session (`DELETE`) for good. */
  close(): void {
    if (this.stateValue === "closed") return;
    this.teardown(true);
    this.setState("closed");
  }

  private async start(): Promise<void> {
    const grant = this.host.grant();
    if (!grant) {
      this.fail("no SFU grant (welcome.sfu) to create a session with", undefined);
      return;
    }
    this.teardown(true);
    this.attempt += 1;
    const attempt = this.attempt;
    this.setState("connecting");
    let pc: RTCPeerConnection;
    try {
      pc = this.host.createPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    } catch (error) {
      this.fail("could not create an RTCPeerConnection", error);
      return;
    }
    this.pc = pc;
    this.attached.clear();
    const dc = pc.createDataChannel(SFU_LABEL, { ordered: true, protocol: SFU_PROTOCOL });
    const control = pc.createDataChannel(CONTROL_LABEL, { ordered: true });
    this.dc = dc;
    this.control = control;
    dc.onopen = () => {
      if (this.pc === pc && this.stateValue === "connecting" && pc.connectionState !== "failed") this.setState("open");
      if (this.pc === pc && this.renegotiate) this.serialized(() => this.offerOverControl(pc, control));
    };
    control.onopen = () => {
      if (this.pc === pc && this.renegotiate && this.stateValue === "open") this.serialized(() => this.offerOverControl(pc, control));
    };
    dc.onclose = () => {
      if (this.pc === pc && this.stateValue !== "closed") this.fail("the relay's data channel closed", undefined);
    };
    dc.onmessage = (event) => {
      if (this.pc !== pc || typeof event.data !== "string") return;
      const decoded = decodeEnvelope(event.data);
      if (decoded) this.host.onMessage(decoded.from, decoded.message);
    };
    control.onmessage = (event) => {
      if (this.pc === pc && typeof event.data === "string") {
        const text = event.data;
        this.serialized(() => this.onControl(pc, control, text));
      }
    };
    pc.ontrack = ({ track, streams }) => {
      const from = streams[0]?.id;
      if (this.pc === pc && from) this.host.onTrack(from, track, streams);
    };
    pc.onconnectionstatechange = () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "closed") this.fail("the relay connection is closed", undefined);
      else if (pc.connectionState === "failed") this.onIceLost(pc, true);
    };
    pc.oniceconnectionstatechange = () => {
      if (this.pc !== pc) return;
      const ice = pc.iceConnectionState;
      if (ice === "connected" || ice === "completed") {
        this.restartTimer.clear();
        this.restartDeadline.clear();
        this.restartTried = false;
        // While the restart is still being made, its end attaches the waiting tracks.
        if (this.outage && !this.restarting) this.endOutage(pc);
      } else if (ice === "disconnected" || ice === "failed") {
        this.onIceLost(pc, ice === "failed");
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (this.pc !== pc || !candidate || !candidate.candidate) return;
      this.pending.push(candidate.toJSON());
      if (this.location !== null) void this.trickle(pc);
    };
    // Later tracks (after the session is up) are offered over the control channel.
    pc.onnegotiationneeded = () => {
      if (this.pc !== pc) return;
      this.renegotiate = true;
      if (this.stateValue === "open") this.serialized(() => this.offerOverControl(pc, control));
    };
    for (const { track, streams, sendEncodings } of this.host.localTracks()) this.addTrack(track, streams, sendEncodings);
    try {
      await pc.setLocalDescription(await pc.createOffer());
      // Everything attached so far is in this offer.
      this.renegotiate = false;
      await this.gathered(pc);
      if (this.pc !== pc || attempt !== this.attempt) return;
      const offer = pc.localDescription?.sdp ?? "";
      this.pending.length = 0; // gathered candidates are in the offer
      const response = await this.request(grant.url, {
        method: "POST",
        headers: { authorization: `Bearer ${grant.token}`, "content-type": "application/sdp" },
        body: offer,
      });
      if (this.pc !== pc || attempt !== this.attempt) return;
      if (response.status !== 201) {
        throw new Error(`POST ${grant.url}: HTTP ${response.status} ${response.text.slice(0, 200)}`);
      }
      if (response.location) this.location = new URL(response.location, grant.url).toString();
      await pc.setRemoteDescription({ type: "answer", sdp: response.text });
      if (this.pending.length > 0) void this.trickle(pc);
    } catch (error) {
      if (this.pc === pc) this.fail("could not set up the relay session", error);
    }
  }

  /**
   * `fetch` and read the body, rejected after `requestTimeoutMs` (the request is aborted): a relay
   * that accepts the connection but never answers must not hold the rung in `connecting`.
   */
  private request(url: string, init: RequestInit): Promise<Answered> {
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    const timer = new Timer(this.host.clock);
    const ms = this.options.requestTimeoutMs;
    return new Promise<Answered>((resolve, reject) => {
      timer.set(ms, () => {
        controller?.abort();
        reject(new Error(`${init.method ?? "GET"} ${url}: no answer within ${ms} ms`));
      });
      this.host
        .fetch(url, controller ? { ...init, signal: controller.signal } : init)
        .then(async (response) => ({ status: response.status, location: response.headers.get("location"), text: await response.text() }))
        .then(resolve, reject)
        .finally(() => timer.clear());
    });
  }

  /** ICE lost the relay (`failed` at once, `disconnected` after `restartDelayMs`): restart it once, else fail. */
  private onIceLost(pc: RTCPeerConnection, failed: boolean): void {
    // While a restart is made or awaited, its own deadline decides.
    if (this.restarting || this.restartDeadline.armed) return;
    if (this.stateValue !== "open" || this.location === null || this.restartTried) {
      if (failed) this.fail("the relay connection failed", undefined);
      return;
    }
    this.outage = true;
    if (failed) {
      this.restartTimer.clear();
      this.serialized(() => this.restartIce(pc));
    } else if (!this.restartTimer.armed) {
      this.restartTimer.set(this.options.restartDelayMs, () => this.serialized(() => this.restartIce(pc)));
    }
  }

  /** ICE restart over `PATCH` (RFC 9725 §4.3.2), keeping the session, its channels and tracks. */
  private async restartIce(pc: RTCPeerConnection): Promise<void> {
    const location = this.location;
    const ice = pc.iceConnectionState;
    if (this.pc !== pc || this.restarting || this.restartTried || !location) return;
    if (ice === "connected" || ice === "completed") return;
    this.restarting = true;
    this.restartTried = true;
    try {
      if (pc.signalingState === "have-local-offer") {
        // Our control offer cannot be answered over a broken path: withdraw it, offer it again later.
        await pc.setLocalDescription({ type: "rollback" });
        this.makingOffer = false;
        this.controlTimer.clear();
        this.renegotiate = true;
      }
      // Tracks added since the last answer have no m-section yet (or lost it in the rollback):
      // the relay does not know them, so they wait for the connection to be back, on new
      // transceivers (a stopped transceiver without a mid is left out of every offer).
      for (const transceiver of pc.getTransceivers()) {
        const local = transceiver.sender.track ? this.attached.get(transceiver.sender.track) : undefined;
        if (transceiver.mid !== null || transceiver.currentDirection === "stopped" || !local) continue;
        transceiver.stop();
        this.deferred.push(local);
      }
      const remote = pc.remoteDescription?.sdp;
      if (pc.signalingState !== "stable" || !remote) throw new Error(`signaling state ${pc.signalingState}`);
      const offer = await pc.createOffer({ iceRestart: true });
      const ufrag = sdpAttribute(offer.sdp ?? "", "ice-ufrag");
      const pwd = sdpAttribute(offer.sdp ?? "", "ice-pwd");
      if (!ufrag || !pwd) throw new Error("the restart offer has no ICE credentials");
      await pc.setLocalDescription(offer);
      const response = await this.request(location, {
        method: "PATCH",
        headers: { "content-type": "application/trickle-ice-sdpfrag" },
        body: `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\n`,
      });
      if (this.pc !== pc) return;
      if (response.status !== 200) throw new Error(`PATCH (ICE restart): HTTP ${response.status} ${response.text.slice(0, 200)}`);
      const relayUfrag = sdpAttribute(response.text, "ice-ufrag");
      const relayPwd = sdpAttribute(response.text, "ice-pwd");
      if (!relayUfrag || !relayPwd) throw new Error("the relay's restart answer has no ICE credentials");
      await pc.setRemoteDescription({ type: "answer", sdp: restartAnswer(remote, relayUfrag, relayPwd) });
      if (this.pc !== pc) return;
      const back = pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed";
      if (back) this.endOutage(pc);
      else {
        const ms = this.options.restartTimeoutMs;
        this.restartDeadline.set(ms, () => {
          if (this.pc === pc) this.fail(`the relay connection did not come back within ${ms} ms of an ICE restart`, undefined);
        });
      }
    } catch (error) {
      if (this.pc === pc) this.fail("ICE restart with the relay failed", error);
    } finally {
      this.restarting = false;
    }
  }

  /** Resolves when ICE gathering completes or after `gatherTimeoutMs`. */
  private gathered(pc: RTCPeerConnection): Promise<void> {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.gatherTimer.clear();
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      pc.addEventListener("icegatheringstatechange", check);
      this.gatherTimer.set(this.options.gatherTimeoutMs, done);
    });
  }

  private async trickle(pc: RTCPeerConnection): Promise<void> {
    const location = this.location;
    if (!location || this.pending.length === 0) return;
    const candidates = this.pending.splice(0);
    const mid = candidates[0]?.sdpMid ?? "0";
    const body = [`a=mid:${mid}`, ...candidates.map((c) => `a=${c.candidate}`)].join("\r\n") + "\r\n";
    try {
      const response = await this.host.fetch(location, {
        method: "PATCH",
        headers: { "content-type": "application/trickle-ice-sdpfrag" },
        body,
      });
      if (this.pc === pc && response.status !== 204) throw new Error(`PATCH: HTTP ${response.status}`);
    } catch (error) {
      // A lost candidate only narrows the choice; the relay's candidates are all in its answer.
      if (this.pc === pc) this.reportError("could not trickle a candidate to the relay", error);
    }
  }

  private async onControl(pc: RTCPeerConnection, control: RTCDataChannel, text: string): Promise<void> {
    let message: { type?: unknown; sdp?: unknown };
    try {
      message = JSON.parse(text) as { type?: unknown; sdp?: unknown };
    } catch {
      return;
    }
    if (typeof message.sdp !== "string") return;
    try {
      if (message.type === "offer") {
        // Impolite: our own offer is outstanding; the relay offers again after answering it.
        if (this.makingOffer || this.restarting || pc.signalingState !== "stable") return;
        // Made before an ICE restart (the old credentials): the relay offers again with the new ones.
        const current = pc.remoteDescription ? sdpAttribute(pc.remoteDescription.sdp, "ice-ufrag") : null;
        if (current !== null && sdpAttribute(message.sdp, "ice-ufrag") !== current) return;
        await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        await pc.setLocalDescription();
        if (this.pc === pc && pc.localDescription) {
          control.send(JSON.stringify({ type: "answer", sdp: pc.localDescription.sdp }));
        }
      } else if (message.type === "answer") {
        if (pc.signalingState !== "have-local-offer") return;
        await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        this.makingOffer = false;
        this.controlTimer.clear();
        // A track added while this offer was out is offered next.
        if (this.renegotiate && this.pc === pc) this.serialized(() => this.offerOverControl(pc, control));
      }
    } catch (error) {
      if (this.pc === pc) this.reportError("renegotiation with the relay failed", error);
    }
  }

  private serialized(step: () => Promise<void>): void {
    this.controlChain = this.controlChain.then(step, step);
  }

  private async offerOverControl(pc: RTCPeerConnection, control: RTCDataChannel): Promise<void> {
    if (this.makingOffer || pc.signalingState !== "stable" || control.readyState !== "open") return;
    try {
      this.makingOffer = true;
      this.renegotiate = false;
      await pc.setLocalDescription(await pc.createOffer());
      if (this.pc === pc && pc.localDescription) {
        control.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
        const ms = this.options.controlTimeoutMs;
        this.controlTimer.set(ms, () => {
          if (this.pc === pc && this.makingOffer) this.fail(`the relay did not answer a control-channel offer within ${ms} ms`, undefined);
        });
      }
    } catch (error) {
      this.makingOffer = false;
      if (this.pc === pc) this.reportError("could not offer a track to the relay", error);
    }
  }

  private fail(message: string, cause: unknown): void {
    if (this.stateValue === "closed") return;
    this.reportError(message, cause);
    this.teardown(true);
    this.setState("failed");
  }

  /** Drops the current connection; `remove` also DELETEs the session on the relay. */
  private teardown(remove: boolean): void {
    this.gatherTimer.clear();
    this.controlTimer.clear();
    this.restartTimer.clear();
    this.restartDeadline.clear();
    this.restarting = false;
    this.restartTried = false;
    this.outage = false;
    this.deferred.length = 0;
    const pc = this.pc;
    this.pc = null;
    this.makingOffer = false;
    this.renegotiate = false;
    this.pending.length = 0;
    if (remove && this.location) {
      const location = this.location;
      this.host.fetch(location, { method: "DELETE", keepalive: true }).catch(() => undefined);
    }
    this.location = null;
    for (const channel of [this.dc, this.control]) {
      if (!channel) continue;
      channel.onopen = channel.onclose = channel.onmessage = null;
      channel.close();
    }
    this.dc = this.control = null;
    if (pc) {
      pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = pc.onicecandidate = pc.onnegotiationneeded = null;
      pc.close();
    }
  }

  private setState(state: SfuState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.host.onState(state);
  }

  private reportError(message: string, cause: unknown): void {
    this.host.onError(new SwitchboardError("webrtc", `${message} (sfu)`, { cause }));
  }
}
