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
  payload: unknown;
}

export interface RelayFrame {
  type: "relay";
  seq: number;
  from: string;
  data: unknown;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
}

export interface PongFrame {
  type: "pong";
}

/** Frames that carry `seq` and count towards `ack`/`last_seq`. */
export type SequencedFrame = PeerJoinedFrame | PeerLeftFrame | SignalFrame | RelayFrame;

export type ServerFrame = WelcomeFrame | SequencedFrame | ErrorFrame | PongFrame;

export type ClientFrame =
  | { type: "signal"; to: string; payload: unknown }
  | { type: "broadcast"; payload: unknown }
  | { type: "relay"; to: string; data: unknown }
  | { type: "ack"; seq: number }
  | { type: "leave" }
  | { type: "ping" };

/** The exact ping text: the runtime auto-answers only this spelling (PROTOCOL.md, Heartbeats). */
export const PING_TEXT = '{"type":"ping"}';

/** Close codes the server uses (PROTOCOL.md, "Close codes"). */
export const CloseCode = {
  Normal: 1000,
  HeartbeatTimeout: 4000,
  Replaced: 4001,
  RoomFull: 4002,
  NoSuchPeer: 4004,
} as const;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Parses one server text frame; `null` for anything that is not a frame of protocol v1. */
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
    case "error":
      return typeof value.code === "string" ? (value as unknown as ErrorFrame) : null;
    case "pong":
      return { type: "pong" };
    default:
      return null;
  }
}
