// Simulcast through the relay's SFU, with Chromium as publisher and subscriber.
// The SDK publishes one encoding per track, so the two pages talk to the
// relay's session endpoint directly (WHIP-style POST with the token the Worker
// gave each page in `welcome.sfu`): page A sends its fake camera with two
// simulcast layers (rid `l` at half resolution, rid `h` at full), page B
// answers the relay's renegotiation offers on the control channel. B gets one
// layer at a time: it starts on the low one and, once the relay has measured
// the layers and B's bandwidth estimate leaves room for the high one, moves up
// (the decoded width doubles).
import { test } from "node:test";
import assert from "node:assert/strict";
import { failureContext, openPair, uniqueRoom, waitFor, workerAndBrowser, SFU_URLS } from "./harness.mjs";

const env = workerAndBrowser({
  relay: { sfu: true },
  worker: { port: 18940, inspectorPort: 19940, vars: { SFU_URLS } },
});

/** In the page: a raw session with the relay (no SDK), publishing (simulcast) or subscribing. */
function rawSession(publish) {
  return (async (publish) => {
    const grant = window.switchboardDemo.room.sfuGrant;
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
    const control = pc.createDataChannel("switchboard-control", { ordered: true });
    pc.createDataChannel("switchboard", { ordered: true, protocol: "switchboard-envelope" });
    window.__raw = { pc, widths: [], decoded: 0 };
    if (publish) {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      pc.addTransceiver(stream.getVideoTracks()[0], {
        direction: "sendonly",
        sendEncodings: [
          { rid: "l", scaleResolutionDownBy: 2, maxBitrate: 150_000 },
          { rid: "h", maxBitrate: 900_000 },
        ],
      });
    }
    // The relay's offers (another page's tracks) are answered; this page never offers again.
    control.onmessage = async ({ data }) => {
      const message = JSON.parse(data);
      if (message.type !== "offer") return;
      await pc.setRemoteDescription(message);
      await pc.setLocalDescription();
      control.send(JSON.stringify({ type: "answer", sdp: pc.localDescription.sdp }));
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") resolve();
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
      setTimeout(resolve, 2000);
    });
    const response = await fetch(grant.url, {
      method: "POST",
      headers: { authorization: `Bearer ${grant.token}`, "content-type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw new Error(`POST: ${response.status} ${await response.text()}`);
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    return true;
  })(publish);
}

/** The width of the video B decodes (0 before any), and frames decoded. */
const inbound = (page) =>
  page.evaluate(async () => {
    let out = { width: 0, decoded: 0 };
    (await window.__raw.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") out = { width: r.frameWidth ?? 0, decoded: r.framesDecoded ?? 0 };
    });
    return out;
  });

test("a Chromium simulcast publisher: the subscriber decodes the low layer first, then the high one", async (t) => {
  const room = uniqueRoom("sfu-simulcast");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0" });
  const widths = [];
  try {
    await waitFor(() => a.evaluate(() => window.switchboardDemo.room.sfuGrant !== null), { message: "A has welcome.sfu" });
    await b.evaluate(rawSession, false);
    await a.evaluate(rawSession, true);
    // B decodes A's video; sample the decoded width for a while.
    await waitFor(async () => (await inbound(b)).decoded > 0, { timeoutMs: 30_000, message: "B decodes A's simulcast video" });
    const deadline = Date.now() + 25_000;
    while (Date.now() < deadline) {
      const { width } = await inbound(b);
      if (widths.at(-1) !== width) widths.push(width);
      if (width >= 640) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.ok(widths[0] > 0 && widths[0] <= 320, `the low layer first: ${JSON.stringify(widths)}`);
    assert.equal(widths.at(-1), 640, `then the high layer: ${JSON.stringify(widths)}`);
    t.diagnostic(`decoded widths at B, in order: ${JSON.stringify(widths)}`);
  } catch (error) {
    error.message += `\nwidths seen by B: ${JSON.stringify(widths)}`;
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
