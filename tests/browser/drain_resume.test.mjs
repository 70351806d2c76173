// An operator drains the room before a deploy (POST /v1/rooms/{room}/drain):
// every socket is closed with 4003 and the reason `retry_after_ms=<n>`. Each
// page waits a uniformly random time in [0, n] (full jitter) and resumes as
// the same peer; chat keeps working and nothing is lost or duplicated.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chat, diagnostics, openPair, peerIdOf, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

const ADMIN = "browser-test-admin-token";
const RETRY_AFTER_MS = 3000;
const env = workerAndBrowser({ worker: { port: 18840, inspectorPort: 19840, vars: { ADMIN_TOKEN: ADMIN } } });

test("drain (close 4003 retry_after_ms): pages resume as the same peers after a jittered delay within the window", async (t) => {
  const room = uniqueRoom("drain");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "websocket" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "websocket");
    for (const page of [a, b]) {
      await page.evaluate(() => {
        window.__states = [];
        window.switchboardDemo.room.on("signaling-state", (s) => window.__states.push(s));
      });
    }
    const response = await fetch(`${env.dev.url}/v1/rooms/${room}/drain?retry_after_ms=${RETRY_AFTER_MS}`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    assert.equal(response.status, 200, await response.text());
    for (const [page, id] of [[a, idA], [b, idB]]) {
      await page.waitForFunction(() => window.__states.some((s) => s.state === "open" && s.resumed), null, { timeout: RETRY_AFTER_MS + 15_000 });
      const states = await page.evaluate(() => window.__states);
      const waiting = states.find((s) => s.state === "reconnecting");
      assert.ok(waiting, JSON.stringify(states));
      assert.match(waiting.reason, /close 4003: retry_after_ms=3000/);
      assert.ok(waiting.delayMs >= 0 && waiting.delayMs <= RETRY_AFTER_MS, `delay ${waiting.delayMs} within [0, ${RETRY_AFTER_MS}]`);
      assert.equal(await peerIdOf(page), id, "resumed as the same peer");
    }
    assert.equal(await chat(a, b, "after the drain, from alice"), "relay");
    assert.equal(await chat(b, a, "after the drain, from bob"), "relay");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
