// Shared helpers for the browser tests: `wrangler dev` in its own process
// group (so it can be killed and restarted mid-test), headless Debian
// Chromium through playwright-core, and deadline-bounded waits.
import { spawn, spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { connect, createServer } from "node:net";
import { randomBytes } from "node:crypto";
import { after, before } from "node:test";
import { createRequire } from "node:module";
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, existsSync, rmSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ARTIFACTS = join(ROOT, "tests", "artifacts");
const require = createRequire(join(ROOT, "client", "package.json"));
const { chromium } = require("playwright-core");

export const TURN_SECRET = "browser-test-turn-secret";
const WRANGLER = join(ROOT, "node_modules", ".bin", "wrangler");

/** Chromium flags from TESTING.md; `loopbackCandidates: false` leaves out the flag that lets ICE use 127.0.0.1. */
export function chromiumArgs({ loopbackCandidates = true } = {}) {
  const args = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ];
  if (loopbackCandidates) args.push("--allow-loopback-in-peer-connection");
  return args;
}

export async function launchBrowser(options = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: chromiumArgs(options),
  });
}

/** A unique room name per test, so tests sharing one Worker never see each other. */
export function uniqueRoom(prefix) {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A `wrangler dev` instance in its own process group. State persists in
 * `persistDir` across `restart()`, so rooms (and their resume tokens) survive
 * a kill, as they survive a deploy in production.
 */
export class WranglerDev {
  constructor({ port, inspectorPort, vars = {} }) {
    this.port = port;
    this.inspectorPort = inspectorPort;
    this.vars = {
      HEARTBEAT_MS: "1000",
      RESUME_WINDOW_MS: "60000",
      STUN_URLS: "stun:127.0.0.1:3478",
      TURN_URLS: "turn:127.0.0.1:3478?transport=udp",
      TURN_SECRET,
      ...vars,
    };
    this.work = mkdtempSync(join(tmpdir(), "switchboard-browser-"));
    this.envFile = join(this.work, "empty.env");
    writeFileSync(this.envFile, "");
    this.logFile = join(this.work, "wrangler.log");
    this.child = null;
    this.url = `http://127.0.0.1:${port}`;
  }

  async start() {
    const args = [
      "dev", "--local", "--ip", "127.0.0.1", "--port", String(this.port),
      "--inspector-port", String(this.inspectorPort), "--persist-to", join(this.work, "state"),
      "--env-file", this.envFile, "--show-interactive-dev-session=false", "--log-level", "info",
    ];
    for (const [key, value] of Object.entries(this.vars)) args.push("--var", `${key}:${value}`);
    const log = openSync(this.logFile, "a");
    this.child = spawn(WRANGLER, args, {
      cwd: ROOT,
      detached: true, // its own process group: killing the group also stops workerd
      stdio: ["ignore", log, log],
      env: {
        ...process.env,
        SWITCHBOARD_SKIP_BUILD: "1",
        WRANGLER_SEND_METRICS: "false",
        CLOUDFLARE_CF_FETCH_ENABLED: "false",
      },
    });
    closeSync(log); // the child holds its own copy
    await waitFor(async () => {
      try {
        return (await fetch(`${this.url}/healthz`)).ok;
      } catch {
        return false;
      }
    }, { timeoutMs: 90_000, message: () => `wrangler dev did not become ready:\n${this.log()}` });
  }

  log() {
    return existsSync(this.logFile) ? readFileSync(this.logFile, "utf8").split("\n").slice(-40).join("\n") : "";
  }

  /** Kills the whole process group and waits until the port stops answering. */
  async stop() {
    if (!this.child) return;
    const pgid = this.child.pid;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await exited;
    this.child = null;
    await waitFor(async () => {
      try {
        await fetch(`${this.url}/healthz`);
        return false;
      } catch {
        return true;
      }
    }, { timeoutMs: 10_000, message: "wrangler dev still answers after SIGKILL" });
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async dispose() {
    await this.stop();
    rmSync(this.work, { recursive: true, force: true });
  }
}

/** The Worker for this run: the runner's shared instance (SWITCHBOARD_URL) or a fresh one. */
export async function worker({ port, inspectorPort, vars } = {}) {
  if (process.env.SWITCHBOARD_URL && !vars && !port) {
    return { url: process.env.SWITCHBOARD_URL, dispose: async () => {} };
  }
  const dev = new WranglerDev({ port: port ?? 18900, inspectorPort: inspectorPort ?? 19900, vars });
  await dev.start();
  return dev;
}

/**
 * A test file's Worker (see `worker`) and headless browser, started in a
 * `before` hook and closed in an `after` hook. Read `env.dev` and
 * `env.browser` inside the tests.
 */
export function workerAndBrowser({ worker: workerOptions, browser: browserOptions, relay: relayOptions } = {}) {
  const env = { dev: undefined, browser: undefined, relay: undefined };
  before(async () => {
    if (relayOptions) env.relay = await startRelay(relayOptions);
    env.dev = await worker(workerOptions);
    env.browser = await launchBrowser(browserOptions);
  });
  after(async () => {
    await env.browser?.close();
    await env.dev?.dispose();
    await env.relay?.stop();
  });
  return env;
}

/** The pages' diagnostics and the relay's log, for a failing test's message. */
export async function failureContext(pages, env) {
  return `\n${await diagnostics(pages, env.dev)}\n--- relay ---\n${env.relay?.stderrText ?? ""}`;
}

/**
 * Alice's and Bob's demo pages (`openDemo` options each; Bob's default to
 * Alice's), both closed when test `t` ends.
 */
export async function openPair(t, browser, url, alice, bob = alice, options = {}) {
  const a = await openDemo(browser, url, { ...alice, name: "alice" }, options);
  t.after(() => a.context().close());
  const b = await openDemo(browser, url, { ...bob, name: "bob" }, options);
  t.after(() => b.context().close());
  return [a, b];
}

/** Polls `predicate` until it is truthy or the deadline passes (then throws with `message`). */
export async function waitFor(predicate, { timeoutMs = 20_000, intervalMs = 100, message = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${typeof message === "function" ? message() : message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/**
 * Opens the demo page in a fresh context and waits until it joined the room
 * (unless `join=0`). `countPeerConnections: true` counts the page's
 * RTCPeerConnections in `window.__peerConnectionsCreated`.
 */
export async function openDemo(browser, baseUrl, query, { countPeerConnections: count = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  if (count) await countPeerConnections(context);
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
  page.on("pageerror", (error) => consoleLines.push(`[pageerror] ${error.message}`));
  page.consoleLines = consoleLines;
  await page.goto(`${baseUrl}/?${new URLSearchParams(query)}`);
  if (query.join === "0") await page.waitForFunction(() => window.SwitchboardSDK, null, { timeout: 20_000 });
  else await page.waitForFunction(() => window.switchboardDemo?.room?.peerId, null, { timeout: 20_000 });
  return page;
}

export const peerIdOf = (page) => page.evaluate(() => window.switchboardDemo.room.peerId);

/** Waits until `page` sees `peerId` on `path` with a connected link. */
export async function waitForPath(page, peerId, path, timeoutMs = 30_000) {
  await page.waitForFunction(
    ([id, want]) => {
      const room = window.switchboardDemo.room;
      return room.path(id) === want && room.connectionState(id) === "connected";
    },
    [peerId, path],
    { timeout: timeoutMs },
  );
}

/** Sends a chat message from `page` and waits until `other` received it; returns how it came. */
export async function chat(page, other, text, timeoutMs = 15_000) {
  await page.evaluate((t) => window.switchboardDemo.sendChat(t), text);
  const handle = await other.waitForFunction(
    (t) => window.switchboardDemo.messages.find((m) => m.text === t && m.via !== "self")?.via,
    text,
    { timeout: timeoutMs },
  );
  return handle.jsonValue();
}

/** The local candidate type of the selected ICE pair on `page`'s connection to `peerId`. */
export function selectedCandidateType(page, peerId) {
  return page.evaluate(async (id) => {
    const pc = window.switchboardDemo.room.peerConnection(id);
    if (!pc) return null;
    const stats = await pc.getStats();
    const byId = new Map();
    let pairId = null;
    stats.forEach((report) => {
      byId.set(report.id, report);
      if (report.type === "transport" && report.selectedCandidatePairId) pairId = report.selectedCandidatePairId;
    });
    const pair = pairId && byId.get(pairId);
    const local = pair && byId.get(pair.localCandidateId);
    return local ? local.candidateType : null;
  }, peerId);
}

/** Waits until `page` decoded video frames from `peerId` (inbound-rtp video framesDecoded > 0). */
export async function waitForDecodedVideo(page, peerId, timeoutMs = 30_000) {
  return waitFor(
    () =>
      page.evaluate(async (id) => {
        const pc = window.switchboardDemo.room.peerConnection(id);
        if (!pc) return 0;
        let frames = 0;
        (await pc.getStats()).forEach((report) => {
          if (report.type === "inbound-rtp" && report.kind === "video") frames = Math.max(frames, report.framesDecoded ?? 0);
        });
        return frames;
      }, peerId),
    { timeoutMs, intervalMs: 250, message: "inbound-rtp video framesDecoded > 0" },
  );
}

export function artifactPath(name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  return join(ARTIFACTS, name);
}

/** Logs, ladder history and errors of the pages, and the Worker's log, for a failing test's output. */
export async function diagnostics(pages, dev) {
  const lines = [];
  for (const [i, page] of pages.entries()) {
    const state = await page
      .evaluate(() => {
        const demo = window.switchboardDemo;
        return JSON.stringify({
          peerId: demo?.room?.peerId,
          signaling: demo?.room?.signalingState,
          peers: demo?.room?.peers,
          paths: demo?.paths,
          errors: demo?.errors,
          signaling: demo?.signaling,
        });
      })
      .catch((error) => `unavailable: ${error.message}`);
    lines.push(`page${i}: ${state}`);
    lines.push(...(page.consoleLines ?? []).slice(-30).map((l) => `page${i}: ${l}`));
  }
  if (dev?.log) lines.push("--- wrangler dev ---", dev.log());
  return lines.join("\n");
}

// ---- the relay (TURN) and network faults, for the ladder tests ----

export const RELAY_BIN = [
  process.env.SWITCHBOARD_RELAY_BIN,
  join(ROOT, "target", "release", "relay"),
  join(ROOT, "target", "debug", "relay"),
].find((path) => path && existsSync(path));

/** True once a STUN Binding request to 127.0.0.1:`port` gets any answer. */
export function stunAnswers(port = 3478) {
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
    socket.send(request, port, "127.0.0.1");
  });
}

/** The relay's SFU media port (UDP and ICE-TCP) and its session endpoint (HTTP), with `startRelay({ sfu: true })`. */
export const SFU_PORT = 3479;
export const SFU_HTTP_PORT = 3480;
/** `SFU_URLS` for a Worker whose rooms use that relay. */
export const SFU_URLS = `http://127.0.0.1:${SFU_HTTP_PORT}`;

/**
 * Our Rust relay as the TURN server on 127.0.0.1:3478 (the shared Worker's
 * TURN_URLS), in its own process group, relaying from `portRange`.
 */
export async function startRelay({ portRange = "50000-50999", sfu = false } = {}) {
  if (!RELAY_BIN) throw new Error("no relay binary: run `cargo build --release -p switchboard-relay` first");
  const args = ["--listen", "127.0.0.1:3478", "--allow-loopback-peers", "--realm", "switchboard", "--port-range", portRange];
  // The SFU: media and data on SFU_PORT (UDP, and ICE-TCP on the same TCP port), sessions over HTTP.
  if (sfu) args.push("--sfu-listen", `127.0.0.1:${SFU_PORT}`, "--sfu-http-listen", `127.0.0.1:${SFU_HTTP_PORT}`);
  const child = spawn(RELAY_BIN, args, {
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RELAY_SECRET: TURN_SECRET },
  });
  const relay = {
    stderrText: "",
    async stop() {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
      await exited;
    },
  };
  child.stderr.on("data", (chunk) => {
    relay.stderrText = (relay.stderrText + chunk).slice(-4000);
  });
  await waitFor(stunAnswers, { timeoutMs: 15_000, message: () => `relay answering STUN on 127.0.0.1:3478\n${relay.stderrText}` });
  return relay;
}

/** Runs a command to completion; throws with its output when it fails. */
export function run(command, args) {
  const result = spawnSync(command, args, { encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${result.stderr || result.stdout || result.error}`);
  return result.stdout;
}

/**
 * Network faults only make sense (and are only safe) inside the test's own
 * network namespace, which tests/browser/run.sh creates.
 */
export function assertInTestNamespace() {
  if (process.env.SWITCHBOARD_IN_NETNS !== "1") {
    throw new Error("this test changes iptables rules and sysctls: run it through tests/browser/run.sh (its own network namespace)");
  }
}

/**
 * The pages' ephemeral ports (the namespace's local port range, set by
 * `blockDirectPaths`), below the kernel's default range where the shared
 * Worker's own listening ports were taken; the relay relays from 50000-50999.
 */
export const PAGE_PORTS = "20000:29999";

/**
 * Blocks direct page-to-page traffic: UDP and ICE-TCP where both ends are in
 * the pages' ephemeral range. TURN (page ↔ 3478, relay ports ↔ page) and the
 * pages' and Worker's other TCP flows (one end on a listening port outside
 * the range) are untouched. Returns the function that lifts the block.
 */
export function blockDirectPaths() {
  assertInTestNamespace();
  // Restored on lift: a server started later (another file's wrangler dev) must not take its
  // internal ports from the pages' range, where page-to-page TCP is dropped.
  const previousRange = run("sysctl", ["-n", "net.ipv4.ip_local_port_range"]).trim().split(/\s+/).join(" ");
  run("sysctl", ["-q", "-w", `net.ipv4.ip_local_port_range=${PAGE_PORTS.replace(":", " ")}`]);
  const rules = ["udp", "tcp"].map((proto) => ["OUTPUT", "-p", proto, "--sport", PAGE_PORTS, "--dport", PAGE_PORTS, "-j", "DROP"]);
  for (const rule of rules) run("iptables", ["-A", ...rule]);
  let lifted = false;
  return () => {
    if (lifted) return;
    lifted = true;
    for (const rule of rules) run("iptables", ["-D", ...rule]);
    run("sysctl", ["-q", "-w", `net.ipv4.ip_local_port_range=${previousRange}`]);
  };
}

/**
 * A plain TCP forwarder from 127.0.0.1:`port` to 127.0.0.1:`target`, so one
 * page can reach the Worker over a port of its own (and only that page's
 * connection can be cut). `close()` stops it.
 */
export async function tcpForwarder(port, target) {
  const sockets = new Set();
  const server = createServer((client) => {
    const upstream = connect(target, "127.0.0.1");
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => server.listen(port, "127.0.0.1", resolve).once("error", reject));
  return {
    url: `http://127.0.0.1:${port}`,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Silently drops (no RST, no FIN) every TCP packet to and from `port`: a half-open connection. Returns the undo. */
export function blackholeTcpPort(port) {
  assertInTestNamespace();
  const rules = [
    ["INPUT", "-p", "tcp", "--dport", String(port), "-j", "DROP"],
    ["INPUT", "-p", "tcp", "--sport", String(port), "-j", "DROP"],
  ];
  for (const rule of rules) run("iptables", ["-A", ...rule]);
  let lifted = false;
  return () => {
    if (lifted) return;
    lifted = true;
    for (const rule of rules) run("iptables", ["-D", ...rule]);
  };
}

/**
 * Starts sampling what `page` shows of `peerId`'s video: every 100 ms the
 * `framesDecoded` of the pair's current RTCPeerConnection, and every frame
 * the remote <video> element presents (requestVideoFrameCallback). `stop()`
 * returns the longest time without progress by each measure, in ms.
 */
export async function startVideoSampling(page, peerId) {
  await page.evaluate((id) => {
    const pcIds = new WeakMap();
    let nextPcId = 1;
    const state = { samples: [], frames: [], timer: 0, stopped: false };
    window.__videoSampling = state;
    state.timer = setInterval(async () => {
      const pc = window.switchboardDemo.room.peerConnection(id);
      let frames = 0;
      if (pc) {
        if (!pcIds.has(pc)) pcIds.set(pc, nextPcId++);
        (await pc.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "video") frames = Math.max(frames, r.framesDecoded ?? 0);
        });
      }
      state.samples.push({ t: performance.now(), pc: pc ? pcIds.get(pc) : 0, frames });
    }, 100);
    const video = document.querySelector(`#tile-${CSS.escape(id)} video`);
    const onFrame = (now) => {
      if (state.stopped) return;
      state.frames.push(now);
      video.requestVideoFrameCallback(onFrame);
    };
    if (video) video.requestVideoFrameCallback(onFrame);
  }, peerId);
  return {
    async stop() {
      return page.evaluate(() => {
        const state = window.__videoSampling;
        state.stopped = true;
        clearInterval(state.timer);
        const end = performance.now();
        // framesDecoded: progress when the same connection decoded more, or a new connection already decodes.
        let last = state.samples[0]?.t ?? end;
        let decodedGap = 0;
        const seen = new Map();
        for (const s of state.samples) {
          const before = seen.get(s.pc);
          const progressed = s.pc !== 0 && s.frames > 0 && (before === undefined || s.frames > before);
          seen.set(s.pc, s.frames);
          if (progressed) {
            decodedGap = Math.max(decodedGap, s.t - last);
            last = s.t;
          }
        }
        decodedGap = Math.max(decodedGap, end - last);
        let presentedGap = 0;
        let previous = state.frames[0] ?? end;
        for (const t of state.frames) {
          presentedGap = Math.max(presentedGap, t - previous);
          previous = t;
        }
        presentedGap = Math.max(presentedGap, end - previous);
        return {
          decodedGapMs: Math.round(decodedGap),
          presentedGapMs: Math.round(presentedGap),
          samples: state.samples.length,
          presented: state.frames.length,
        };
      });
    },
  };
}

/** Counts the RTCPeerConnections a page creates (install before the page loads). */
export async function countPeerConnections(context) {
  await context.addInitScript(() => {
    const Original = window.RTCPeerConnection;
    window.__peerConnectionsCreated = 0;
    window.RTCPeerConnection = function (...args) {
      window.__peerConnectionsCreated += 1;
      return new Original(...args);
    };
    window.RTCPeerConnection.prototype = Original.prototype;
  });
}
