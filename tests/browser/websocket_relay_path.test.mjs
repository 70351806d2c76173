// With the path forced to the WebSocket rung, the pair never opens an
// RTCPeerConnection and chat travels as `relay` frames over signaling.
// (Media needs an RTC rung; the WebSocket rung carries data only.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { chat, diagnostics, openPair, peerIdOf, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();

test("forced WebSocket relay: chat both ways as relay frames, no peer connection", async (t) => {
  const room = uniqueRoom("ws");
  // Only one side forces: the pair must still agree on the rung.
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, path: "websocket" }, { room });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "websocket");
    await waitForPath(b, idA, "websocket");

    assert.equal(await chat(a, b, "over the socket, from alice"), "relay");
    assert.equal(await chat(b, a, "over the socket, from bob"), "relay");
    assert.equal(await a.evaluate((id) => window.switchboardDemo.room.peerConnection(id), idB), null);
    assert.equal(await b.evaluate((id) => window.switchboardDemo.room.peerConnection(id), idA), null);
    assert.equal(await b.getAttribute(`#peers li[data-peer-id="${idA}"]`, "data-path"), "websocket");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
