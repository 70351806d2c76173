// Twelve pages join one room at once. Each page negotiates with eleven others
// over trickle ICE; the SDK batches candidates and paces its frames with the
// room's limits, so no page trips the room's rate limit, and every one of
// the 132 pair directions connects (on p2p: nothing is blocked here). The
// rung timeout is long and upgrade probes frequent, because twelve pages
// with eleven connections each on a shared 2-core box are slow to start: the
// test is about the room's limits, not about speed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnostics, openDemo, uniqueRoom, waitFor, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();
const PAGES = 12;

test("twelve pages in one room with trickle ICE: no rate_limited, every pair connected", async (t) => {
  const room = uniqueRoom("twelve");
  const pages = await Promise.all(
    Array.from({ length: PAGES }, (_, i) => openDemo(env.browser, env.dev.url, {
        room,
        camera: "0",
        name: `p${i}`,
        rung_timeout_ms: "30000",
        upgrade_interval_ms: "5000",
      })),
  );
  for (const page of pages) t.after(() => page.context().close());
  try {
    const summary = () =>
      Promise.all(
        pages.map((page) =>
          page.evaluate(() => {
            const room = window.switchboardDemo.room;
            return {
              connected: room.peers.filter((p) => p.state === "connected" && p.path === "p2p").length,
              errors: window.switchboardDemo.errors,
              reconnects: window.switchboardDemo.signaling.filter((s) => s.state === "reconnecting").map((s) => s.reason),
            };
          }),
        ),
      );
    let last = [];
    await waitFor(
      async () => {
        last = await summary();
        return last.every((s) => s.connected === PAGES - 1);
      },
      { timeoutMs: 120_000, intervalMs: 500, message: () => `every page connected to ${PAGES - 1} peers: ${JSON.stringify(last.map((s) => s.connected))}` },
    );
    const connected = last.reduce((sum, s) => sum + s.connected, 0);
    t.diagnostic(`${connected} pair directions connected`);
    assert.equal(connected, PAGES * (PAGES - 1));
    const errors = last.flatMap((s) => s.errors);
    if (errors.length > 0) t.diagnostic(`errors: ${JSON.stringify(errors)}`);
    const reconnects = last.flatMap((s) => s.reconnects);
    if (reconnects.length > 0) t.diagnostic(`reconnects: ${JSON.stringify(reconnects)}`);
    assert.deepEqual(errors.filter((e) => e.startsWith("rate_limited")), [], "no page tripped the room's rate limit");
    assert.deepEqual(errors.filter((e) => e.startsWith("webrtc")), [], "no WebRTC errors");
  } catch (error) {
    error.message += `\n${await diagnostics(pages.slice(0, 3), env.dev)}`;
    throw error;
  }
});
