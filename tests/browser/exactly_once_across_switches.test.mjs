// Exactly-once, in-order data across path switches: page A sends 2,000
// numbered messages at 200/s to B while the pair is forced
// p2p → websocket → turn → p2p. Every switch retransmits what B has not
// acknowledged on the new path and B drops duplicates, so B's `data` events
// are exactly 1..2000, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  failureContext, openPair, peerIdOf, uniqueRoom, waitFor, waitForPath, workerAndBrowser,
} from "./harness.mjs";

const TOTAL = 2000;
const PER_SECOND = 200;

const env = workerAndBrowser({ relay: {} });

test("2,000 messages at 200/s across forced p2p → websocket → turn → p2p arrive exactly once, in order", async (t) => {
  const room = uniqueRoom("once");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "p2p" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await waitForPath(b, idA, "p2p");
    await b.evaluate((from) => {
      window.__received = [];
      window.__via = { datachannel: 0, relay: 0 };
      window.switchboardDemo.room.on("data", ({ from: sender, data, via }) => {
        if (sender !== from || typeof data?.n !== "number") return;
        window.__received.push(data.n);
        window.__via[via] += 1;
      });
    }, idA);
    // A sends on a fixed schedule (10 messages every 50 ms) whatever the path is doing.
    const sending = a.evaluate(
      ([to, total, perSecond]) =>
        new Promise((resolve, reject) => {
          const room = window.switchboardDemo.room;
          let n = 0;
          const batch = perSecond / 20;
          const timer = setInterval(() => {
            for (let i = 0; i < batch && n < total; i++) {
              n += 1;
              room.send(to, { n }).catch((error) => {
                clearInterval(timer);
                reject(new Error(`send ${n} failed: ${error.code} ${error.message}`));
              });
            }
            if (n >= total) {
              clearInterval(timer);
              resolve(n);
            }
          }, 50);
        }),
      [idB, TOTAL, PER_SECOND],
    );
    const force = (path) => a.evaluate((p) => window.switchboardDemo.room.forcePath(p), path);
    const sentSoFar = () => b.evaluate(() => window.__received.length);
    const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

    await pause(2000);
    await force("websocket");
    await waitForPath(a, idB, "websocket", 10_000);
    await waitForPath(b, idA, "websocket", 10_000);
    await pause(2000);
    await force("turn");
    await waitForPath(a, idB, "turn", 15_000);
    await waitForPath(b, idA, "turn", 15_000);
    await pause(1500);
    await force("p2p");
    await waitForPath(a, idB, "p2p", 15_000);
    await waitForPath(b, idA, "p2p", 15_000);
    assert.equal(await sending, TOTAL);

    await waitFor(async () => (await sentSoFar()) >= TOTAL, { timeoutMs: 60_000, message: () => "B received all messages" });
    // Anything late (a duplicate slipping through) would show up within the ack and retransmission windows.
    await pause(1000);
    const received = await b.evaluate(() => window.__received);
    const expected = Array.from({ length: TOTAL }, (_, i) => i + 1);
    assert.equal(received.length, TOTAL, "no duplicates");
    assert.deepEqual(received, expected, "exactly 1..2000 in order");
    const via = await b.evaluate(() => window.__via);
    t.diagnostic(`delivered via ${JSON.stringify(via)}`);
    assert.ok(via.relay > 0 && via.datachannel > 0, "both the WebSocket rung and DataChannels carried messages");
    const history = await b.evaluate((peer) => window.switchboardDemo.paths.filter((p) => p.peerId === peer).map((p) => p.path), idA);
    assert.deepEqual(history, ["p2p", "websocket", "turn", "p2p"]);
    const snapshot = await b.evaluate(() => window.switchboardDemo.room.diagnostics());
    t.diagnostic(`B: ${JSON.stringify(snapshot.peers)}`);
  } catch (error) {
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
