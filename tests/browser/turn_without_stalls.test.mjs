// Direct page-to-page traffic (UDP, and ICE-TCP, which Chromium would
// otherwise use as a direct path) is dropped by iptables: the pages'
// ephemeral ports are one range, the relay's relayed ports another; TURN
// through our relay works. With direct and relayed candidates in one ICE agent the pair reaches
// `turn` without waiting for a rung timeout, and the upgrade probes for a
// direct path never interrupt the video. When direct traffic comes back mid-call
// the pair moves turn → p2p, again without a visible stall. Video is sampled
// every 100 ms (framesDecoded of the pair's current connection) and on every
// frame the page presents (requestVideoFrameCallback).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  blockDirectPaths, failureContext, openPair, peerIdOf, selectedCandidateType, startVideoSampling, uniqueRoom, waitFor, waitForDecodedVideo, waitForPath, workerAndBrowser,
} from "./harness.mjs";

const RUNG_TIMEOUT_MS = 3000;
const UPGRADE_INTERVAL_MS = 2500;
const MAX_STALL_MS = 500;

const env = workerAndBrowser({ relay: {} });

const query = (room) => ({ room, rung_timeout_ms: String(RUNG_TIMEOUT_MS), upgrade_interval_ms: String(UPGRADE_INTERVAL_MS) });
const pcsCreated = (page) => page.evaluate(() => window.__peerConnectionsCreated);

/** The pair on `turn` with video decoded both ways; returns the pages, their ids and how long `turn` took. */
async function pairOnTurn(t, pages) {
  const [a, b] = await openPair(t, env.browser, env.dev.url, query(uniqueRoom("noStall")), undefined, { countPeerConnections: true });
  pages.push(a, b);
  const started = Date.now();
  const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
  await waitForPath(a, idB, "turn", 15_000);
  await waitForPath(b, idA, "turn", 15_000);
  const tookMs = Date.now() - started;
  await waitForDecodedVideo(a, idB);
  await waitForDecodedVideo(b, idA);
  return { a, b, idA, idB, tookMs };
}

test("P2P blocked, TURN working: turn in under 3 s, and upgrade probes never stall the video", async (t) => {
  const unblock = blockDirectPaths();
  t.after(unblock);
  const pages = [];
  try {
    const { a, b, idA, idB, tookMs } = await pairOnTurn(t, pages);
    t.diagnostic(`turn reached after ${tookMs} ms`);
    assert.ok(tookMs < 3000, `the pair reached turn after ${tookMs} ms`);
    const types = [await selectedCandidateType(a, idB), await selectedCandidateType(b, idA)];
    assert.ok(types.includes("relay"), `one end's selected local candidate is relayed: ${JSON.stringify(types)}`);
    const sampleA = await startVideoSampling(a, idB);
    const sampleB = await startVideoSampling(b, idA);
    const pcsBefore = (await pcsCreated(a)) + (await pcsCreated(b));
    // Several upgrade intervals: each probes for a direct path (which fails) next to the working connection.
    const probes = 3;
    await waitFor(async () => (await pcsCreated(a)) + (await pcsCreated(b)) >= pcsBefore + 2 * probes, {
      timeoutMs: probes * (UPGRADE_INTERVAL_MS + RUNG_TIMEOUT_MS) + 10_000,
      message: `${probes} upgrade probes`,
    });
    // Let the last probe time out too, while sampling.
    await new Promise((resolve) => setTimeout(resolve, RUNG_TIMEOUT_MS + 500));
    const [stallA, stallB] = [await sampleA.stop(), await sampleB.stop()];
    t.diagnostic(`alice ${JSON.stringify(stallA)}; bob ${JSON.stringify(stallB)}`);
    for (const [who, stall] of [["alice", stallA], ["bob", stallB]]) {
      assert.ok(stall.samples > 50 && stall.presented > 50, `${who} sampled the video: ${JSON.stringify(stall)}`);
      assert.ok(stall.decodedGapMs <= MAX_STALL_MS, `${who}: framesDecoded stalled ${stall.decodedGapMs} ms`);
      assert.ok(stall.presentedGapMs <= MAX_STALL_MS, `${who}: no frame presented for ${stall.presentedGapMs} ms`);
    }
    // Still on turn: failed probes left the working connection alone.
    for (const [page, id] of [[a, idB], [b, idA]]) {
      const history = await page.evaluate((peer) => window.switchboardDemo.paths.filter((p) => p.peerId === peer).map((p) => p.path), id);
      assert.deepEqual(history, ["turn"]);
    }
  } catch (error) {
    error.message += await failureContext(pages, env);
    throw error;
  }
});

test("upgrade without interruption: direct paths come back mid-call, the pair moves turn → p2p, the video never stalls", async (t) => {
  const unblock = blockDirectPaths();
  t.after(unblock);
  const pages = [];
  try {
    const { a, b, idA, idB } = await pairOnTurn(t, pages);
    const sampleA = await startVideoSampling(a, idB);
    const sampleB = await startVideoSampling(b, idA);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    unblock();
    await waitForPath(a, idB, "p2p", UPGRADE_INTERVAL_MS + RUNG_TIMEOUT_MS + 15_000);
    await waitForPath(b, idA, "p2p", 10_000);
    // Keep sampling across and after the switch.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const [stallA, stallB] = [await sampleA.stop(), await sampleB.stop()];
    t.diagnostic(`alice ${JSON.stringify(stallA)}; bob ${JSON.stringify(stallB)}`);
    for (const [who, stall] of [["alice", stallA], ["bob", stallB]]) {
      assert.ok(stall.samples > 20 && stall.presented > 20, `${who} sampled the video: ${JSON.stringify(stall)}`);
      assert.ok(stall.decodedGapMs <= MAX_STALL_MS, `${who}: framesDecoded stalled ${stall.decodedGapMs} ms`);
      assert.ok(stall.presentedGapMs <= MAX_STALL_MS, `${who}: no frame presented for ${stall.presentedGapMs} ms`);
    }
    assert.equal(await selectedCandidateType(a, idB), "host");
    assert.equal(await selectedCandidateType(b, idA), "host");
  } catch (error) {
    error.message += await failureContext(pages, env);
    throw error;
  }
});
