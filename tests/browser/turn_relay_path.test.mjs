// With the path forced to TURN, both pages use only relayed candidates through
// our Rust relay (credentials from `welcome`, TURN REST style): chat arrives
// over the DataChannel and the fake camera is decoded on the other page.
// The relay binary is SWITCHBOARD_RELAY_BIN, target/release/relay or
// target/debug/relay; without one the test fails rather than skipping.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import {
  ROOT, TURN_SECRET, chat, diagnostics, launchBrowser, openPair, peerIdOf, selectedCandidateType, uniqueRoom,
  waitFor, waitForDecodedVideo, waitForPath, worker,
} from "./harness.mjs";

const RELAY_BIN = [
  process.env.SWITCHBOARD_RELAY_BIN,
  join(ROOT, "target", "release", "relay"),
  join(ROOT, "target", "debug", "relay"),
].find((path) => path && existsSync(path));

/** True once a STUN Binding request to 127.0.0.1:3478 gets any answer. */
function stunAnswers() {
  return new Promise((resolve) => {
    const socket = createSocket("udp4");
    const request = Buffer.alloc(20);
    request.writeUInt16BE(0x0001, 0); // Binding request
    request.writeUInt16BE(0, 2);
    request.writeUInt32BE(0x2112a442, 4); // RFC 5389 magic cookie
    randomBytes(12).copy(request, 8);
    const done = (ok) => {
      clearTimeout(timer);
      socket.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 300);
    socket.on("message", () => done(true));
    socket.on("error", () => done(false));
    socket.send(request, 3478, "127.0.0.1");
  });
}

let dev;
let browser;
let relay;
before(async () => {
  assert.ok(RELAY_BIN, "no relay binary: run `cargo build --release -p switchboard-relay` first");
  const args = ["--listen", "127.0.0.1:3478", "--allow-loopback-peers", "--realm", "switchboard"];
  relay = spawn(RELAY_BIN, args, {
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RELAY_SECRET: TURN_SECRET },
  });
  relay.stderrText = "";
  relay.stderr.on("data", (chunk) => {
    relay.stderrText = (relay.stderrText + chunk).slice(-4000);
  });
  await waitFor(stunAnswers, { timeoutMs: 15_000, message: () => `relay answering STUN on 127.0.0.1:3478\n${relay.stderrText}` });
  dev = await worker();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await dev?.dispose();
  if (relay) {
    const exited = new Promise((resolve) => relay.once("exit", resolve));
    try {
      process.kill(-relay.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await exited;
  }
});

test("forced TURN through the Rust relay: chat and video over relayed candidates", async (t) => {
  const room = uniqueRoom("turn");
  const [a, b] = await openPair(t, browser, dev.url, { room, path: "turn" });
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
    error.message += `\n${await diagnostics([a, b], dev)}\n--- relay ---\n${relay?.stderrText ?? ""}`;
    throw error;
  }
});
