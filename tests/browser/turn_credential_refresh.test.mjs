// TURN credentials that expire during a call (TURN_TTL_S=10): the SDK fetches
// fresh ones from /v1/ice-servers at 80 % of their lifetime and restarts ICE
// on the pair that relays, so the connection moves to an allocation made with
// the new credentials (a new relayed candidate, a new username) before the
// old ones expire on the relay (which stops relaying for them), without
// leaving the call: three times, so the call outlives three lifetimes.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  failureContext, openPair, peerIdOf, uniqueRoom, waitFor, waitForPath, workerAndBrowser,
} from "./harness.mjs";

const TTL_S = 10;
const env = workerAndBrowser({ relay: {}, worker: { port: 18860, inspectorPort: 19860, vars: { TURN_TTL_S: String(TTL_S) } } });

/** The local relayed candidate of the selected pair (address:port) and the TURN username in use. */
function relayedCandidate(page, peerId) {
  return page.evaluate(async (id) => {
    const room = window.switchboardDemo.room;
    const pc = room.peerConnection(id);
    if (!pc) return null;
    const stats = await pc.getStats();
    const byId = new Map();
    let pairId = null;
    stats.forEach((r) => {
      byId.set(r.id, r);
      if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    const local = pairId && byId.get(byId.get(pairId).localCandidateId);
    if (!local || local.candidateType !== "relay") return null;
    return { candidate: `${local.address}:${local.port}`, username: pc.getConfiguration().iceServers[0]?.username };
  }, peerId);
}

test("TURN credentials refreshed mid-call, three times: the call outlives three credential lifetimes on new allocations", async (t) => {
  const room = uniqueRoom("turnrefresh");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "turn" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "turn");
    await waitForPath(b, idA, "turn");
    const started = Date.now();
    let prevA = await waitFor(() => relayedCandidate(a, idB), { message: "a relayed candidate" });
    let prevB = await waitFor(() => relayedCandidate(b, idA), { message: "a relayed candidate on bob" });
    // Three lifetimes: each time, 80 % of the lifetime later the SDK refreshes and ICE restarts
    // on both ends' allocations, before the relay stops relaying for the old credentials.
    for (let round = 1; round <= 3; round++) {
      const [nextA, nextB] = await Promise.all([
        waitFor(async () => {
          const c = await relayedCandidate(a, idB);
          return c && c.candidate !== prevA.candidate && c.username !== prevA.username ? c : null;
        }, { timeoutMs: TTL_S * 1000 + 10_000, message: `alice on a new allocation with new credentials (round ${round})` }),
        waitFor(async () => {
          const c = await relayedCandidate(b, idA);
          return c && c.candidate !== prevB.candidate && c.username !== prevB.username ? c : null;
        }, { timeoutMs: TTL_S * 1000 + 10_000, message: `bob on a new allocation with new credentials (round ${round})` }),
      ]);
      t.diagnostic(`round ${round}: alice ${prevA.candidate} -> ${nextA.candidate}; bob ${prevB.candidate} -> ${nextB.candidate}`);
      [prevA, prevB] = [nextA, nextB];
      const id = `r${round}`;
      await a.evaluate(([peer, mid]) => window.switchboardDemo.room.send(peer, { text: "after refresh", id: mid }), [idB, id]);
      const via = await (await b.waitForFunction((mid) => window.switchboardDemo.messages.find((m) => m.id === mid)?.via, id, { timeout: 10_000 })).jsonValue();
      assert.equal(via, "datachannel");
    }
    // The call has outlived three credential lifetimes on the same connection, and data flows.
    const left = started + 3 * TTL_S * 1000 + 500 - Date.now();
    if (left > 0) await new Promise((resolve) => setTimeout(resolve, left));
    await a.evaluate((peer) => window.switchboardDemo.room.send(peer, { text: "after three lifetimes", id: "end" }), idB);
    const via = await (await b.waitForFunction(() => window.switchboardDemo.messages.find((m) => m.id === "end")?.via, null, { timeout: 10_000 })).jsonValue();
    assert.equal(via, "datachannel");
    assert.deepEqual(await a.evaluate((id) => window.switchboardDemo.paths.filter((p) => p.peerId === id).map((p) => p.path), idB), ["turn"]);
    for (const page of [a, b]) {
      const ids = await page.evaluate(() => window.switchboardDemo.messages.map((m) => m.id).filter(Boolean));
      assert.equal(new Set(ids).size, ids.length, `no message twice: ${ids}`);
    }
  } catch (error) {
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
