// TURN credentials that expire during a call (TURN_TTL_S=10): the SDK fetches
// fresh ones from /v1/ice-servers at 80 % of their lifetime and restarts ICE
// on the pair that relays, so the connection moves to an allocation made with
// the new credentials (a new relayed candidate, a new username) before the
// old ones expire on the relay, without leaving the call.
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

test("TURN credentials refreshed mid-call: ICE restarts onto an allocation with the new credentials", async (t) => {
  const room = uniqueRoom("turnrefresh");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "turn" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "turn");
    await waitForPath(b, idA, "turn");
    const first = await waitFor(() => relayedCandidate(a, idB), { message: "a relayed candidate" });
    const firstB = await waitFor(() => relayedCandidate(b, idA), { message: "a relayed candidate on bob" });
    // 80 % of the lifetime later the SDK refreshes, and ICE restarts on both ends' allocations.
    const [now, nowB] = await Promise.all([
      waitFor(async () => {
        const c = await relayedCandidate(a, idB);
        return c && c.candidate !== first.candidate && c.username !== first.username ? c : null;
      }, { timeoutMs: TTL_S * 1000 + 10_000, message: "alice on a new allocation with new credentials" }),
      waitFor(async () => {
        const c = await relayedCandidate(b, idA);
        return c && c.candidate !== firstB.candidate && c.username !== firstB.username ? c : null;
      }, { timeoutMs: TTL_S * 1000 + 10_000, message: "bob on a new allocation with new credentials" }),
    ]);
    t.diagnostic(`alice ${first.candidate} -> ${now.candidate}; bob ${firstB.candidate} -> ${nowB.candidate}`);
    // Same call: the pair never left its connection, and data still flows over it.
    assert.deepEqual(await a.evaluate((id) => window.switchboardDemo.paths.filter((p) => p.peerId === id).map((p) => p.path), idB), ["turn"]);
    await a.evaluate((id) => window.switchboardDemo.room.send(id, { text: "after refresh", id: "r1" }), idB);
    const via = await (await b.waitForFunction(() => window.switchboardDemo.messages.find((m) => m.id === "r1")?.via, null, { timeout: 10_000 })).jsonValue();
    assert.equal(via, "datachannel");
  } catch (error) {
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
