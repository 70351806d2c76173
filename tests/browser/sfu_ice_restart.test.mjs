// ICE restart on the `sfu` rung: the pages' paths to the relay are cut
// mid-stream (iptables drops everything to and from the relay's SFU port, UDP
// and ICE-TCP; a page has several local candidates, so cutting one flow only
// makes Chromium switch pairs). ICE turns `disconnected`, each page's SDK
// restarts ICE over `PATCH /v1/sessions/{id}` (new ufrag/pwd in, the relay's
// new ones out) and, once the path is back, the same sessions and
// RTCPeerConnections carry on: every message A sent during the outage arrives
// at B exactly once, in order, and no new session was made.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  assertInTestNamespace, failureContext, openPair, peerIdOf, run, SFU_HTTP_PORT, SFU_PORT, SFU_URLS, uniqueRoom, waitFor, waitForPath, workerAndBrowser,
} from "./harness.mjs";

const env = workerAndBrowser({
  relay: { sfu: true },
  worker: { port: 18930, inspectorPort: 19930, vars: { SFU_URLS, STUN_URLS: "stun:127.0.0.1:3", TURN_URLS: "turn:127.0.0.1:3?transport=udp" } },
});

/** A counter of the relay's `/metrics`. */
async function relayMetric(name) {
  const text = await (await fetch(`http://127.0.0.1:${SFU_HTTP_PORT}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

/** The local UDP port and the remote ICE ufrag of the page's connection to the relay. */
const sfuPath = (page) =>
  page.evaluate(async () => {
    const pc = window.switchboardDemo.room.sfuPeerConnection;
    if (!pc) return null;
    const stats = await pc.getStats();
    const byId = new Map();
    stats.forEach((r) => byId.set(r.id, r));
    let pair;
    stats.forEach((r) => {
      if (r.type === "transport" && r.selectedCandidatePairId) pair = byId.get(r.selectedCandidatePairId);
    });
    const local = pair && byId.get(pair.localCandidateId);
    const ufrag = /a=ice-ufrag:(\S+)/.exec(pc.remoteDescription?.sdp ?? "")?.[1] ?? null;
    return { port: local?.port ?? null, ufrag, ice: pc.iceConnectionState };
  });

/** Drops the paths to the relay's SFU port (UDP and ICE-TCP, both directions) until the returned
 * function (also run after the test) lifts the rules; the session endpoint's port stays open. */
function cutSfuPort(t) {
  const rules = ["udp", "tcp"].flatMap((proto) => [
    ["OUTPUT", "-p", proto, "--dport", String(SFU_PORT), "-j", "DROP"],
    ["OUTPUT", "-p", proto, "--sport", String(SFU_PORT), "-j", "DROP"],
  ]);
  for (const rule of rules) run("iptables", ["-A", ...rule]);
  let lifted = false;
  const lift = () => {
    if (lifted) return;
    lifted = true;
    for (const rule of rules) run("iptables", ["-D", ...rule]);
  };
  t.after(lift);
  return lift;
}

test("an ICE restart over PATCH keeps the sfu session: messages sent across the outage arrive exactly once", async (t) => {
  assertInTestNamespace();
  const TOTAL = 800;
  const room = uniqueRoom("sfu-restart");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "sfu" });
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "sfu");
    await waitForPath(b, idA, "sfu");
    const pathOf = (page) => waitFor(async () => {
      const p = await sfuPath(page);
      return p?.ufrag ? p : null;
    }, { message: "the page's connection to the relay" });
    const before = [await pathOf(a), await pathOf(b)];
    const created = await relayMetric("switchboard_relay_sfu_sessions_created_total");
    for (const page of [a, b]) {
      await page.evaluate(() => {
        const pc = window.switchboardDemo.room.sfuPeerConnection;
        window.__sfuPc = pc;
        window.__iceStates = [];
        pc.addEventListener("iceconnectionstatechange", () => window.__iceStates.push(pc.iceConnectionState));
      });
    }
    await b.evaluate((from) => {
      window.__received = [];
      window.__via = {};
      window.switchboardDemo.room.on("data", ({ from: sender, data, via }) => {
        if (sender !== from || typeof data?.n !== "number") return;
        window.__received.push(data.n);
        window.__via[via] = (window.__via[via] ?? 0) + 1;
      });
    }, idA);
    // A sends 4 messages every 50 ms (80/s) for 10 s, whatever its path is doing.
    const sending = a.evaluate(
      ([to, total]) =>
        new Promise((resolve, reject) => {
          const room = window.switchboardDemo.room;
          let n = 0;
          const timer = setInterval(() => {
            for (let i = 0; i < 4 && n < total; i++) {
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
    const received = () => b.evaluate(() => window.__received.length);
    await waitFor(async () => (await received()) > 20, { message: "data flows before the outage" });

    // Cut the paths to the relay's SFU port (UDP and ICE-TCP, both directions); the session
    // endpoint (another port) stays reachable.
    const lift = cutSfuPort(t);
    // Each page's SDK notices (ICE disconnected for iceGraceMs) and restarts ICE over PATCH.
    await waitFor(async () => (await relayMetric("switchboard_relay_sfu_ice_restarts_total")) >= 2, {
      timeoutMs: 20_000,
      message: "the relay answered both pages' ICE-restart PATCHes",
    });
    const during = await received();
    lift();

    for (const [i, page] of [a, b].entries()) {
      await waitFor(async () => {
        const p = await sfuPath(page);
        return p && p.ufrag !== before[i].ufrag && (p.ice === "connected" || p.ice === "completed");
      }, { timeoutMs: 20_000, message: `page ${i} reconnected to the relay under the relay's new ICE credentials` });
    }
    assert.equal(await sending, TOTAL);
    await waitFor(async () => (await received()) >= TOTAL, { timeoutMs: 30_000, message: () => `B received all ${TOTAL}` });
    // Let retransmissions and late copies settle, then check nothing came twice.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const got = await b.evaluate(() => window.__received);
    assert.deepEqual(got, Array.from({ length: TOTAL }, (_, i) => i + 1), "exactly 1..N in order");
    assert.ok(during < TOTAL, `the outage happened mid-stream (${during} of ${TOTAL} had arrived)`);
    assert.deepEqual(await b.evaluate(() => window.__via), { sfu: TOTAL }, "all of it through the relay's session");
    // The same sessions and connections: no new POST, no new RTCPeerConnection.
    for (const page of [a, b]) {
      assert.equal(await page.evaluate(() => window.switchboardDemo.room.sfuPeerConnection === window.__sfuPc), true);
      assert.equal(await page.evaluate(() => window.switchboardDemo.room.sfuState), "open");
    }
    assert.equal(await relayMetric("switchboard_relay_sfu_sessions_created_total"), created);
    assert.equal(await relayMetric("switchboard_relay_sfu_sessions"), 2);
    assert.equal(await relayMetric("switchboard_relay_sfu_ice_restarts_total"), 2, "one restart per page");
  } catch (error) {
    error.message += `\niptables: ${run("iptables", ["-L", "OUTPUT", "-v", "-n"])}`;
    for (const page of [a, b]) {
      error.message += `\nICE states: ${JSON.stringify(await page.evaluate(() => window.__iceStates).catch(() => null))}`;
      error.message += `, path to the relay: ${JSON.stringify(await sfuPath(page).catch(() => null))}`;
    }
    error.message += await failureContext([a, b], env);
    throw error;
  }
});

/** framesDecoded of the video `page` receives on its connection to the relay. */
const sfuFramesDecoded = (page) =>
  page.evaluate(async () => {
    const pc = window.switchboardDemo.room.sfuPeerConnection;
    let frames = 0;
    (await pc?.getStats())?.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") frames = Math.max(frames, r.framesDecoded ?? 0);
    });
    return frames;
  });

test("a camera started while the relay path is down waits for the ICE restart and is then published on the same session", async (t) => {
  assertInTestNamespace();
  const room = uniqueRoom("sfu-restart-track");
  const [a, b] = await openPair(t, env.browser, env.dev.url, { room, camera: "0", path: "sfu" });
  const states = [];
  try {
    const [idA, idB] = [await peerIdOf(a), await peerIdOf(b)];
    await waitForPath(a, idB, "sfu");
    await waitForPath(b, idA, "sfu");
    await waitFor(async () => (await sfuPath(a))?.ice === "connected", { message: "A is connected to the relay" });
    const before = await sfuPath(a);
    const created = await relayMetric("switchboard_relay_sfu_sessions_created_total");
    const restarts = await relayMetric("switchboard_relay_sfu_ice_restarts_total");
    await a.evaluate(() => {
      window.__sfuPc = window.switchboardDemo.room.sfuPeerConnection;
      window.__sfuStates = [];
      window.switchboardDemo.room.on("error", (e) => window.__sfuStates.push(`error: ${e.message}`));
    });
    const lift = cutSfuPort(t);
    // ICE notices the cut; before the SDK restarts it (iceGraceMs later) A's camera starts.
    await waitFor(async () => (await sfuPath(a))?.ice === "disconnected", { timeoutMs: 20_000, message: "A's ICE is disconnected" });
    await a.evaluate(async () => {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      window.switchboardDemo.room.addTrack(stream.getVideoTracks()[0], stream);
    });
    // B's path is cut too and B restarts as well, so the relay's restart counter cannot tell whose
    // PATCH it answered: A's own remote description carries the relay's new ufrag once A's was.
    await waitFor(async () => {
      const ufrag = (await sfuPath(a))?.ufrag;
      return ufrag && ufrag !== before.ufrag;
    }, {
      timeoutMs: 20_000,
      message: "the relay answered A's ICE-restart PATCH",
    });
    assert.ok((await relayMetric("switchboard_relay_sfu_ice_restarts_total")) >= restarts + 1, "the relay counted the restart");
    lift();
    await waitFor(async () => {
      const p = await sfuPath(a);
      return p && p.ufrag !== before.ufrag && (p.ice === "connected" || p.ice === "completed");
    }, { timeoutMs: 20_000, message: "A reconnected to the relay under the relay's new ICE credentials" });
    await waitFor(async () => (await sfuFramesDecoded(b)) > 0, { timeoutMs: 30_000, message: "B decodes the camera A started during the outage" });
    states.push(...(await a.evaluate(() => window.__sfuStates)));
    assert.deepEqual(states, [], "no error on A's session");
    assert.equal(await a.evaluate(() => window.switchboardDemo.room.sfuPeerConnection === window.__sfuPc), true, "the same connection");
    assert.equal(await a.evaluate(() => window.switchboardDemo.room.sfuState), "open");
    assert.equal(await relayMetric("switchboard_relay_sfu_sessions_created_total"), created, "no new session");
  } catch (error) {
    error.message += `\nA's errors: ${JSON.stringify(await a.evaluate(() => window.__sfuStates).catch(() => null))}`;
    error.message += `\npath to the relay: ${JSON.stringify(await sfuPath(a).catch(() => null))}`;
    error.message += await failureContext([a, b], env);
    throw error;
  }
});
