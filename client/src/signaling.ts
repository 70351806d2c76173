/**
 * The signaling connection: one logical session with a room that survives
 * dropped WebSockets. Owns the socket, the heartbeat, reconnect with backoff,
 * resume (`resume_token` + `last_seq`), `ack`s of server frames, and the
 * bounded outbox of client frames.
 *
 * With a room that announces `rev >= 1` in `welcome` (protocol v1.1), every
 * `signal`, `broadcast` and `relay` frame carries `cseq` and stays in the
 * outbox until the room acknowledged it (`ack`) or refused it (an `error`
 * carrying its `cseq`); after a resume the outbox is sent again from the
 * first frame the room has not processed (`welcome.cseq`), so a frame written
 * into a half-open socket is neither lost nor delivered twice. With a v1 room
 * a frame leaves the outbox once it is written to a socket.
 *
 * Writes are paced by a token bucket with the room's announced limits, so the
 * client never trips the room's rate limit by itself.
 *
 * It knows nothing about WebRTC; the WebSocket constructor, `fetch` and the
 * clock are injected so unit tests can drive it with fakes and fake timers.
 */
import { Clock, Timer, systemClock } from "./clock.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError, type ServerErrorCode } from "./errors.js";
import {
  CloseCode,
  DEFAULT_LIMITS,
  PING_TEXT,
  parseServerFrame,
  type ErrorFrame,
  type IceServer,
  type OutboxFrame,
  type RelaysChangedFrame,
  type RoomLimits,
  type SequencedFrame,
  type ServerFrame,
  type WelcomeFrame,
} from "./protocol.js";

/** The part of the browser `WebSocket` the connection uses. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(text: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

/** A fixed JWT, or a function returning a fresh one, called before every (re)connect. */
export type TokenSource = string | (() => string | Promise<string>);

const OPEN = 1;

export interface BackoffOptions {
  /** First retry delay before jitter. */
  initialMs: number;
  /** Upper bound of the delay before jitter. */
  maxMs: number;
  /** Growth per failed attempt. */
  factor: number;
}

export const defaultBackoff: BackoffOptions = { initialMs: 500, maxMs: 15_000, factor: 2 };

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential growth,
 * capped, with "equal jitter" (half fixed, half random) so a room full of
 * clients dropped by one deploy does not reconnect in lockstep, while no
 * client retries with a zero delay.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
  const base = Math.min(options.maxMs, options.initialMs * Math.pow(options.factor, attempt));
  return Math.round(base / 2 + random() * (base / 2));
}

/** The `n` of a close reason `retry_after_ms=<n>` (close 4003), or `null`. */
export function retryAfterFromReason(reason: string): number | null {
  const match = /^retry_after_ms=(\d{1,9})$/.exec(reason);
  return match ? Number(match[1]) : null;
}

export interface SignalingOptions {
  /** `ws(s)://host/v1/rooms/<room>` */
  url: string;
  token?: TokenSource;
  meta?: unknown;
  createWebSocket?: WebSocketFactory;
  /**
   * Checks a failed connection attempt for an HTTP 401 (browsers hide the
   * status of a refused WebSocket upgrade): `GET /v1/ice-servers` with the
   * token. Defaults to the global `fetch` in browsers, none elsewhere.
   */
  fetch?: typeof fetch;
  clock?: Clock;
  random?: () => number;
  backoff?: Partial<BackoffOptions>;
  /** Reconnecting stops after this long without a `welcome`, with a final `reconnect_timeout` error. */
  giveUpAfterMs?: number;
  /** Most frames in the outbox (unwritten, or written and not yet acknowledged); beyond it sends reject with `backpressure`. */
  maxQueuedFrames?: number;
  /** Most bytes in the outbox. */
  maxQueuedBytes?: number;
  /** The socket's `bufferedAmount` above which frames wait in the outbox instead of being written. */
  highWaterMark?: number;
  /** How often a waiting outbox re-checks `bufferedAmount` (WebSocket has no drain event). */
  drainPollMs?: number;
  /** Acknowledge server frames at once after this many unacknowledged frames… */
  ackEvery?: number;
  /** …or this long after the first unacknowledged one (default: the room's `welcome.limits.ack_delay_ms`, else 500). */
  ackDelayMs?: number;
  /** A connection attempt that has not produced `welcome` by then is abandoned and retried. */
  connectTimeoutMs?: number;
  /**
   * `"off"` joins with `presence=off`, for large rooms: this connection is sent no `peer-joined` or
   * `peer-left` and an empty `welcome.peers`, while the others still see it join and leave and can
   * signal it by id. A room admits at most `PRESENCE_MAX_PEERS` peers with presence on (error
   * `presence_full`). Default `"on"`. `Room` needs presence; this is for `SignalingConnection` users.
   */
  presence?: "on" | "off";
}

export type SignalingState = "connecting" | "open" | "reconnecting" | "closed";

export interface SignalingEvents {
  /** Every accepted connection; `resumed: false` with a `previousPeerId` means a new identity. */
  welcome: { frame: WelcomeFrame; previousPeerId: string | undefined };
  /** Each sequenced frame exactly once, in `seq` order, across reconnects. */
  frame: SequencedFrame;
  error: SwitchboardError;
  state: { state: SignalingState; attempt: number; delayMs?: number; reason?: string };
  /** The room's relays changed (`relays-changed`, opt-in with `caps=relays`): fresh ICE servers and SFU grant. */
  relays: RelaysChangedFrame;
}

interface OutboxEntry {
  frame: OutboxFrame;
  /** Assigned at the first write to a v1.1 room; 0 until then. */
  cseq: number;
  bytes: number;
  resolve: () => void;
  reject: (error: SwitchboardError) => void;
}

const SERVER_CODES: ReadonlySet<string> = new Set<ServerErrorCode>([
  "bad_json",
  "invalid_frame",
  "unknown_type",
  "unsupported_frame",
  "payload_too_large",
  "unknown_peer",
  "rate_limited",
  "queue_full",
  "out_of_order",
  "unauthorized",
  "resume_failed",
  "room_full",
  "presence_full",
  "internal",
]);

/**
 * Room of the fields the connection adds to a frame (`,"cseq":<up to 16 digits>` and
 * `,"ack":<up to 16 digits>`), counted when checking the size limit.
 */
const FIELDS_OVERHEAD = 24 + 23;

function byteLength(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** A snapshot for `room.diagnostics()`. */
export interface SignalingDiagnostics {
  state: SignalingState;
  peerId: string | undefined;
  traceId: string | undefined;
  rev: number;
  lastSeq: number;
  /** The highest `cseq` written, and the highest the room acknowledged. */
  cseqSent: number;
  cseqAcked: number;
  outboxFrames: number;
  outboxBytes: number;
  attempt: number;
  limits: RoomLimits;
  tokens: number;
}

export class SignalingConnection {
  readonly events: Emitter<SignalingEvents>;

  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly createWebSocket: WebSocketFactory;
  private readonly fetchFn: typeof fetch | undefined;
  private readonly backoff: BackoffOptions;
  private readonly giveUpAfterMs: number;
  private readonly maxQueuedFrames: number;
  private readonly maxQueuedBytes: number;
  private readonly highWaterMark: number;
  private readonly drainPollMs: number;
  private readonly ackEvery: number;
  private readonly ackDelayOption: number | undefined;
  private readonly connectTimeoutMs: number;

  private ws: WebSocketLike | undefined;
  private welcomed = false;
  private stateValue: SignalingState = "connecting";
  private attempt = 0;
  private everWelcomed = false;
  private lastServerError: SwitchboardError | undefined;
  /** When the session lost its last welcomed socket (for `giveUpAfterMs`); `undefined` while open. */
  private downSince: number | undefined;
  /** A 401 was seen and the token function was asked once more. */
  private authRetried = false;
  /** Bumped per connection attempt, so a late token or probe answer for an old attempt is ignored. */
  private attemptId = 0;

  private peerIdValue: string | undefined;
  private resumeTokenValue: string | undefined;
  private traceIdValue: string | undefined;
  private rev = 0;
  private limits: RoomLimits = DEFAULT_LIMITS;
  private lastSeqValue = 0;
  private lastAckedSeq = 0;
  private heartbeatMs = 30_000;
  private unansweredPings = 0;
  private iceServersValue: IceServer[] = [];

  /** Client frames in order: `[0, written)` were written on the current socket (v1.1: awaiting the room's decision). */
  private outbox: OutboxEntry[] = [];
  private written = 0;
  private outboxBytes = 0;
  private nextCseq = 1;
  private cseqAcked = 0;
  /** Entries the room processed before a resume (cseq <= welcome.cseq) whose outcome arrives after it. */
  private decided: OutboxEntry[] = [];
  /**
   * Per sender, the highest `cseq` delivered to this client. After a Worker
   * restart the room may deliver a frame again (same sender and `cseq`, new
   * `seq`); a sender's frames reach a recipient in `cseq` order, so anything
   * at or below this is such a duplicate.
   */
  private readonly senderCseq = new Map<string, number>();

  /** The client-side token bucket (`limits.rate_per_s`, `limits.rate_burst`). */
  private tokens = DEFAULT_LIMITS.rate_burst;
  private tokensAt = 0;
  /** `rate_limited`: the room drops frames until then. */
  private pausedUntil = 0;

  private readonly heartbeatTimer: Timer;
  private readonly reconnectTimer: Timer;
  private readonly ackTimer: Timer;
  private readonly drainTimer: Timer;
  private readonly connectTimer: Timer;

  private firstWelcome: { resolve: (frame: WelcomeFrame) => void; reject: (error: SwitchboardError) => void } | undefined;

  constructor(private readonly options: SignalingOptions) {
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.createWebSocket =
      options.createWebSocket ?? ((url) => new WebSocket(url) as unknown as WebSocketLike);
    this.fetchFn =
      options.fetch ?? (typeof document !== "undefined" && typeof fetch === "function" ? fetch.bind(globalThis) : undefined);
    this.backoff = { ...defaultBackoff, ...options.backoff };
    this.giveUpAfterMs = options.giveUpAfterMs ?? 300_000;
    this.maxQueuedFrames = options.maxQueuedFrames ?? 256;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 1024 * 1024;
    this.highWaterMark = options.highWaterMark ?? 256 * 1024;
    this.drainPollMs = options.drainPollMs ?? 50;
    this.ackEvery = options.ackEvery ?? 16;
    this.ackDelayOption = options.ackDelayMs;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.events = new Emitter<SignalingEvents>((error, name) => {
      const wrapped = new SwitchboardError("listener", `a "${String(name)}" listener threw`, { cause: error });
      // A throwing `error` listener is logged rather than re-emitted, which could loop.
      if (name !== "error" && this.events.listenerCount("error") > 0) this.events.emit("error", wrapped);
      else console.error(wrapped);
    });
    this.heartbeatTimer = new Timer(this.clock);
    this.reconnectTimer = new Timer(this.clock);
    this.ackTimer = new Timer(this.clock);
    this.drainTimer = new Timer(this.clock);
    this.connectTimer = new Timer(this.clock);
    this.tokensAt = this.clock.now();
  }

  get state(): SignalingState {
    return this.stateValue;
  }
  get peerId(): string | undefined {
    return this.peerIdValue;
  }
  get resumeToken(): string | undefined {
    return this.resumeTokenValue;
  }
  /** This peer's `trace_id` (v1.1), for logs and error reports. */
  get traceId(): string | undefined {
    return this.traceIdValue;
  }
  /** The highest `seq` processed; sent as `last_seq` on resume. */
  get lastSeq(): number {
    return this.lastSeqValue;
  }
  get iceServers(): IceServer[] {
    return this.iceServersValue;
  }
  /** Frames in the outbox: not yet written, or (v1.1) written and not yet acknowledged. */
  get queuedFrames(): number {
    return this.outbox.length;
  }
  /** Whether the outbox is below half its bound (callers that can wait, like the pair streams, keep it so). */
  hasRoom(): boolean {
    return this.outbox.length < this.maxQueuedFrames / 2 && this.outboxBytes < this.maxQueuedBytes / 2;
  }
  /** The largest `data`/`payload` JSON that fits in a frame the room accepts. */
  get maxFrameBytes(): number {
    return this.limits.max_frame_bytes;
  }

  diagnostics(): SignalingDiagnostics {
    return {
      state: this.stateValue,
      peerId: this.peerIdValue,
      traceId: this.traceIdValue,
      rev: this.rev,
      lastSeq: this.lastSeqValue,
      cseqSent: this.nextCseq - 1,
      cseqAcked: this.cseqAcked,
      outboxFrames: this.outbox.length,
      outboxBytes: this.outboxBytes,
      attempt: this.attempt,
      limits: this.limits,
      tokens: Math.floor(this.refillTokens()),
    };
  }

  /** Opens the first connection; resolves with the first `welcome`. */
  connect(): Promise<WelcomeFrame> {
    return new Promise((resolve, reject) => {
      this.firstWelcome = { resolve, reject };
      this.open();
    });
  }

  /**
   * Puts a frame in the outbox. With a v1.1 room it resolves when the room
   * accepted the frame and rejects with the typed error the room gave for it
   * (carrying its `cseq`); with a v1 room it resolves once the frame is
   * written to a socket (possibly after a reconnect). Rejects at once with
   * `backpressure` when the outbox is at its bound, with `payload_too_large`
   * when the frame exceeds the room's `max_frame_bytes`, or with `closed`.
   */
  send(frame: OutboxFrame): Promise<void> {
    if (this.stateValue === "closed") {
      return Promise.reject(this.error("closed", "the room was left"));
    }
    const bytes = byteLength(JSON.stringify(frame));
    if (bytes + FIELDS_OVERHEAD > this.limits.max_frame_bytes) {
      return Promise.reject(
        this.error("payload_too_large", `a ${bytes}-byte frame exceeds the room's ${this.limits.max_frame_bytes}-byte limit`),
      );
    }
    if (this.outbox.length >= this.maxQueuedFrames || this.outboxBytes + bytes > this.maxQueuedBytes) {
      return Promise.reject(
        this.error("backpressure", `outbox full (${this.outbox.length} frames, ${this.outboxBytes} bytes)`),
      );
    }
    return new Promise((resolve, reject) => {
      this.outbox.push({ frame, cseq: 0, bytes, resolve, reject });
      this.outboxBytes += bytes;
      this.flush();
    });
  }

  /** Leaves the room for good: `leave`, then close 1000. */
  leave(): void {
    if (this.stateValue === "closed") return;
    const ws = this.ws;
    this.flush();
    if (ws && ws.readyState === OPEN && this.welcomed) ws.send(JSON.stringify({ type: "leave" }));
    this.shutdown("left");
    ws?.close(CloseCode.Normal, "leave");
  }

  /** Closes without `leave` (the server keeps the peer resumable for the resume window). */
  close(): void {
    if (this.stateValue === "closed") return;
    const ws = this.ws;
    this.shutdown("closed");
    ws?.close(CloseCode.Normal, "closed");
  }

  /** Drops the current socket as if the network failed, then reconnects (for tests and demos). */
  dropConnection(): void {
    if (this.stateValue === "closed" || !this.ws) return;
    this.abandonSocket(4000, "dropped by client");
  }

  /** The token for the next attempt: the fixed one, or a fresh one from the token function. */
  private async currentToken(): Promise<string | undefined> {
    const source = this.options.token;
    return typeof source === "function" ? await source() : source;
  }

  private buildUrl(token: string | undefined): string {
    const url = new URL(this.options.url);
    if (this.options.meta !== undefined) url.searchParams.set("meta", JSON.stringify(this.options.meta));
    if (token !== undefined) url.searchParams.set("token", token);
    // This client handles `relays-changed` (the room pushes relay failover to it) and reads
    // `acked` on the frames it is sent (the room's acks ride on them, v1.2).
    url.searchParams.set("caps", "relays,acks");
    if (this.options.presence === "off") url.searchParams.set("presence", "off");
    if (this.resumeTokenValue !== undefined) {
      url.searchParams.set("resume", this.resumeTokenValue);
      url.searchParams.set("last_seq", String(this.lastSeqValue));
    }
    return url.toString();
  }

  private open(): void {
    this.welcomed = false;
    this.setState(this.everWelcomed ? "reconnecting" : "connecting");
    const id = ++this.attemptId;
    if (typeof this.options.token === "function") {
      this.currentToken().then(
        (token) => {
          if (id === this.attemptId && this.stateValue !== "closed") this.openWith(token);
        },
        (cause: unknown) => {
          if (id !== this.attemptId || this.stateValue === "closed") return;
          this.emitError(this.error("unauthorized", "the token function failed", { cause }));
          this.onSocketGone(undefined, 1006, "no token");
        },
      );
    } else {
      this.openWith(this.options.token);
    }
  }

  private openWith(token: string | undefined): void {
    let ws: WebSocketLike;
    try {
      ws = this.createWebSocket(this.buildUrl(token));
    } catch (error) {
      this.onSocketGone(undefined, 1006, String(error));
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      if (typeof event.data !== "string") return;
      this.onText(event.data);
    };
    ws.onclose = (event) => this.onSocketGone(ws, event.code, event.reason, token);
    // `error` is always followed by `close`; the close handler decides what happens.
    ws.onerror = () => undefined;
    this.connectTimer.set(this.connectTimeoutMs, () => {
      if (this.ws === ws && !this.welcomed) this.abandonSocket(4000, "no welcome in time");
    });
  }

  /** Forgets a socket at once (without waiting for a close handshake that may never come) and reconnects. */
  private abandonSocket(code: number, reason: string, delayMs?: number): void {
    const ws = this.ws;
    if (!ws) return;
    this.detach(ws);
    try {
      ws.close(code, reason);
    } catch {
      // Closing a socket that is still connecting may throw in some runtimes; it is being dropped anyway.
    }
    this.onSocketGone(ws, 1006, reason, undefined, delayMs);
  }

  private detach(ws: WebSocketLike): void {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    ws.onopen = null;
  }

  private onSocketGone(
    ws: WebSocketLike | undefined,
    code: number,
    reason: string,
    token?: string,
    delayOverrideMs?: number,
  ): void {
    if (ws !== this.ws) return;
    const hadWelcome = this.welcomed;
    this.ws = undefined;
    this.welcomed = false;
    this.written = 0;
    this.heartbeatTimer.clear();
    this.ackTimer.clear();
    this.drainTimer.clear();
    this.connectTimer.clear();
    if (this.stateValue === "closed") return;
    if (this.downSince === undefined) this.downSince = this.clock.now();

    if (code === CloseCode.Replaced) {
      this.shutdown("replaced", this.error("closed", "replaced by a newer connection of this peer"));
      return;
    }
    if (code === CloseCode.RoomFull) {
      this.shutdown("room full", this.lastServerError ?? this.error("room_full", "the room is full", { source: "server" }));
      return;
    }
    if (!this.everWelcomed && this.lastServerError) {
      this.shutdown(this.lastServerError.message, this.lastServerError);
      return;
    }
    // A refused upgrade shows up as a close without any frame; the HTTP status is only visible to a probe.
    if (!hadWelcome && ws !== undefined && this.fetchFn) {
      const id = this.attemptId;
      void this.checkAuthorized(token).then((authorized) => {
        if (id !== this.attemptId || this.stateValue === "closed") return;
        if (authorized) this.afterFailedAttempt(code, reason, delayOverrideMs);
        else this.onUnauthorized();
      });
      return;
    }
    this.afterFailedAttempt(code, reason, delayOverrideMs);
  }

  private afterFailedAttempt(code: number, reason: string, delayOverrideMs?: number): void {
    if (!this.everWelcomed) {
      this.shutdown(
        "could not join",
        this.error("connect_failed", `could not join (close ${code}${reason ? `: ${reason}` : ""})`),
      );
      return;
    }
    const elapsed = this.clock.now() - (this.downSince ?? this.clock.now());
    if (elapsed >= this.giveUpAfterMs) {
      this.shutdown(
        "gave up reconnecting",
        this.error("reconnect_timeout", `no connection for ${Math.round(elapsed / 1000)} s; giving up`),
      );
      return;
    }
    let delayMs: number;
    const retryAfter = code === CloseCode.GoingAway ? retryAfterFromReason(reason) : null;
    if (delayOverrideMs !== undefined) {
      delayMs = delayOverrideMs;
    } else if (retryAfter !== null) {
      // Full jitter over the announced window, so a drained room does not come back all at once.
      delayMs = Math.round(this.random() * retryAfter);
    } else {
      delayMs = backoffDelay(this.attempt, this.backoff, this.random);
      this.attempt += 1;
    }
    delayMs = Math.min(delayMs, Math.max(0, this.giveUpAfterMs - elapsed));
    this.setState("reconnecting", delayMs, `close ${code}${reason ? `: ${reason}` : ""}`);
    this.reconnectTimer.set(delayMs, () => this.open());
  }

  /** `GET /v1/ice-servers` with the token: `false` only for a 401 (the token is not accepted). */
  private async checkAuthorized(token: string | undefined): Promise<boolean> {
    const fetchFn = this.fetchFn;
    if (!fetchFn) return true;
    const url = new URL(this.options.url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = url.pathname.replace(/\/v1\/rooms\/[^/]*$/, "/v1/ice-servers");
    url.search = "";
    try {
      const headers: Record<string, string> = {};
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      const response = await fetchFn(url.toString(), { headers });
      return response.status !== 401;
    } catch {
      return true; // unreachable: a network problem, not a refusal
    }
  }

  /** The room refused the token: once more with a fresh one from the token function, then give up. */
  private onUnauthorized(): void {
    if (typeof this.options.token === "function" && !this.authRetried) {
      this.authRetried = true;
      this.setState("reconnecting", 0, "unauthorized: fetching a fresh token");
      this.reconnectTimer.set(0, () => this.open());
      return;
    }
    this.shutdown("unauthorized", this.error("unauthorized", "the room refused the token (HTTP 401)", { source: "server" }));
  }

  private onText(text: string): void {
    // Any frame proves the connection is alive, not only `pong`.
    this.unansweredPings = 0;
    const frame = parseServerFrame(text);
    if (!frame) {
      this.emitError(this.error("internal", "the server sent a frame this client does not understand"));
      return;
    }
    this.onFrame(frame);
    // The room's ack riding on the frame (v1.2) counts after the frame: a refusal it carries
    // is read first.
    const acked = "acked" in frame ? frame.acked : undefined;
    if (typeof acked === "number" && Number.isSafeInteger(acked) && acked >= 0) this.onAck(acked);
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        return;
      case "pong":
        return;
      case "relays-changed":
        this.events.emit("relays", frame);
        return;
      case "ack":
        this.onAck(frame.cseq);
        return;
      case "error":
        // A refusal of a frame is part of the sequenced stream (v1.1): in order, once, resumable.
        if (frame.seq !== undefined) this.onSequenced(frame as ErrorFrame & { seq: number });
        else this.onError(frame);
        return;
      default:
        this.onSequenced(frame);
    }
  }

  private onWelcome(frame: WelcomeFrame): void {
    const previousPeerId = this.peerIdValue;
    this.connectTimer.clear();
    this.welcomed = true;
    this.attempt = 0;
    this.downSince = undefined;
    this.authRetried = false;
    this.lastServerError = undefined;
    this.rev = typeof frame.rev === "number" ? frame.rev : 0;
    this.limits = validLimits(frame.limits) ?? DEFAULT_LIMITS;
    if (typeof frame.trace_id === "string") this.traceIdValue = frame.trace_id;
    if (!frame.resumed) {
      // A fresh identity: the server numbers frames from 1 again, and forgot this client's cseq.
      this.lastSeqValue = 0;
      this.lastAckedSeq = 0;
      this.senderCseq.clear();
      if (previousPeerId !== undefined) this.failOutbox(this.error("resume_failed", "the session was not resumed; frames of the old session were dropped", { source: "server" }));
      this.nextCseq = 1;
      this.cseqAcked = 0;
      this.tokens = Math.max(1, this.limits.rate_burst - 2);
      this.tokensAt = this.clock.now();
    } else if (this.rev >= 1) {
      this.onResumedOutbox(typeof frame.cseq === "number" ? frame.cseq : 0);
    }
    this.peerIdValue = frame.peer_id;
    this.resumeTokenValue = frame.resume_token;
    this.heartbeatMs = frame.heartbeat_ms > 0 ? frame.heartbeat_ms : 30_000;
    this.iceServersValue = Array.isArray(frame.ice_servers) ? frame.ice_servers : [];
    this.unansweredPings = 0;
    this.scheduleHeartbeat();
    const first = !this.everWelcomed;
    this.everWelcomed = true;
    this.setState("open");
    this.events.emit("welcome", { frame, previousPeerId });
    if (first && this.firstWelcome) {
      this.firstWelcome.resolve(frame);
      this.firstWelcome = undefined;
    }
    this.flush();
  }

  /**
   * A resume with a v1.1 room: entries up to `welcome.cseq` were processed
   * (their refusals, if any, are replayed in the sequenced stream right after
   * this welcome); the rest are written again, in order, by `flush`.
   */
  private onResumedOutbox(processed: number): void {
    this.cseqAcked = Math.max(this.cseqAcked, processed);
    while (this.outbox.length > 0 && this.outbox[0]!.cseq !== 0 && this.outbox[0]!.cseq <= processed) {
      const entry = this.outbox.shift()!;
      this.outboxBytes -= entry.bytes;
      this.decided.push(entry);
    }
    const last = this.decided.at(-1);
    if (last && this.outbox.length === 0 && this.ws) {
      // Nothing to resend, so no ack would come to settle them: a duplicate of the last one is
      // answered with an `ack` (never delivered twice), after the replay of any refusal.
      this.ws.send(JSON.stringify({ ...last.frame, cseq: last.cseq }));
    }
  }

  private onAck(cseq: number): void {
    if (this.rev < 1) return;
    this.cseqAcked = Math.max(this.cseqAcked, cseq);
    this.settleUpTo(cseq + 1, undefined);
  }

  /** Resolves every entry below `below`; rejects the entry `below` with `error` when given. */
  private settleUpTo(below: number, error: SwitchboardError | undefined): void {
    for (const list of [this.decided, this.outbox]) {
      let removed = 0;
      while (list.length > 0) {
        const entry = list[0]!;
        if (entry.cseq === 0) break;
        if (entry.cseq < below) entry.resolve();
        else if (error && entry.cseq === below) entry.reject(error);
        else break;
        list.shift();
        removed += 1;
        if (list === this.outbox) this.outboxBytes -= entry.bytes;
      }
      if (list === this.outbox) this.written = Math.max(0, this.written - removed);
    }
    this.flush();
  }

  /** An error frame outside the sequenced stream. */
  private onError(frame: ErrorFrame): void {
    const error = this.serverError(frame);
    if (frame.code === "rate_limited") {
      // The room drops frames until retry_after_ms has passed; send again from the first refused one.
      const retryAfter = frame.retry_after_ms ?? 1000;
      this.pausedUntil = this.clock.now() + retryAfter;
      this.tokens = 0;
      this.tokensAt = this.pausedUntil;
      if (frame.cseq !== undefined) this.rewind(frame.cseq);
      this.emitError(error);
      this.flush();
      return;
    }
    if (frame.code === "out_of_order" && frame.expected !== undefined) {
      this.rewind(frame.expected);
      this.emitError(error);
      this.flush();
      return;
    }
    if (frame.cseq !== undefined && this.rev >= 1) {
      // A refusal outside the sequenced stream (should not happen in v1.1): still settle the frame.
      this.settleUpTo(frame.cseq, error);
      return;
    }
    this.lastServerError = error;
    this.emitError(error);
  }

  /** The next write starts at the entry with `cseq` (or the first one without a cseq). */
  private rewind(cseq: number): void {
    const index = this.outbox.findIndex((entry) => entry.cseq === 0 || entry.cseq >= cseq);
    this.written = Math.min(this.written, index < 0 ? this.outbox.length : index);
  }

  private onSequenced(frame: SequencedFrame | (ErrorFrame & { seq: number })): void {
    // A replay after resume starts at last_seq + 1; anything at or below it was processed already.
    if (frame.seq <= this.lastSeqValue) return;
    if (frame.seq > this.lastSeqValue + 1) {
      // Frames went missing: resume from the last contiguous one rather than skip them.
      this.abandonSocket(4000, `gap in seq (${this.lastSeqValue} then ${frame.seq})`, 0);
      return;
    }
    this.lastSeqValue = frame.seq;
    if ((frame.type === "signal" || frame.type === "relay") && typeof frame.cseq === "number") {
      const seen = this.senderCseq.get(frame.from) ?? 0;
      if (frame.cseq <= seen) {
        this.scheduleAck();
        return;
      }
      this.senderCseq.set(frame.from, frame.cseq);
    }
    if (frame.type === "error") {
      const error = this.serverError(frame);
      if (frame.cseq !== undefined) this.settleUpTo(frame.cseq, error);
      else this.emitError(error);
    } else {
      this.events.emit("frame", frame);
    }
    this.scheduleAck();
  }

  private serverError(frame: ErrorFrame): SwitchboardError {
    const code = SERVER_CODES.has(frame.code) ? (frame.code as ServerErrorCode) : "internal";
    const options: ConstructorParameters<typeof SwitchboardError>[2] = { source: "server" };
    if (frame.cseq !== undefined) options.cseq = frame.cseq;
    if (frame.retry_after_ms !== undefined) options.retryAfterMs = frame.retry_after_ms;
    return this.error(code, frame.message, options);
  }

  private scheduleAck(): void {
    if (this.lastSeqValue - this.lastAckedSeq >= this.ackEvery) {
      this.sendAck();
    } else if (!this.ackTimer.armed) {
      this.ackTimer.set(this.ackDelayOption ?? this.limits.ack_delay_ms ?? 500, () => this.sendAck());
    }
  }

  private sendAck(): void {
    this.ackTimer.clear();
    if (this.lastSeqValue <= this.lastAckedSeq) return;
    const ws = this.ws;
    // Acks bypass the outbox: they are tiny, and one that is lost only means the server keeps more.
    if (!ws || ws.readyState !== OPEN || !this.welcomed) return;
    ws.send(JSON.stringify({ type: "ack", seq: this.lastSeqValue }));
    this.takeToken(true);
    this.lastAckedSeq = this.lastSeqValue;
  }

  private scheduleHeartbeat(): void {
    this.heartbeatTimer.set(this.heartbeatMs, () => this.heartbeat());
  }

  private heartbeat(): void {
    const ws = this.ws;
    if (!ws || !this.welcomed) return;
    if (this.unansweredPings >= 3) {
      this.abandonSocket(CloseCode.HeartbeatTimeout, "3 pings unanswered");
      return;
    }
    if (ws.readyState === OPEN) {
      ws.send(PING_TEXT);
      this.unansweredPings += 1;
    }
    this.scheduleHeartbeat();
  }

  /** The bucket refilled up to now (never above the burst); may be negative after acks ran it into debt. */
  private refillTokens(): number {
    const now = this.clock.now();
    if (now > this.tokensAt) {
      // A little below the room's rate, so clock drift and network jitter never make the room see more.
      const rate = this.limits.rate_per_s * 0.95;
      this.tokens = Math.min(this.limits.rate_burst - 2, this.tokens + ((now - this.tokensAt) * rate) / 1000);
      this.tokensAt = now;
    }
    return this.tokens;
  }

  /** Takes a token; `force` (acks) takes it even into debt, which later frames pay back. */
  private takeToken(force = false): boolean {
    if (this.clock.now() < this.pausedUntil && !force) return false;
    if (this.refillTokens() < 1 && !force) return false;
    this.tokens -= 1;
    return true;
  }

  /** How long until the bucket has a token again. */
  private tokenWaitMs(): number {
    const now = this.clock.now();
    if (now < this.pausedUntil) return this.pausedUntil - now;
    const missing = 1 - this.refillTokens();
    return missing <= 0 ? 0 : Math.ceil((missing * 1000) / (this.limits.rate_per_s * 0.95));
  }

  private canWrite(bytes: number): boolean {
    const ws = this.ws;
    return (
      ws !== undefined &&
      ws.readyState === OPEN &&
      this.welcomed &&
      ws.bufferedAmount + bytes <= this.highWaterMark
    );
  }

  /** Writes outbox entries in order while the socket, its buffer and the token bucket allow. */
  private flush(): void {
    const ws = this.ws;
    while (this.written < this.outbox.length && ws) {
      this.promoteSignal();
      const entry = this.outbox[this.written]!;
      if (!this.canWrite(entry.bytes) || !this.takeToken()) break;
      if (this.rev >= 1) {
        if (entry.cseq === 0) entry.cseq = this.nextCseq++;
        const wire: Record<string, unknown> = { ...entry.frame, cseq: entry.cseq };
        if (this.rev >= 2 && this.lastSeqValue > 0) {
          // The frame carries this client's ack (v1.2): no `ack` frame of its own is needed.
          wire.ack = this.lastSeqValue;
          this.lastAckedSeq = this.lastSeqValue;
          this.ackTimer.clear();
        }
        ws.send(JSON.stringify(wire));
        this.written += 1;
      } else {
        ws.send(JSON.stringify(entry.frame));
        this.outbox.splice(this.written, 1);
        this.outboxBytes -= entry.bytes;
        entry.resolve();
      }
    }
    this.scheduleDrain();
  }

  /**
   * Signals (negotiation, app signals) overtake `relay` data that has not
   * been written yet: pair streams order their own data, and SDP stuck
   * behind paced relay frames would keep the pair off its DataChannel.
   * Only never-written entries move (their cseq is assigned at the write).
   */
  private promoteSignal(): void {
    const head = this.outbox[this.written];
    if (!head || head.cseq !== 0 || head.frame.type !== "relay") return;
    const index = this.outbox.findIndex((e, i) => i > this.written && e.frame.type !== "relay");
    if (index < 0) return;
    const [signal] = this.outbox.splice(index, 1);
    this.outbox.splice(this.written, 0, signal!);
  }

  private scheduleDrain(): void {
    if (this.written >= this.outbox.length || this.drainTimer.armed) return;
    if (!this.ws || !this.welcomed) return; // the next welcome flushes
    this.drainTimer.set(Math.max(this.drainPollMs, this.tokenWaitMs()), () => this.flush());
  }

  /** Rejects every entry of the outbox (and those awaiting their outcome) with `error`. */
  private failOutbox(error: SwitchboardError): void {
    const pending = [...this.decided, ...this.outbox];
    this.decided = [];
    this.outbox = [];
    this.outboxBytes = 0;
    this.written = 0;
    for (const entry of pending) entry.reject(error);
  }

  private shutdown(reason: string, error?: SwitchboardError): void {
    this.setState("closed", undefined, reason);
    this.attemptId += 1;
    for (const timer of [this.heartbeatTimer, this.reconnectTimer, this.ackTimer, this.drainTimer, this.connectTimer]) {
      timer.clear();
    }
    if (this.ws) this.detach(this.ws);
    this.ws = undefined;
    const closed = error ?? this.error("closed", `the room was left (${reason})`);
    this.failOutbox(closed);
    if (this.firstWelcome) {
      this.firstWelcome.reject(closed);
      this.firstWelcome = undefined;
    } else if (error) {
      this.emitError(error);
    }
  }

  private setState(state: SignalingState, delayMs?: number, reason?: string): void {
    this.stateValue = state;
    const event: SignalingEvents["state"] = { state, attempt: this.attempt };
    if (delayMs !== undefined) event.delayMs = delayMs;
    if (reason !== undefined) event.reason = reason;
    this.events.emit("state", event);
  }

  /** A SwitchboardError stamped with this peer's trace id. */
  private error(
    code: ConstructorParameters<typeof SwitchboardError>[0],
    message: string,
    options: ConstructorParameters<typeof SwitchboardError>[2] = {},
  ): SwitchboardError {
    const withTrace = { ...options };
    if (this.traceIdValue !== undefined) withTrace.traceId = this.traceIdValue;
    return new SwitchboardError(code, message, withTrace);
  }

  private emitError(error: SwitchboardError): void {
    if (this.events.listenerCount("error") > 0) this.events.emit("error", error);
    else console.warn(error);
  }
}

function validLimits(value: unknown): RoomLimits | null {
  if (typeof value !== "object" || value === null) return null;
  const v = value as Record<string, unknown>;
  const ok = (n: unknown) => typeof n === "number" && Number.isFinite(n) && n > 0;
  if (!(ok(v.rate_per_s) && ok(v.rate_burst) && ok(v.max_frame_bytes))) return null;
  const limits: RoomLimits = { rate_per_s: v.rate_per_s as number, rate_burst: v.rate_burst as number, max_frame_bytes: v.max_frame_bytes as number };
  if (ok(v.ack_delay_ms)) limits.ack_delay_ms = v.ack_delay_ms as number;
  return limits;
}
