// P2P and TURN are both blocked: Chromium runs without loopback ICE candidates
// (so no host candidates exist on this loopback-only network) and the TURN
// server in `iceServers` is unreachable. The pair's one RTC connection (direct
// and relayed candidates in one ICE agent) does not work within one rung
// timeout, so the pair moves to the WebSocket rung; both pages agree, chat
// (sent before, during and after the move) arrives exactly once, and the page
// shows the WebSocket rung.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chat, diagnostics, openPair, peerIdOf, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

// Its own instance, so TURN points at a port where no relay answers whatever else runs.
const env = workerAndBrowser({
  worker: {
    port: 18820,
    inspectorPort: 19820,
    vars: { STUN_URLS: "stun:127.0.0.1:3", TURN_URLS: "turn:127.0.0.1:3?transport=udp" },
  },
  browser: { loopbackCandidates: false },
});

test("with P2P and TURN blocked the pair falls to the WebSocket rung after one rung timeout and chat still arrives", async (t) => {
  const room = uniqueRoom("ladder");
  const query = { room, camera: "0", rung_timeout_ms: "3000" };
  const [a, b] = await openPair(t, env.browser, env.dev.url, query);
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "websocket", 30_000);
    await waitForPath(b, idA, "websocket", 30_000);

    const history = (page, peerId) =>
      page.evaluate((id) => window.switchboardDemo.paths.filter((p) => p.peerId === id).map((p) => p.path), peerId);
    assert.deepEqual(await history(a, idB), ["websocket"]);
    assert.deepEqual(await history(b, idA), ["websocket"]);

    assert.equal(await chat(a, b, "still here, from alice"), "relay");
    assert.equal(await chat(b, a, "still here, from bob"), "relay");
    assert.equal(await a.textContent(`#peers li[data-peer-id="${idB}"] .path`), "websocket");
    assert.equal(await b.textContent(`#peers li[data-peer-id="${idA}"] .path`), "websocket");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
