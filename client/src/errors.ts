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
  | "out_of_order"
  | "unauthorized"
  | "resume_failed"
  | "room_full"
  | "presence_full"
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
  /** Refreshing the SFU session token from `/v1/sfu-token` failed. */
  | "sfu_token"
  /** An event listener threw; the SDK caught it so it never escapes into a timer. */
  | "listener"
  /** Reconnecting did not succeed within `giveUpAfterMs`; the session is closed. */
  | "reconnect_timeout";

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
  /** The client frame (`cseq`, protocol v1.1) the room refused, when the error is about one. */
  readonly cseq: number | undefined;
  /** `rate_limited`: how long the room refuses frames. */
  readonly retryAfterMs: number | undefined;
  /** This peer's `trace_id` from `welcome` (the room logs it with every event about the peer). */
  traceId: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: {
      source?: "server" | "client";
      peerId?: string;
      cause?: unknown;
      cseq?: number;
      retryAfterMs?: number;
      traceId?: string;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "SwitchboardError";
    this.code = code;
    this.source = options.source ?? "client";
    this.peerId = options.peerId;
    this.cseq = options.cseq;
    this.retryAfterMs = options.retryAfterMs;
    this.traceId = options.traceId;
  }
}
