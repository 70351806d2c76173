// Two tabs in one room connect peer-to-peer: chat arrives both ways over the
// DataChannel of a direct (host-candidate) pair, and each side decodes the
// other's fake camera.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chat, diagnostics, openPair, peerIdOf, selectedCandidateType, uniqueRoom, waitForDecodedVideo, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();

test("chat both ways over P2P and the fake camera is decoded on the other page", async (t) => {
  const room = uniqueRoom("p2p");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await waitForPath(b, idA, "p2p");

    assert.equal(await chat(a, b, "hello from alice"), "datachannel");
    assert.equal(await chat(b, a, "hello from bob"), "datachannel");
    // Direct: the selected pair uses host candidates, no relay.
    assert.equal(await selectedCandidateType(a, idB), "host");
    assert.equal(await selectedCandidateType(b, idA), "host");

    assert.ok((await waitForDecodedVideo(a, idB)) > 0);
    assert.ok((await waitForDecodedVideo(b, idA)) > 0);
    // One clean negotiation: no SDK error (a renegotiation storm would end in rate_limited).
    assert.deepEqual(await a.evaluate(() => window.switchboardDemo.errors), []);
    assert.deepEqual(await b.evaluate(() => window.switchboardDemo.errors), []);
    // The page lists the peer with its path.
    assert.equal(await a.getAttribute(`#peers li[data-peer-id="${idB}"]`, "data-path"), "p2p");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
