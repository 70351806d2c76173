/**
 * The signaling connection: one logical session with a room that survives
 * dropped WebSockets. Owns the socket, the heartbeat, reconnect with backoff,
 * resume (`resume_token` + `last_seq`), `ack`s and the bounded send queue.
 * It knows nothing about WebRTC; the WebSocket constructor and the clock are
 * injected so unit tests can drive it with a fake socket and fake timers.
 */
import { Clock, Timer, systemClock } from "./clock.js";
import { Emitter } from "./emitter.js";
import { SwitchboardError, type ServerErrorCode } from "./errors.js";
import {
  CloseCode,
  PING_TEXT,
  parseServerFrame,
  type ClientFrame,
  type IceServer,
  type SequencedFrame,
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

export interface SignalingOptions {
  /** `ws(s)://host/v1/rooms/<room>` */
  url: string;
  token?: string;
  meta?: unknown;
  createWebSocket?: WebSocketFactory;
  clock?: Clock;
  random?: () => number;
  backoff?: Partial<BackoffOptions>;
  /** Most frames waiting in the send queue; beyond it sends reject with `backpressure`. */
  maxQueuedFrames?: number;
  /** Most bytes waiting in the send queue. */
  maxQueuedBytes?: number;
  /** The socket's `bufferedAmount` above which frames wait in the queue instead of being written. */
  highWaterMark?: number;
  /** How often a non-empty queue re-checks `bufferedAmount` (WebSocket has no drain event). */
  drainPollMs?: number;
  /** Acknowledge at once after this many unacknowledged frames… */
  ackEvery?: number;
  /** …or this long after the first unacknowledged one. */
  ackDelayMs?: number;
  /** A connection attempt that has not produced `welcome` by then is abandoned and retried. */
  connectTimeoutMs?: number;
}

export type SignalingState = "connecting" | "open" | "reconnecting" | "closed";

export interface SignalingEvents {
  /** Every accepted connection; `resumed: false` with a `previousPeerId` means a new identity. */
  welcome: { frame: WelcomeFrame; previousPeerId: string | undefined };
  /** Each sequenced frame exactly once, in `seq` order, across reconnects. */
  frame: SequencedFrame;
  error: SwitchboardError;
  state: { state: SignalingState; attempt: number; delayMs?: number; reason?: string };
}

interface QueuedFrame {
  text: string;
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
  "resume_failed",
  "room_full",
  "internal",
]);

function byteLength(text: string): number {
  return new TextEncoder().encode(text).length;
}

export class SignalingConnection {
  readonly events: Emitter<SignalingEvents>;

  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly createWebSocket: WebSocketFactory;
  private readonly backoff: BackoffOptions;
  private readonly maxQueuedFrames: number;
  private readonly maxQueuedBytes: number;
  private readonly highWaterMark: number;
  private readonly drainPollMs: number;
  private readonly ackEvery: number;
  private readonly ackDelayMs: number;
  private readonly connectTimeoutMs: number;

  private ws: WebSocketLike | undefined;
  private welcomed = false;
  private stateValue: SignalingState = "connecting";
  private attempt = 0;
  private everWelcomed = false;
  private lastServerError: SwitchboardError | undefined;

  private peerIdValue: string | undefined;
  private resumeTokenValue: string | undefined;
  private lastSeqValue = 0;
  private lastAckedSeq = 0;
  private heartbeatMs = 30_000;
  private unansweredPings = 0;
  private iceServersValue: IceServer[] = [];

  private queue: QueuedFrame[] = [];
  private queuedBytes = 0;

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
    this.backoff = { ...defaultBackoff, ...options.backoff };
    this.maxQueuedFrames = options.maxQueuedFrames ?? 256;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 1024 * 1024;
    this.highWaterMark = options.highWaterMark ?? 256 * 1024;
    this.drainPollMs = options.drainPollMs ?? 50;
    this.ackEvery = options.ackEvery ?? 16;
    this.ackDelayMs = options.ackDelayMs ?? 500;
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
  /** The highest `seq` processed; sent as `last_seq` on resume. */
  get lastSeq(): number {
    return this.lastSeqValue;
  }
  get iceServers(): IceServer[] {
    return this.iceServersValue;
  }
  get queuedFrames(): number {
    return this.queue.length;
  }
  /** Whether the send queue is below half its bound (callers that can wait, like the pair streams, keep it so). */
  hasRoom(): boolean {
    return this.queue.length < this.maxQueuedFrames / 2 && this.queuedBytes < this.maxQueuedBytes / 2;
  }

  /** Opens the first connection; resolves with the first `welcome`. */
  connect(): Promise<WelcomeFrame> {
    return new Promise((resolve, reject) => {
      this.firstWelcome = { resolve, reject };
      this.open();
    });
  }

  /**
   * Queues a frame. Resolves once it is written to a socket (possibly after a
   * reconnect); rejects with `backpressure` at once when the queue is at its
   * bound, or with `closed` if the room is left before it could be written.
   */
  send(frame: ClientFrame): Promise<void> {
    if (this.stateValue === "closed") {
      return Promise.reject(new SwitchboardError("closed", "the room was left"));
    }
    const text = JSON.stringify(frame);
    const bytes = byteLength(text);
    if (this.queue.length === 0 && this.canWrite(bytes)) {
      this.write(text);
      return Promise.resolve();
    }
    if (this.queue.length >= this.maxQueuedFrames || this.queuedBytes + bytes > this.maxQueuedBytes) {
      return Promise.reject(
        new SwitchboardError(
          "backpressure",
          `send queue full (${this.queue.length} frames, ${this.queuedBytes} bytes queued)`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ text, bytes, resolve, reject });
      this.queuedBytes += bytes;
      this.scheduleDrain();
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

  private buildUrl(): string {
    const url = new URL(this.options.url);
    if (this.options.meta !== undefined) url.searchParams.set("meta", JSON.stringify(this.options.meta));
    if (this.options.token !== undefined) url.searchParams.set("token", this.options.token);
    if (this.resumeTokenValue !== undefined) {
      url.searchParams.set("resume", this.resumeTokenValue);
      url.searchParams.set("last_seq", String(this.lastSeqValue));
    }
    return url.toString();
  }

  private open(): void {
    this.welcomed = false;
    this.setState(this.everWelcomed ? "reconnecting" : "connecting");
    let ws: WebSocketLike;
    try {
      ws = this.createWebSocket(this.buildUrl());
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
    ws.onclose = (event) => this.onSocketGone(ws, event.code, event.reason);
    // `error` is always followed by `close`; the close handler decides what happens.
    ws.onerror = () => undefined;
    this.connectTimer.set(this.connectTimeoutMs, () => {
      if (this.ws === ws && !this.welcomed) this.abandonSocket(4000, "no welcome in time");
    });
  }

  /** Forgets a socket at once (without waiting for a close handshake that may never come) and reconnects. */
  private abandonSocket(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.detach(ws);
    try {
      ws.close(code, reason);
    } catch {
      // Closing a socket that is still connecting may throw in some runtimes; it is being dropped anyway.
    }
    this.onSocketGone(ws, 1006, reason);
  }

  private detach(ws: WebSocketLike): void {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    ws.onopen = null;
  }

  private onSocketGone(ws: WebSocketLike | undefined, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = undefined;
    this.welcomed = false;
    this.heartbeatTimer.clear();
    this.ackTimer.clear();
    this.drainTimer.clear();
    this.connectTimer.clear();
    if (this.stateValue === "closed") return;

    if (!this.everWelcomed) {
      const error =
        this.lastServerError ??
        new SwitchboardError("connect_failed", `could not join (close ${code}${reason ? `: ${reason}` : ""})`);
      this.shutdown(error.message, error);
      return;
    }
    if (code === CloseCode.Replaced) {
      this.shutdown("replaced", new SwitchboardError("closed", "replaced by a newer connection of this peer"));
      return;
    }
    if (code === CloseCode.RoomFull) {
      this.shutdown("room full", this.lastServerError ?? new SwitchboardError("room_full", "the room is full", { source: "server" }));
      return;
    }
    const delayMs = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.setState("reconnecting", delayMs, `close ${code}${reason ? `: ${reason}` : ""}`);
    this.reconnectTimer.set(delayMs, () => this.open());
  }

  private onText(text: string): void {
    // Any frame proves the connection is alive, not only `pong`.
    this.unansweredPings = 0;
    const frame = parseServerFrame(text);
    if (!frame) {
      this.emitError(new SwitchboardError("internal", "the server sent a frame this client does not understand"));
      return;
    }
    switch (frame.type) {
      case "welcome":
        this.onWelcome(frame);
        return;
      case "pong":
        return;
      case "error": {
        const code = SERVER_CODES.has(frame.code) ? (frame.code as ServerErrorCode) : "internal";
        const error = new SwitchboardError(code, frame.message, { source: "server" });
        this.lastServerError = error;
        this.emitError(error);
        return;
      }
      default:
        this.onSequenced(frame);
    }
  }

  private onWelcome(frame: WelcomeFrame): void {
    const previousPeerId = this.peerIdValue;
    this.connectTimer.clear();
    this.welcomed = true;
    this.attempt = 0;
    this.lastServerError = undefined;
    if (!frame.resumed) {
      // A fresh identity: the server numbers frames from 1 again.
      this.lastSeqValue = 0;
      this.lastAckedSeq = 0;
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

  private onSequenced(frame: SequencedFrame): void {
    // A replay after resume starts at last_seq + 1; anything at or below it was processed already.
    if (frame.seq <= this.lastSeqValue) return;
    this.lastSeqValue = frame.seq;
    this.events.emit("frame", frame);
    this.scheduleAck();
  }

  private scheduleAck(): void {
    if (this.lastSeqValue - this.lastAckedSeq >= this.ackEvery) {
      this.sendAck();
    } else if (!this.ackTimer.armed) {
      this.ackTimer.set(this.ackDelayMs, () => this.sendAck());
    }
  }

  private sendAck(): void {
    this.ackTimer.clear();
    if (this.lastSeqValue <= this.lastAckedSeq) return;
    const ws = this.ws;
    // Acks bypass the queue: they are tiny, and one that is lost only means the server keeps more.
    if (!ws || ws.readyState !== OPEN || !this.welcomed) return;
    ws.send(JSON.stringify({ type: "ack", seq: this.lastSeqValue }));
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

  private canWrite(bytes: number): boolean {
    const ws = this.ws;
    return (
      ws !== undefined &&
      ws.readyState === OPEN &&
      this.welcomed &&
      ws.bufferedAmount + bytes <= this.highWaterMark
    );
  }

  private write(text: string): void {
    this.ws?.send(text);
  }

  private flush(): void {
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      if (!this.canWrite(next.bytes)) break;
      this.queue.shift();
      this.queuedBytes -= next.bytes;
      this.write(next.text);
      next.resolve();
    }
    this.scheduleDrain();
  }

  private scheduleDrain(): void {
    if (this.queue.length === 0 || this.drainTimer.armed) return;
    if (!this.ws || !this.welcomed) return; // the next welcome flushes
    this.drainTimer.set(this.drainPollMs, () => this.flush());
  }

  private shutdown(reason: string, error?: SwitchboardError): void {
    this.setState("closed", undefined, reason);
    for (const timer of [this.heartbeatTimer, this.reconnectTimer, this.ackTimer, this.drainTimer, this.connectTimer]) {
      timer.clear();
    }
    if (this.ws) this.detach(this.ws);
    this.ws = undefined;
    const pending = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    const closed = error ?? new SwitchboardError("closed", `the room was left (${reason})`);
    for (const item of pending) item.reject(closed);
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

  private emitError(error: SwitchboardError): void {
    if (this.events.listenerCount("error") > 0) this.events.emit("error", error);
    else console.warn(error);
  }
}
