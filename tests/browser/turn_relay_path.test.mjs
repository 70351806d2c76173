// With the path forced to TURN, both pages use only relayed candidates through
// our Rust relay (credentials from `welcome`, TURN REST style): chat arrives
// over the DataChannel and the fake camera is decoded on the other page.
// The relay binary is SWITCHBOARD_RELAY_BIN, target/release/relay or
// target/debug/relay; without one the test fails rather than skipping.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chat, failureContext, openPair, peerIdOf, selectedCandidateType, uniqueRoom, waitForDecodedVideo, waitForPath, workerAndBrowser,
} from "./harness.mjs";

const env = workerAndBrowser({ relay: {} });

test("forced TURN through the Rust relay: chat and video over relayed candidates", async (t) => {
  const room = uniqueRoom("turn");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, path: "turn" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "turn");
    await waitForPath(b, idA, "turn");
    assert.equal(await chat(a, b, "relayed hello from alice"), "datachannel");
    assert.equal(await chat(b, a, "relayed hello from bob"), "datachannel");
    assert.equal(await selectedCandidateType(a, idB), "relay");
    assert.equal(await selectedCandidateType(b, idA), "relay");
    assert.ok((await waitForDecodedVideo(a, idB)) > 0);
    assert.ok((await waitForDecodedVideo(b, idA)) > 0);
  } catch (error) {
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
