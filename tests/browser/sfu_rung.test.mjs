// The ladder's `sfu` rung through the SDK: the Worker names the room's relay
// in `welcome.sfu` (SFU_URLS), each page opens one RTCPeerConnection to the
// relay's session endpoint, and the pairs on `sfu` exchange data through the
// relay's envelope channel and see each other's tracks from it. Forced, and
// reached by the automatic ladder when direct paths are blocked with iptables
// (TURN is unreachable in this file's Worker); with the relay's SFU port
// blocked too, the ladder falls to the WebSocket rung instead.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  assertInTestNamespace, blockDirectPaths, chat, diagnostics, failureContext, launchBrowser, openPair, peerIdOf, run, SFU_PORT, SFU_URLS, startRelay, uniqueRoom, waitFor, waitForPath, worker,
} from "./harness.mjs";

let dev;
let browser;
let relay;
before(async () => {
  relay = await startRelay({ sfu: true });
  // STUN and TURN point where nothing answers: the RTC rung works only directly (host candidates),
  // so once the automatic tests block direct paths, RTC fails and the ladder goes on to the SFU.
  dev = await worker({
    port: 18920,
    inspectorPort: 19920,
    vars: { SFU_URLS, STUN_URLS: "stun:127.0.0.1:3", TURN_URLS: "turn:127.0.0.1:3?transport=udp" },
  });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await dev?.dispose();
  await relay?.stop();
});

/** framesDecoded of the video `page` receives on its SFU connection. */
function sfuFramesDecoded(page) {
  return page.evaluate(async () => {
    const pc = window.switchboardDemo.room.sfuPeerConnection;
    if (!pc) return 0;
    let frames = 0;
    (await pc.getStats()).forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") frames = Math.max(frames, report.framesDecoded ?? 0);
    });
    return frames;
  });
}

test("two pages forced to sfu chat through the relay and decode each other's camera", async (t) => {
  const room = uniqueRoom("sfu");
  const [a, b] = await openPair(t, browser, dev.url, { room, path: "sfu" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "sfu");
    await waitForPath(b, idA, "sfu");
    assert.equal(await chat(a, b, "through the relay, from alice"), "sfu");
    assert.equal(await chat(b, a, "through the relay, from bob"), "sfu");
    // No pair connection: the only RTCPeerConnection is the page's one to the relay.
    assert.equal(await a.evaluate((id) => window.switchboardDemo.room.peerConnection(id), idB), null);
    assert.equal(await a.evaluate(() => window.switchboardDemo.room.sfuState), "open");
    // Each page's fake camera reaches the other through the relay and is decoded.
    await waitFor(async () => (await sfuFramesDecoded(b)) > 0, { timeoutMs: 30_000, message: "bob decodes alice's video via the SFU" });
    await waitFor(async () => (await sfuFramesDecoded(a)) > 0, { timeoutMs: 30_000, message: "alice decodes bob's video via the SFU" });
    assert.equal(await b.getAttribute(`#peers li[data-peer-id="${idA}"]`, "data-path"), "sfu");
  } catch (error) {
    error.message += await failureContext([a, b], { dev, relay });
    throw error;
  }
});

test("600 messages across forced p2p → sfu → websocket → p2p arrive exactly once, in order", async (t) => {
  const TOTAL = 600;
  const room = uniqueRoom("sfu-once");
  const [a, b] = await openPair(t, browser, dev.url, { room, camera: "0", path: "p2p" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "p2p");
    await waitForPath(b, idA, "p2p");
    await b.evaluate((from) => {
      window.__received = [];
      window.__via = { datachannel: 0, relay: 0, sfu: 0 };
      window.switchboardDemo.room.on("data", ({ from: sender, data, via }) => {
        if (sender !== from || typeof data?.n !== "number") return;
        window.__received.push(data.n);
        window.__via[via] += 1;
      });
    }, idA);
    // A sends 5 messages every 50 ms (100/s) whatever the path is doing.
    const sending = a.evaluate(
      ([to, total]) =>
        new Promise((resolve, reject) => {
          const room = window.switchboardDemo.room;
          let n = 0;
          const timer = setInterval(() => {
            for (let i = 0; i < 5 && n < total; i++) {
              n += 1;
              room.send(to, { n }).catch((error) => {
                clearInterval(timer);
                reject(new Error(`send ${n} failed: ${error.code} ${error.message}`));
              });
            }
            if (n >= total) {
              clearInterval(timer);
              resolve(n);
            }
          }, 50);
        }),
      [idB, TOTAL],
    );
    const force = (path) => a.evaluate((p) => window.switchboardDemo.room.forcePath(p), path);
    const received = () => b.evaluate(() => window.__received.length);
    const grows = async () => {
      const before = await received();
      await waitFor(async () => (await received()) > before || before >= TOTAL, { timeoutMs: 10_000, message: "data keeps arriving" });
    };

    await grows();
    await force("sfu");
    await waitForPath(a, idB, "sfu", 20_000);
    await waitForPath(b, idA, "sfu", 20_000);
    await grows();
    await force("websocket");
    await waitForPath(a, idB, "websocket", 10_000);
    await waitForPath(b, idA, "websocket", 10_000);
    await grows();
    await force("p2p");
    await waitForPath(a, idB, "p2p", 20_000);
    await waitForPath(b, idA, "p2p", 20_000);

    assert.equal(await sending, TOTAL);
    await waitFor(async () => (await received()) >= TOTAL, { timeoutMs: 30_000, message: () => `B received all ${TOTAL}` });
    // Let retransmissions and late copies settle, then check nothing came twice.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const got = await b.evaluate(() => window.__received);
    assert.deepEqual(got, Array.from({ length: TOTAL }, (_, i) => i + 1), "exactly 1..N in order");
    const via = await b.evaluate(() => window.__via);
    assert.ok(via.sfu > 0, `some data came through the SFU: ${JSON.stringify(via)}`);
    assert.ok(via.relay > 0 && via.datachannel > 0, `and over the other rungs: ${JSON.stringify(via)}`);
  } catch (error) {
    error.message += await failureContext([a, b], { dev, relay });
    throw error;
  }
});

const history = (page, peerId) =>
  page.evaluate((id) => window.switchboardDemo.paths.filter((p) => p.peerId === id).map((p) => p.path), peerId);

test("automatic ladder: direct and TURN blocked, the pair reaches sfu and chats through the relay", async (t) => {
  assertInTestNamespace();
  const lift = blockDirectPaths();
  t.after(lift);
  const room = uniqueRoom("sfu-auto");
  // One rung timeout for RTC to fail, and the SFU session (set-up included) must work within the next.
  const [a, b] = await openPair(t, browser, dev.url, { room, camera: "0", rung_timeout_ms: "5000" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "sfu", 30_000);
    await waitForPath(b, idA, "sfu", 30_000);
    assert.deepEqual(await history(a, idB), ["sfu"], "rtc never worked, websocket was not needed");
    assert.deepEqual(await history(b, idA), ["sfu"]);
    const viaAlice = await chat(a, b, "auto via sfu, from alice");
    const state = (page) => page.evaluate(() => JSON.stringify({ sfu: window.switchboardDemo.room.sfuState, d: window.switchboardDemo.room.diagnostics().peers, m: window.switchboardDemo.messages }));
    assert.equal(viaAlice, "sfu", `${await state(a)}\n${await state(b)}`);
    assert.equal(await chat(b, a, "auto via sfu, from bob"), "sfu");
  } catch (error) {
    error.message += await failureContext([a, b], { dev, relay });
    throw error;
  }
});

test("automatic ladder: with the SFU port blocked too, the pair falls to websocket", async (t) => {
  assertInTestNamespace();
  const lift = blockDirectPaths();
  t.after(lift);
  const rules = ["udp", "tcp"].map((proto) => ["OUTPUT", "-p", proto, "--dport", String(SFU_PORT), "-j", "DROP"]);
  for (const rule of rules) run("iptables", ["-A", ...rule]);
  t.after(() => {
    for (const rule of rules) run("iptables", ["-D", ...rule]);
  });
  const room = uniqueRoom("sfu-blocked");
  const [a, b] = await openPair(t, browser, dev.url, { room, camera: "0", rung_timeout_ms: "3000" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "websocket", 30_000);
    await waitForPath(b, idA, "websocket", 30_000);
    assert.deepEqual(await history(a, idB), ["websocket"]);
    assert.deepEqual(await history(b, idA), ["websocket"]);
    // The SFU rung was tried (its session endpoint answered) before the fall.
    assert.notEqual(await a.evaluate(() => window.switchboardDemo.room.sfuState), null);
    assert.equal(await chat(a, b, "via the socket, from alice"), "relay");
  } catch (error) {
    error.message += await failureContext([a, b], { dev, relay });
    throw error;
  }
});
