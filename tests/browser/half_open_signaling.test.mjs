// A half-open signaling connection: iptables silently drops the TCP packets
// of A's WebSocket (no FIN, no RST) while page A sends 50 signals to B. A
// reaches the Worker through a TCP forwarder of its own, so only A's
// connection is cut; B stays connected. The frames
// are written into a dead socket; A's outbox keeps them (protocol v1.1) until
// the room acknowledges them. Once the SDK notices (three unanswered pings)
// and resumes, it resends from the first frame the room has not processed
// (`welcome.cseq`), so B receives all 50 exactly once, in order, and every one
// of A's `signal()` promises resolves.
import { test } from "node:test";
import assert from "node:assert/strict";
import { blackholeTcpPort, diagnostics, openDemo, peerIdOf, tcpForwarder, uniqueRoom, waitForPath, workerAndBrowser } from "./harness.mjs";

const env = workerAndBrowser();
const COUNT = 50;
const FORWARDER_PORT = 18851;

test("half-open socket: 50 signals sent into it reach B exactly once after the resume", async (t) => {
  const room = uniqueRoom("halfopen");
  const forwarder = await tcpForwarder(FORWARDER_PORT, Number(new URL(env.dev.url).port));
  t.after(() => forwarder.close());
  const a = await openDemo(env.browser, forwarder.url, { room, camera: "0", name: "alice" });
  t.after(() => a.context().close());
  const b = await openDemo(env.browser, env.dev.url, { room, camera: "0", name: "bob" });
  t.after(() => b.context().close());
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await b.evaluate((from) => {
      window.__signals = [];
      window.switchboardDemo.room.on("signal", ({ from: sender, payload }) => {
        if (sender === from && typeof payload?.n === "number") window.__signals.push(payload.n);
      });
    }, idA);
    await a.evaluate(() => {
      window.__states = [];
      window.switchboardDemo.room.on("signaling-state", (s) => window.__states.push(s));
    });
    assert.equal(await a.evaluate(() => window.switchboardDemo.room.diagnostics().signaling.rev), 2, "the room speaks v1.2");

    const lift = blackholeTcpPort(FORWARDER_PORT);
    t.after(lift);
    // Written into the dead socket: nothing comes back, not even an error.
    await a.evaluate(
      ([to, count]) => {
        const room = window.switchboardDemo.room;
        window.__sendResults = [];
        for (let n = 1; n <= count; n++) {
          room.signal(to, { n }).then(
            () => window.__sendResults.push("ok"),
            (error) => window.__sendResults.push(error.code),
          );
        }
      },
      [idB, COUNT],
    );
    // The SDK notices by itself (three unanswered pings), then the network comes back.
    await a.waitForFunction(() => window.__states.some((s) => s.state === "reconnecting"), null, { timeout: 20_000 });
    assert.equal(await b.evaluate(() => window.__signals.length), 0, "nothing got through the dead socket");
    lift();
    await a.waitForFunction(() => window.__states.some((s) => s.state === "open" && s.resumed), null, { timeout: 30_000 });
    await b.waitForFunction((count) => window.__signals.length >= count, COUNT, { timeout: 30_000 });
    await a.waitForFunction((count) => window.__sendResults.length >= count, COUNT, { timeout: 30_000 });
    // Late duplicates would arrive within the room's checkpoint and ack windows.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.deepEqual(await b.evaluate(() => window.__signals), Array.from({ length: COUNT }, (_, i) => i + 1));
    assert.deepEqual(await a.evaluate(() => window.__sendResults), Array(COUNT).fill("ok"), "every signal() resolved on the room's ack");
    assert.equal(await a.evaluate(() => window.switchboardDemo.room.peerId), idA, "resumed, not rejoined");
    const bStates = await b.evaluate(() => window.switchboardDemo.room.signalingState);
    assert.equal(bStates, "open");
  } catch (error) {
    error.message += `\n${await diagnostics([a, b], env.dev)}`;
    throw error;
  }
});
