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
 * The layers `simulcast: true` sends, lowest first, as LiveKit's client names them: quarter,
 * half and full resolution (160×120, 320×240, 640×480 from a VGA camera).
 */
export const defaultSimulcastLayers: readonly SimulcastLayer[] = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 }),
]);

const RID = /^[A-Za-z0-9_-]{1,16}$/;

/**
 * The `sendEncodings` of a track sent to the relay, or `undefined` for one encoding: audio
 * tracks, `simulcast` off, or fewer than two layers. Invalid layers are an `invalid_data` error.
 */
export function simulcastEncodings(kind: string, simulcast: Simulcast): RTCRtpEncodingParameters[] | undefined {
  if (kind !== "video" || simulcast === false) return undefined;
  const layers = simulcast === true ? defaultSimulcastLayers : simulcast;
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
