/**
 * Exactly-once, in-order app data between two peers, whatever path each
 * message takes (DataChannel of any connection, or `relay` frames over the
 * signaling WebSocket). Sans-IO: no timers, no sockets; `peer.ts` decides when
 * to send acks and when to retransmit, and on which path.
 *
 * Sender: every `room.send` message gets the next number `n` of the sender's
 * *stream* (`s`, the sender's link id and a generation) and is kept until the
 * receiver acknowledges it. After a path change `peer.ts` retransmits every
 * unacknowledged message on the new path.
 *
 * Receiver: delivers `n` only after `1..n-1` of the same stream, once; a
 * message that overtook an earlier one (two paths during a switch) waits in a
 * bounded reorder buffer; duplicates are dropped. It acknowledges
 * cumulatively: `{"sb":"a","s":…,"n":k}` means 1..k were delivered.
 *
 * A new remote instance (its link id changed: the remote page rebuilt its
 * side of the pair) starts a new receiving stream; the sender then starts a
 * new generation (`restart`) and renumbers what is still unacknowledged from
 * 1, so the new remote instance gets everything it has not acknowledged.
 */

/** App data on the wire: `{"sb":"d","s":stream,"n":number,"d":data}`. */
export interface DataEnvelope {
  sb: "d";
  s: string;
  n: number;
  d: unknown;
}

/** A cumulative acknowledgement: every message of stream `s` up to `n` was delivered. */
export interface AckEnvelope {
  sb: "a";
  s: string;
  n: number;
}

export type StreamEnvelope = DataEnvelope | AckEnvelope;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A data or ack envelope, checked field by field; `null` for anything else (e.g. a non-SDK sender's data). */
export function parseEnvelope(value: unknown): StreamEnvelope | null {
  if (!isObject(value) || typeof value.s !== "string" || !Number.isSafeInteger(value.n)) return null;
  const n = value.n as number;
  if (value.sb === "d" && n >= 1 && "d" in value && value.d !== null) {
    return { sb: "d", s: value.s, n, d: value.d };
  }
  if (value.sb === "a" && n >= 0) return { sb: "a", s: value.s, n };
  return null;
}

export interface StreamLimits {
  /** Most unacknowledged messages kept for retransmission; beyond it `send` refuses. */
  maxUnacked: number;
  /** Most bytes (JSON) of unacknowledged messages. */
  maxUnackedBytes: number;
  /** Most messages held back waiting for an earlier one; later ones are dropped (and retransmitted by the sender). */
  maxReorder: number;
}

export const defaultStreamLimits: StreamLimits = {
  maxUnacked: 4096,
  maxUnackedBytes: 8 * 1024 * 1024,
  maxReorder: 4096,
};

interface Unacked {
  envelope: DataEnvelope;
  bytes: number;
}

/** The sending half: numbering, the retransmission buffer, acks. */
export class SendStream {
  private generation = 1;
  private next = 1;
  private unacked: Unacked[] = [];
  private unackedBytes = 0;

  constructor(
    private readonly linkId: string,
    private readonly limits: StreamLimits = defaultStreamLimits,
  ) {}

  get id(): string {
    return `${this.linkId}.${this.generation}`;
  }

  /** How many messages wait for an ack. */
  get pending(): number {
    return this.unacked.length;
  }

  /** Whether one more message of `bytes` fits in the retransmission buffer. */
  fits(bytes: number): boolean {
    return this.unacked.length < this.limits.maxUnacked && this.unackedBytes + bytes <= this.limits.maxUnackedBytes;
  }

  /** Numbers `data` and keeps it until acknowledged; the caller checks `fits` first. */
  push(data: unknown, bytes: number): DataEnvelope {
    const envelope: DataEnvelope = { sb: "d", s: this.id, n: this.next, d: data };
    this.next += 1;
    this.unacked.push({ envelope, bytes });
    this.unackedBytes += bytes;
    return envelope;
  }

  /** Drops what `ack` acknowledges; returns how many messages it released. */
  onAck(ack: AckEnvelope): number {
    if (ack.s !== this.id) return 0;
    let released = 0;
    while (this.unacked.length > 0 && this.unacked[0]!.envelope.n <= ack.n) {
      this.unackedBytes -= this.unacked.shift()!.bytes;
      released += 1;
    }
    return released;
  }

  /** Every unacknowledged message, oldest first, for a retransmission on a new path. */
  retransmission(): DataEnvelope[] {
    return this.unacked.map((u) => u.envelope);
  }

  /**
   * The receiving instance changed: a new generation numbers what is still
   * unacknowledged from 1. Returns those messages, to be sent again.
   */
  restart(): DataEnvelope[] {
    this.generation += 1;
    this.next = 1;
    for (const u of this.unacked) {
      u.envelope = { sb: "d", s: this.id, n: this.next, d: u.envelope.d };
      this.next += 1;
    }
    return this.retransmission();
  }
}

export interface Received {
  /** The app data now deliverable, in order (possibly empty). */
  deliver: unknown[];
  /** Whether the message was a duplicate (already delivered or already waiting). */
  duplicate: boolean;
}

/** The receiving half: in-order delivery, dedup, the cumulative ack. */
export class ReceiveStream {
  private stream: string | null = null;
  private delivered = 0;
  private readonly waiting = new Map<number, unknown>();
  /** Streams that were replaced by a newer one: their late messages are ignored. */
  private readonly retired = new Set<string>();

  constructor(private readonly limits: StreamLimits = defaultStreamLimits) {}

  /** The ack to send for the current stream, `null` before any data. */
  ack(): AckEnvelope | null {
    return this.stream === null ? null : { sb: "a", s: this.stream, n: this.delivered };
  }

  /** Highest `n` delivered on the current stream. */
  get deliveredCount(): number {
    return this.delivered;
  }

  onData(envelope: DataEnvelope): Received {
    if (this.retired.has(envelope.s)) return { deliver: [], duplicate: true };
    if (envelope.s !== this.stream) {
      if (this.stream !== null && !this.isNewer(envelope.s, this.stream)) return { deliver: [], duplicate: true };
      if (this.stream !== null) {
        this.retired.add(this.stream);
        // Only the last few matter (a stream is retired once per remote restart).
        if (this.retired.size > 16) this.retired.delete(this.retired.values().next().value as string);
      }
      this.stream = envelope.s;
      this.delivered = 0;
      this.waiting.clear();
    }
    const n = envelope.n;
    if (n <= this.delivered || this.waiting.has(n)) return { deliver: [], duplicate: true };
    // Beyond the reorder window: dropped, not acknowledged, so the sender sends it again later.
    if (n > this.delivered + this.limits.maxReorder) return { deliver: [], duplicate: false };
    this.waiting.set(n, envelope.d);
    const deliver: unknown[] = [];
    for (;;) {
      const next = this.delivered + 1;
      if (!this.waiting.has(next)) break;
      deliver.push(this.waiting.get(next));
      this.waiting.delete(next);
      this.delivered = next;
    }
    return { deliver, duplicate: false };
  }

  /**
   * A stream id is `<link>.<generation>`. Another link is a new remote
   * instance (newer by construction: an old instance never sends again after
   * its replacement introduced itself); the same link counts by generation.
   */
  private isNewer(candidate: string, current: string): boolean {
    const [linkA, genA] = splitStream(candidate);
    const [linkB, genB] = splitStream(current);
    return linkA !== linkB || genA > genB;
  }
}

function splitStream(id: string): [string, number] {
  const dot = id.lastIndexOf(".");
  if (dot < 0) return [id, 0];
  const generation = Number(id.slice(dot + 1));
  return [id.slice(0, dot), Number.isFinite(generation) ? generation : 0];
}
