// Glare: both pages add a track at the same instant, 20 times (each a new
// audio track, so every one after the first renegotiates on both ends at
// once). Perfect negotiation resolves every collision: both connections end
// `stable` with every track of both pages negotiated.
import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnostics, openPair, peerIdOf, uniqueRoom, waitFor, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();
const ROUNDS = 20;

/** Schedules ROUNDS track additions on `page`, round i at `startAt + i * spacingMs` (wall clock, shared by both pages). */
function scheduleTracks(page, startAt, spacingMs) {
  return page.evaluate(
    ([at, spacing, rounds]) => {
      const audio = new AudioContext();
      window.__localTracks = [];
      for (let i = 0; i < rounds; i++) {
        setTimeout(() => {
          const oscillator = audio.createOscillator();
          const sink = audio.createMediaStreamDestination();
          oscillator.connect(sink);
          oscillator.start();
          const track = sink.stream.getAudioTracks()[0];
          window.__localTracks.push(track);
          window.switchboardDemo.room.addTrack(track, sink.stream);
        }, Math.max(0, at + i * spacing - Date.now()));
      }
    },
    [startAt, spacingMs, ROUNDS],
  );
}

/** The negotiated state of `page`'s connection to `peerId`. */
function negotiated(page, peerId) {
  return page.evaluate((id) => {
    const pc = window.switchboardDemo.room.peerConnection(id);
    if (!pc) return null;
    const local = new Set(window.__localTracks ?? []);
    const transceivers = pc.getTransceivers().filter((t) => t.receiver.track.kind === "audio" && !t.stopped);
    return {
      signalingState: pc.signalingState,
      sending: transceivers.filter((t) => local.has(t.sender.track) && ["sendrecv", "sendonly"].includes(t.currentDirection)).length,
      receiving: transceivers.filter((t) => ["sendrecv", "recvonly"].includes(t.currentDirection)).length,
      added: local.size,
    };
  }, peerId);
}

test("glare: both pages add a track at the same instant, 20 times; both end stable with every track", async (t) => {
  const room = uniqueRoom("glare");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await waitForPath(b, idA, "p2p");
    const startAt = Date.now() + 500;
    await Promise.all([scheduleTracks(a, startAt, 150), scheduleTracks(b, startAt, 150)]);
    let last;
    await waitFor(
      async () => {
        const [na, nb] = [await negotiated(a, idB), await negotiated(b, idA)];
        last = { alice: na, bob: nb };
        const done = (n) => n && n.added === ROUNDS && n.signalingState === "stable" && n.sending === ROUNDS && n.receiving >= ROUNDS;
        return done(na) && done(nb);
      },
      { timeoutMs: 60_000, intervalMs: 250, message: () => `both stable with all ${ROUNDS} tracks each way: ${JSON.stringify(last)}` },
    );
    // And it stays that way (no negotiation loop still running).
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal((await negotiated(a, idB)).signalingState, "stable");
    assert.equal((await negotiated(b, idA)).signalingState, "stable");
    assert.equal(await a.evaluate(() => window.switchboardDemo.errors.length), 0, "no negotiation errors");
    assert.equal(await b.evaluate(() => window.switchboardDemo.errors.length), 0, "no negotiation errors");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
