// Simulcast through the relay's SFU, published by the SDK: two pages forced
// to `sfu`; page A adds its fake camera (640×480) with `room.addTrack(track,
// { streams, simulcast: true })`, so the SDK sends it to the relay as the
// default layers for that size (rid `h` at half resolution, `f` at full) over
// the control channel's renegotiation, and Chromium sends both. B gets one
// layer at a time: it starts on the low one and, once the relay has measured
// the layers and B's bandwidth estimate leaves room for the high one, moves up
// (the decoded width doubles).
import { test } from "node:test";
import assert from "node:assert/strict";
import { failureContext, openPair, peerIdOf, uniqueRoom, waitFor, waitForPath, workerAndBrowser, SFU_URLS } from "./harness.mjs";

const env = workerAndBrowser({
  relay: { sfu: true },
  worker: { port: 18940, inspectorPort: 19940, vars: { SFU_URLS } },
});

/** The SDK's default layers for a 640×480 source. */
const LAYERS = [
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 150_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 500_000 },
];

/** In page A: the camera, published with the SDK's simulcast option; the encodings its sender has. */
function publishSimulcast(simulcast) {
  return (async (simulcast) => {
    const room = window.switchboardDemo.room;
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    const track = stream.getVideoTracks()[0];
    room.addTrack(track, { streams: [stream], simulcast });
    const sender = () => room.sfuPeerConnection.getSenders().find((s) => s.track === track);
    const deadline = Date.now() + 10_000;
    while (!sender() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    return sender().getParameters().encodings.map(({ rid, scaleResolutionDownBy, maxBitrate }) => ({ rid, scaleResolutionDownBy, maxBitrate }));
  })(simulcast);
}

/** The width of the video B decodes on its relay connection (0 before any), and frames decoded. */
const inbound = (page) =>
  page.evaluate(async () => {
    let out = { width: 0, decoded: 0 };
    const pc = window.switchboardDemo.room.sfuPeerConnection;
    if (!pc) return out;
    (await pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") out = { width: r.frameWidth ?? 0, decoded: r.framesDecoded ?? 0 };
    });
    return out;
  });

test("an SDK simulcast publisher: the subscriber decodes the low layer first, then the high one", async (t) => {
  const room = uniqueRoom("sfu-simulcast");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "sfu" });
  const widths = [];
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "sfu");
    await waitForPath(b, idA, "sfu");
    const encodings = await a.evaluate(publishSimulcast, true);
    assert.deepEqual(encodings, LAYERS, "the SDK gives the relay transceiver the default layers for a VGA camera");
    // B decodes A's video; sample the decoded width for a while.
    await waitFor(async () => (await inbound(b)).decoded > 0, { timeoutMs: 30_000, message: "B decodes A's simulcast video" });
    const deadline = Date.now() + 25_000;
    while (Date.now() < deadline) {
      const { width } = await inbound(b);
      if (widths.at(-1) !== width) widths.push(width);
      if (width >= 640) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const sent = await a.evaluate(async () => {
      const layers = [];
      (await window.switchboardDemo.room.sfuPeerConnection.getStats()).forEach((r) => {
        if (r.type === "outbound-rtp" && r.kind === "video") layers.push(`${r.rid}:${r.frameWidth ?? 0}`);
      });
      return layers.sort();
    });
    t.diagnostic(`layers A sends (rid:width): ${sent.join(" ")}`);
    assert.ok(widths[0] > 0 && widths[0] <= 320, `the low layer first: ${JSON.stringify(widths)}`);
    assert.equal(widths.at(-1), 640, `then the high layer: ${JSON.stringify(widths)}`);
    t.diagnostic(`decoded widths at B, in order: ${JSON.stringify(widths)}`);
  } catch (error) {
    error.message += `\nwidths seen by B: ${JSON.stringify(widths)}`;
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
