/** Codes the server sends in `error` frames (PROTOCOL.md, "Limits and errors"). */
export type ServerErrorCode =
  | "bad_json"
  | "invalid_frame"
  | "unknown_type"
  | "unsupported_frame"
  | "payload_too_large"
  | "unknown_peer"
  | "rate_limited"
  | "queue_full"
  | "resume_failed"
  | "room_full"
  | "internal";

/** Codes the SDK itself raises. */
export type ClientErrorCode =
  /** The send queue is at its bound; the message was not queued. */
  | "backpressure"
  /** The room was left (or closed for good); the operation cannot complete. */
  | "closed"
  /** The first connection failed before a `welcome` arrived. */
  | "connect_failed"
  /** `data` or a signal payload that the protocol refuses (e.g. `null`). */
  | "invalid_data"
  /** No such peer in the room. */
  | "unknown_peer"
  /** A WebRTC operation failed (negotiation, ICE, DataChannel). */
  | "webrtc"
  /** Refreshing TURN credentials from `/v1/ice-servers` failed. */
  | "ice_servers"
  /** An event listener threw; the SDK caught it so it never escapes into a timer. */
  | "listener";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/**
 * The one error type of the SDK. `source` says whether the server refused
 * something (`error` frame) or the SDK detected the problem itself.
 */
export class SwitchboardError extends Error {
  readonly code: ErrorCode;
  readonly source: "server" | "client";
  /** The peer the error is about, when there is one. */
  readonly peerId: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { source?: "server" | "client"; peerId?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "SwitchboardError";
    this.code = code;
    this.source = options.source ?? "client";
    this.peerId = options.peerId;
  }
}
