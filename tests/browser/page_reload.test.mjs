// A page reload is a new peer: on `pagehide` the SDK sends `leave`, so the
// others see `peer-left` with reason `leave` at once (no ghost peer for the
// resume window), and the reloaded page joins under a new peer id.
import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnostics, openPair, peerIdOf, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();

test("reloading a page sends leave: the other page sees peer-left leave at once, then the new peer", async (t) => {
  const room = uniqueRoom("reload");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await a.evaluate(() => {
      window.__presence = [];
      const room = window.switchboardDemo.room;
      room.on("peer-left", (e) => window.__presence.push({ left: e.peerId, reason: e.reason, at: Date.now() }));
      room.on("peer-joined", (e) => window.__presence.push({ joined: e.peerId, at: Date.now() }));
    });
    const reloadedAt = Date.now();
    await b.reload();
    await b.waitForFunction(() => window.switchboardDemo?.room?.peerId, null, { timeout: 20_000 });
    const newIdB = await peerIdOf(b);
    assert.notEqual(newIdB, idB, "a reload is a new peer");
    await a.waitForFunction((id) => window.__presence.some((p) => p.joined === id), newIdB, { timeout: 20_000 });
    const presence = await a.evaluate(() => window.__presence);
    const left = presence.find((p) => p.left === idB);
    assert.ok(left, `A saw B leave: ${JSON.stringify(presence)}`);
    assert.equal(left.reason, "leave", "an explicit leave, not a heartbeat timeout or the end of the resume window");
    t.diagnostic(`peer-left ${left.at - reloadedAt} ms after the reload started`);
    assert.deepEqual(await a.evaluate(() => window.switchboardDemo.room.peers.map((p) => p.peerId)), [newIdB], "no ghost");
    await waitForPath(a, newIdB, "p2p");
    await waitForPath(b, idA, "p2p");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
