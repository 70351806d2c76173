// `wrangler dev` is killed and restarted mid-conversation. Both pages notice,
// reconnect with backoff, resume with their resume_token and last_seq, keep
// their peer ids, and every chat message (including those typed while the
// server was down) arrives exactly once, in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnostics, openPair, peerIdOf, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

// Its own instance: this test kills it.
const env = workerAndBrowser({ worker: { port: 18810, inspectorPort: 19810 } });

/** Starts a send without waiting for it: while the server is down the SDK queues it. */
function sendLater(page, text) {
  return page.evaluate((t) => {
    window.switchboardDemo.sendChat(t).catch((e) => window.switchboardDemo.errors.push(`send failed: ${e}`));
  }, text);
}

const received = (page) =>
  page.evaluate(() => window.switchboardDemo.messages.filter((m) => m.via !== "self").map((m) => m.text));

async function waitForText(page, text, timeoutMs = 60_000) {
  await page.waitForFunction(
    (t) => window.switchboardDemo.messages.some((m) => m.via !== "self" && m.text === t),
    text,
    { timeout: timeoutMs },
  );
}

const signalingState = (page, state) =>
  page.waitForFunction((s) => window.switchboardDemo.room.signalingState === s, state, { timeout: 30_000 });

test("kill and restart wrangler dev mid-conversation: same peer ids, nothing lost or duplicated", async (t) => {
  const room = uniqueRoom("resume");
  // The WebSocket rung routes chat through signaling, so resume is what carries it across the restart.
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, path: "websocket", camera: "0" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "websocket");
    await waitForPath(b, idA, "websocket");

    const expectedAtB = [];
    const expectedAtA = [];
    for (let i = 1; i <= 5; i++) {
      await sendLater(a, `a-${i}`);
      expectedAtB.push(`a-${i}`);
      await sendLater(b, `b-${i}`);
      expectedAtA.push(`b-${i}`);
    }
    await waitForText(b, "a-5");
    await waitForText(a, "b-5");

    await env.dev.stop();
    await signalingState(a, "reconnecting");
    await signalingState(b, "reconnecting");
    // Typed while the server is down: queued in the SDK, sent after the resume.
    for (let i = 6; i <= 8; i++) {
      await sendLater(a, `a-${i}`);
      expectedAtB.push(`a-${i}`);
      await sendLater(b, `b-${i}`);
      expectedAtA.push(`b-${i}`);
    }

    await env.dev.start();
    await signalingState(a, "open");
    await signalingState(b, "open");
    assert.equal(await peerIdOf(a), idA, "alice kept her peer id");
    assert.equal(await peerIdOf(b), idB, "bob kept his peer id");

    for (let i = 9; i <= 10; i++) {
      await sendLater(a, `a-${i}`);
      expectedAtB.push(`a-${i}`);
      await sendLater(b, `b-${i}`);
      expectedAtA.push(`b-${i}`);
    }
    // A last marker: relay frames are ordered per sender, so once it arrived a duplicate would have too.
    await sendLater(a, "a-end");
    expectedAtB.push("a-end");
    await sendLater(b, "b-end");
    expectedAtA.push("b-end");
    await waitForText(b, "a-end");
    await waitForText(a, "b-end");

    assert.deepEqual(await received(b), expectedAtB);
    assert.deepEqual(await received(a), expectedAtA);
    assert.deepEqual(await a.evaluate(() => window.switchboardDemo.errors.filter((e) => e.startsWith("send failed"))), []);
    assert.deepEqual(await b.evaluate(() => window.switchboardDemo.errors.filter((e) => e.startsWith("send failed"))), []);
    assert.equal(await a.getAttribute(`#peers li[data-peer-id="${idB}"]`, "data-path"), "websocket");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
