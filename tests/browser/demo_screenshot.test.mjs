// A screenshot of the demo with two peers connected (chat, camera tiles, the
// peer list with its path), saved to tests/artifacts/ for review.
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { artifactPath, chat, diagnostics, openPair, peerIdOf, uniqueRoom, waitForDecodedVideo, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();

test("screenshot of the demo with two peers connected", async (t) => {
  const room = uniqueRoom("demo");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await waitForPath(b, idA, "p2p");
    await chat(b, a, "hi alice, can you see me?");
    await chat(a, b, "yes, loud and clear");
    await waitForDecodedVideo(a, idB);
    await a.waitForFunction(() => {
      const video = document.querySelector(".tile:not(#tile-self) video");
      return video && video.readyState >= 2 && video.videoWidth > 0;
    }, null, { timeout: 15_000 });

    const file = artifactPath("demo-two-peers.png");
    const png = await a.screenshot({ path: file, fullPage: true });
    assert.ok(png.length > 10_000, `screenshot is ${png.length} bytes`);
    assert.equal(statSync(file).size, png.length);
    // PNG signature
    assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
