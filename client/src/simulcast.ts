/**
 * Simulcast on the `sfu` rung: a video track sent to the relay as several
 * encodings (RFC 8853 layers, each named by an RFC 8851 `rid`), of which the
 * relay forwards one per subscriber, chosen from that subscriber's bandwidth
 * estimate (relay/src/sfu/layers.rs ranks the layers by measured bitrate, so
 * any rid names work).
 *
 * Only the page's connection to the relay uses it: a pair's own connection
 * (`p2p`/`turn` rungs) has one receiver, so it sends one encoding and lets the
 * browser's congestion control adapt that one.
 */
import { SwitchboardError } from "./errors.js";

/** One simulcast layer: the `RTCRtpEncodingParameters` the SDK sets for it. */
export interface SimulcastLayer {
  /** RFC 8851 restriction id (1–16 of `A-Z a-z 0-9 - _`), unique within the track. */
  rid: string;
  /** Width and height divided by this (≥ 1; 1 is the camera's own resolution). */
  scaleResolutionDownBy: number;
  /** Bitrate cap of the layer, bits per second. */
  maxBitrate: number;
  /** Frame-rate cap of the layer, when set. */
  maxFramerate?: number;
}

/** `true` (the default layers), `false` (one encoding), or the layers to send. */
export type Simulcast = boolean | readonly SimulcastLayer[];

/**
 * The layers `simulcast: true` sends from a source of 960×540 or more (or of unknown size),
 * lowest first, as LiveKit's client names them: quarter, half and full resolution (320×180,
 * 640×360, 1280×720 from a 720p camera). Smaller sources get fewer: see `defaultLayersFor`.
 */
export const defaultSimulcastLayers: readonly SimulcastLayer[] = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 }),
]);

const RID = /^[A-Za-z0-9_-]{1,16}$/;

/** A layer's bitrate cap by its own size: the caps of `defaultSimulcastLayers` at 720p, 3 Mbit/s above. */
function capFor(pixels: number): number {
  if (pixels <= 320 * 240) return 150_000;
  if (pixels <= 640 * 480) return 500_000;
  if (pixels <= 1280 * 720) return 1_500_000;
  return 3_000_000;
}

/**
 * The default layers for a source of `width`×`height` (unknown: `defaultSimulcastLayers`).
 * Browsers send only as many layers as a resolution supports and leave the rest inactive
 * (Chromium sends `q` and `h` of the three from a 640×480 camera and never `f`), so a smaller
 * source gets the top layers it can send: from 960×540 `q`/`h`/`f`, from 480×270 `h`/`f`, below
 * that one encoding. Each layer's cap follows its own size: up to 320×240 150 kbit/s, up to
 * 640×480 500 kbit/s, up to 1280×720 1.5 Mbit/s, above 3 Mbit/s.
 */
export function defaultLayersFor(width?: number, height?: number): readonly SimulcastLayer[] {
  if (!(width && height && width > 0 && height > 0)) return defaultSimulcastLayers;
  const pixels = width * height;
  const layers = pixels >= 960 * 540 ? defaultSimulcastLayers : pixels >= 480 * 270 ? defaultSimulcastLayers.slice(1) : [];
  return layers.map(({ rid, scaleResolutionDownBy }) => ({
    rid,
    scaleResolutionDownBy,
    maxBitrate: capFor(pixels / (scaleResolutionDownBy * scaleResolutionDownBy)),
  }));
}

/**
 * The `sendEncodings` of a track sent to the relay, or `undefined` for one encoding: audio
 * tracks, `simulcast` off, or fewer than two layers. `simulcast: true` picks the default layers
 * for the source's size (`defaultLayersFor`). Invalid layers are an `invalid_data` error.
 */
export function simulcastEncodings(
  kind: string,
  simulcast: Simulcast,
  size: { width?: number; height?: number } = {},
): RTCRtpEncodingParameters[] | undefined {
  if (kind !== "video" || simulcast === false) return undefined;
  const layers = simulcast === true ? defaultLayersFor(size.width, size.height) : simulcast;
  if (!Array.isArray(layers)) throw new SwitchboardError("invalid_data", "simulcast must be a boolean or an array of layers");
  if (layers.length < 2) return undefined;
  const seen = new Set<string>();
  return layers.map((layer: SimulcastLayer) => {
    const { rid, scaleResolutionDownBy, maxBitrate, maxFramerate } = layer;
    if (typeof rid !== "string" || !RID.test(rid) || seen.has(rid)) {
      throw new SwitchboardError("invalid_data", `simulcast layer rid ${JSON.stringify(rid)}: 1-16 of A-Z a-z 0-9 - _, unique per track`);
    }
    seen.add(rid);
    if (!(scaleResolutionDownBy >= 1) || !(maxBitrate > 0) || (maxFramerate !== undefined && !(maxFramerate > 0))) {
      throw new SwitchboardError(
        "invalid_data",
        `simulcast layer ${rid}: scaleResolutionDownBy must be >= 1, maxBitrate and maxFramerate positive`,
      );
    }
    const encoding: RTCRtpEncodingParameters = { rid, scaleResolutionDownBy, maxBitrate };
    if (maxFramerate !== undefined) encoding.maxFramerate = maxFramerate;
    return encoding;
  });
}
