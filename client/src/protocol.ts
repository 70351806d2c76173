/**
 * Frame types of signaling protocol v1 (docs/PROTOCOL.md). Field names are the
 * wire names, so a frame object can be sent with `JSON.stringify` as is.
 */

/** An `RTCIceServer` as the Worker hands it out. */
export interface IceServer {
  urls: string | string[];
  username?: string;
  credential?: string;
}

export interface PeerInfo {
  peer_id: string;
  meta: unknown;
}

export type PeerLeftReason = "leave" | "timeout" | "closed";

/** The room's limits as announced in `welcome` (protocol v1.1). */
export interface RoomLimits {
  rate_per_s: number;
  rate_burst: number;
  max_frame_bytes: number;
  /** Send `ack` at most this long after the first unacknowledged frame (absent before it was announced). */
  ack_delay_ms?: number;
}

/** The limits of protocol v1 (PROTOCOL.md, "Limits and errors"), assumed when `welcome` announces none. */
export const DEFAULT_LIMITS: RoomLimits = { rate_per_s: 50, rate_burst: 100, max_frame_bytes: 65536 };

export interface WelcomeFrame {
  type: "welcome";
  v: number;
  peer_id: string;
  resume_token: string;
  room: string;
  peers: PeerInfo[];
  ice_servers: IceServer[];
  heartbeat_ms: number;
  resumed: boolean;
  /** Protocol revision: 1 announces acked client frames (`cseq`). Absent in v1. */
  rev?: number;
  /** Minted per peer at its fresh join, kept across resumes (v1.1). */
  trace_id?: string;
  limits?: RoomLimits;
  /** The highest client `cseq` the room has processed for this peer (v1.1). */
  cseq?: number;
  /** The room's relay session endpoint and this peer's token; absent when no relay offers the `sfu` rung. */
  sfu?: unknown;
  /** `"off"` when this peer joined with `presence=off` (then `peers` is empty); absent otherwise. */
  presence?: "off";
}

export interface PeerJoinedFrame {
  type: "peer-joined";
  seq: number;
  peer_id: string;
  meta: unknown;
}

export interface PeerLeftFrame {
  type: "peer-left";
  seq: number;
  peer_id: string;
  reason: PeerLeftReason;
}

export interface SignalFrame {
  type: "signal";
  seq: number;
  from: string;
  /** The sender's `cseq` (v1.1), when it used one. */
  cseq?: number;
  payload: unknown;  /** The room's `ack` of this client's frames riding on this frame (v1.2, `caps=acks`): applied after the frame. */
  acked?: number;
}

export interface RelayFrame {
  type: "relay";
  seq: number;
  from: string;
  /** The sender's `cseq` (v1.1), when it used one. */
  cseq?: number;
  data: unknown;  /** The room's `ack` of this client's frames riding on this frame (v1.2, `caps=acks`): applied after the frame. */
  acked?: number;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  /** The client frame the error is about (v1.1). */
  cseq?: number;
  /** Present when the error is part of the sequenced stream (a refused frame, v1.1). */
  seq?: number;
  /** `out_of_order`: the `cseq` the room expects next. */
  expected?: number;
  /** `rate_limited`: how long until the room accepts frames again. */
  retry_after_ms?: number;
  /** The room's `ack` riding on this frame (v1.2, `caps=acks`): applied after the frame. */
  acked?: number;
}

/** The room accepted every client frame up to `cseq` (v1.1). */
export interface AckFrame {
  type: "ack";
  cseq: number;
}

export interface PongFrame {
  type: "pong";
}

/**
 * The room's relays changed (a relay node died or drains; opt-in with `caps=relays`): fresh ICE servers and
 * SFU grant for this peer. Sent only to clients that joined with `caps=relays`; not sequenced.
 */
export interface RelaysChangedFrame {
  type: "relays-changed";
  /** `node_lost`, `node_draining`, `no_nodes` or `nodes_available`. */
  reason: string;
  ice_servers: IceServer[];
  /** The room's new relay session endpoint and this peer's token; absent when no relay offers the `sfu` rung. */
  sfu?: unknown;
}

/** Frames that carry `seq` and count towards `ack`/`last_seq`. */
export type SequencedFrame = PeerJoinedFrame | PeerLeftFrame | SignalFrame | RelayFrame;

export type ServerFrame = WelcomeFrame | SequencedFrame | ErrorFrame | AckFrame | PongFrame | RelaysChangedFrame;

/** Client frames that may carry `cseq` and are kept in the outbox until the room decided on them. */
export type OutboxFrame =
  | { type: "signal"; to: string; payload: unknown }
  | { type: "broadcast"; payload: unknown }
  | { type: "relay"; to: string; data: unknown };

export type ClientFrame = OutboxFrame | { type: "ack"; seq: number } | { type: "leave" } | { type: "ping" };

/** The exact ping text: the runtime auto-answers only this spelling (PROTOCOL.md, Heartbeats). */
export const PING_TEXT = '{"type":"ping"}';

/** Close codes the server uses (PROTOCOL.md, "Close codes"). */
export const CloseCode = {
  Normal: 1000,
  HeartbeatTimeout: 4000,
  Replaced: 4001,
  RoomFull: 4002,
  /** The server is going away; the reason is `retry_after_ms=<n>`: resume after a random delay in [0, n]. */
  GoingAway: 4003,
  NoSuchPeer: 4004,
} as const;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parses one server text frame; `null` for anything that is not a frame of protocol v1 or v1.1 (with `relays-changed`). */
export function parseServerFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(value) || typeof value.type !== "string") return null;
  switch (value.type) {
    case "welcome":
      return typeof value.peer_id === "string" && typeof value.resume_token === "string"
        ? (value as unknown as WelcomeFrame)
        : null;
    case "peer-joined":
    case "peer-left":
      return typeof value.seq === "number" && typeof value.peer_id === "string"
        ? (value as unknown as SequencedFrame)
        : null;
    case "signal":
    case "relay":
      return typeof value.seq === "number" && typeof value.from === "string"
        ? (value as unknown as SequencedFrame)
        : null;
    case "error": {
      if (typeof value.code !== "string") return null;
      const frame: ErrorFrame = { type: "error", code: value.code, message: typeof value.message === "string" ? value.message : "" };
      for (const key of ["cseq", "seq", "expected", "retry_after_ms", "acked"] as const) {
        const n = value[key];
        if (typeof n === "number" && Number.isSafeInteger(n) && n >= 0) frame[key] = n;
      }
      return frame;
    }
    case "ack":
      return typeof value.cseq === "number" && Number.isSafeInteger(value.cseq) ? { type: "ack", cseq: value.cseq } : null;
    case "pong":
      return { type: "pong" };
    case "relays-changed":
      return Array.isArray(value.ice_servers)
        ? { type: "relays-changed", reason: typeof value.reason === "string" ? value.reason : "", ice_servers: value.ice_servers as IceServer[], sfu: value.sfu }
        : null;
    default:
      return null;
  }
}
