// The relay fleet benchmark (run by scripts/bench-fleet.sh inside its own network namespace,
// against a `wrangler dev` with the relay registry on). Three measurements, printed as Markdown:
//
// 1. Failover: a real relay node (the release binary, default heartbeat interval) is the room's
//    pinned node; a WebSocket client of the room (caps=relays) waits while the node is killed
//    with SIGKILL; the time from the kill to the `relays-changed` frame, median and worst of N
//    kills, with the Worker's default lease.
// 2. Heartbeats: signed heartbeats of HB_NODES nodes posted by HB_CONCURRENCY workers for
//    HB_SECS seconds; accepted heartbeats/s and latency, next to GET /healthz (the router alone,
//    no Durable Object) with the same workers in the same run as the baseline. Both straight to
//    the workerd that runs the Worker (INNER_URL), then both through wrangler's proxy. Then the
//    same heartbeats over WebSocket: one socket per node (HB_NODES sockets, each opened with a
//    signed upgrade, `GET /v1/relays/ws`), each sending its node's next signed heartbeat frame
//    when the reply to the previous one arrives, for HB_SECS seconds.
// 3. Spread: CLIENTS clients ask for ICE servers at SPREAD_RATE/s while 3 simulated nodes of
//    unequal base load report their load (CPU share, allocations = clients sent to them so far)
//    every 2 s (the default interval); how many clients each node got, next to the expected
//    split of the selection (each client to a node with a chance in proportion to its free
//    capacity at that moment, with perfect knowledge of the load). Then a burst: BURST clients
//    at once, between two heartbeats, over 3 nodes of equal load; how many each node got (a
//    least-loaded-first selection would send them all to one).
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";

const ROOT = process.env.ROOT;
const require = createRequire(join(ROOT, "package.json"));
const WebSocket = require("ws");

const BASE = process.env.WORKER_URL;
const SECRET = process.env.REGISTRY_SECRET;
const ADMIN = process.env.ADMIN_TOKEN;
const TURN_SECRET = process.env.TURN_SECRET;
const RELAY_BIN = process.env.RELAY_BIN;
const INNER = process.env.INNER_URL ?? BASE;
const ONLY = process.env.ONLY ?? "";
const INNER_PID = process.env.INNER_PID;
/** Seconds of CPU profile of the Worker (its inspector) during the first heartbeat run; 0: none. */
const PROFILE = Number(process.env.PROFILE ?? 0);
const INSPECTOR_PORT = process.env.INSPECTOR_PORT;

/** CPU seconds (user + system) the workerd that runs the Worker has used so far. */
function workerdCpu() {
  if (!INNER_PID) return NaN;
  const stat = readFileSync(`/proc/${INNER_PID}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of /proc/PID/stat; `fields` starts at field 3.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
/** The Worker's default RELAY_LEASE_MS (proto::registry::DEFAULT_LEASE_MS), for deadlines only. */
const LEASE_MS = 5000;
const KILLS = Number(process.env.KILLS ?? 10);
const HB_NODES = Number(process.env.HB_NODES ?? 200);
const HB_CONCURRENCY = Number(process.env.HB_CONCURRENCY ?? 16);
const HB_SECS = Number(process.env.HB_SECS ?? 10);
const CLIENTS = Number(process.env.CLIENTS ?? 1000);
const SPREAD_RATE = Number(process.env.SPREAD_RATE ?? 100);
const BURST = Number(process.env.BURST ?? 100);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const quantile = (sorted, q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

const lastSigned = new Map();
function signed(body, node) {
  const t = Math.max(Date.now(), (lastSigned.get(node) ?? 0) + 1);
  lastSigned.set(node, t);
  const mac = createHmac("sha256", SECRET).update(`${t}.`).update(body).digest("hex");
  return `t=${t},v1=${mac}`;
}

async function beat(node, region, load, draining = false, urls = undefined, base = BASE) {
  const body = JSON.stringify({
    node_id: node,
    region,
    urls: urls ?? { turn: [`turn:${node}.bench:3478?transport=udp`] },
    load,
    draining,
  });
  const response = await fetch(`${base}/v1/relays/heartbeat`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-switchboard-signature": signed(body, node) },
    body,
  });
  await response.arrayBuffer();
  return response.status;
}

async function relays() {
  const response = await fetch(`${BASE}/v1/relays`, { headers: { authorization: `Bearer ${ADMIN}` } });
  return (await response.json()).relays ?? [];
}

async function waitFor(what, predicate, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await predicate()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function startRelay(ip, id, portRange) {
  const child = spawn(
    RELAY_BIN,
    [
      "--listen", `${ip}:3478`, "--allow-loopback-peers", "--realm", "bench", "--port-range", portRange, "--threads", "1",
      "--drain-timeout", "0", "--worker-url", BASE, "--node-id", id, "--region", "fo",
      "--public-url", `turn:${ip}:3478?transport=udp`,
    ],
    { detached: true, stdio: "ignore", env: { ...process.env, RELAY_SECRET: TURN_SECRET, RELAY_REGISTRY_SECRET: SECRET } },
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return {
    kill() {
      process.kill(child.pid, "SIGKILL");
      return exited;
    },
    async stop() {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        // gone
      }
      await exited;
    },
  };
}

/** Joins `room` with caps=relays; resolves with the socket and its welcome. */
function joinRoom(room, region) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${BASE.replace("http", "ws")}/v1/rooms/${room}?caps=relays`, {
      headers: { "x-switchboard-region": region },
    });
    const frames = [];
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      frame.at = performance.now();
      if (frame.type === "welcome") resolve({ ws, welcome: frame, frames });
      else frames.push(frame);
    });
    ws.on("error", reject);
  });
}

async function failover() {
  const survivor = startRelay("127.0.0.3", "fz-survivor", "52000-52999");
  await waitFor("the survivor registered", async () => (await relays()).some((n) => n.node_id === "fz-survivor" && n.live));
  const times = [];
  try {
    for (let k = 1; k <= KILLS; k++) {
      const id = `fa-${k}`;
      const node = startRelay("127.0.0.2", id, "51000-51999");
      try {
        await waitFor(`${id} registered`, async () => (await relays()).some((n) => n.node_id === id && n.live));
        // The router's copy of the list is at most 3 s old: join once it names the new node.
        let client;
        const deadline = Date.now() + 15_000;
        for (;;) {
          client = await joinRoom(`failover-${process.pid}-${k}`, "fo");
          const urls = client.welcome.ice_servers.flatMap((s) => s.urls);
          if (urls.some((u) => u.startsWith("turn:127.0.0.2"))) break;
          client.ws.close();
          if (Date.now() > deadline) throw new Error(`${id} never pinned`);
          await sleep(500);
        }
        const killed = performance.now();
        await node.kill();
        await waitFor("relays-changed", () => client.frames.some((f) => f.type === "relays-changed"), LEASE_MS + 20_000);
        const frame = client.frames.find((f) => f.type === "relays-changed");
        times.push(frame.at - killed);
        client.ws.close();
      } finally {
        await node.stop();
      }
    }
  } finally {
    await survivor.stop();
  }
  const sorted = [...times].sort((a, b) => a - b);
  return { kills: times.length, medianMs: Math.round(quantile(sorted, 0.5)), worstMs: Math.round(sorted.at(-1)), all: times.map(Math.round) };
}

async function hammer(secs, concurrency, request) {
  const latencies = [];
  const cpuBefore = workerdCpu();
  let ok = 0;
  let refused = 0;
  const end = performance.now() + secs * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      let i = w;
      while (performance.now() < end) {
        const start = performance.now();
        const status = await request(i);
        latencies.push(performance.now() - start);
        if (status === 200) ok += 1;
        else refused += 1;
        i += concurrency;
      }
    }),
  );
  const sorted = latencies.sort((a, b) => a - b);
  // The Worker's own CPU per request: unlike requests/s, it does not move with the load of
  // other processes on the machine (the load generator included).
  const cpuUs = Math.round(((workerdCpu() - cpuBefore) * 1e6) / Math.max(1, latencies.length));
  return { perSecond: Math.round(ok / secs), cpuUs, refused, p50Ms: +quantile(sorted, 0.5).toFixed(1), p99Ms: +quantile(sorted, 0.99).toFixed(1) };
}

/** Opens node `node`'s heartbeat socket on `base` (the upgrade signed over the node id). */
function openSocket(node, base) {
  const t = Date.now();
  const mac = createHmac("sha256", SECRET).update(`${t}.`).update(`relay-ws:${node}`).digest("hex");
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base.replace("http", "ws")}/v1/relays/ws`, {
      headers: { "x-switchboard-node": node, "x-switchboard-signature": `t=${t},v1=${mac}` },
    });
    ws.once("open", () => resolve(ws));
    ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)));
    ws.once("error", reject);
  });
}

/**
 * Heartbeats over WebSocket: `nodes` sockets, each sending its node's next signed heartbeat
 * frame when the previous reply arrived, for `secs` seconds (a socket whose reply does not come
 * stops at the deadline plus 10 s). The same result shape as `hammer`.
 */
async function hammerSockets(secs, nodes, base, load) {
  const sockets = [];
  for (let n = 0; n < nodes; n += 50) {
    const batch = Array.from({ length: Math.min(50, nodes - n) }, (_, k) => openSocket(`hb-${n + k}`, base));
    sockets.push(...(await Promise.all(batch)));
  }
  const latencies = [];
  let ok = 0;
  let refused = 0;
  const cpuBefore = workerdCpu();
  const started = performance.now();
  const end = started + secs * 1000;
  const runs = sockets.map(
    (ws, n) =>
      new Promise((resolve) => {
        const node = `hb-${n}`;
        let i = n;
        let sentAt = 0;
        const send = () => {
          if (performance.now() >= end || ws.readyState !== WebSocket.OPEN) return resolve();
          const body = JSON.stringify({ node_id: node, region: "hb", urls: { turn: [`turn:${node}.bench:3478?transport=udp`] }, load: load(i), draining: false });
          sentAt = performance.now();
          ws.send(JSON.stringify({ type: "heartbeat", signature: signed(body, node), body }));
        };
        ws.on("message", (data) => {
          latencies.push(performance.now() - sentAt);
          if (JSON.parse(String(data)).type === "accepted") ok += 1;
          else refused += 1;
          i += nodes;
          send();
        });
        ws.once("close", resolve);
        send();
      }),
  );
  await Promise.race([Promise.all(runs), sleep(secs * 1000 + 10_000)]);
  const elapsed = (performance.now() - started) / 1000;
  const cpuUs = Math.round(((workerdCpu() - cpuBefore) * 1e6) / Math.max(1, latencies.length));
  for (const ws of sockets) ws.close();
  const sorted = latencies.sort((a, b) => a - b);
  return {
    perSecond: Math.round(ok / Math.max(secs, elapsed)),
    cpuUs,
    refused,
    p50Ms: +(quantile(sorted, 0.5) ?? NaN).toFixed(1),
    p99Ms: +(quantile(sorted, 0.99) ?? NaN).toFixed(1),
  };
}

async function heartbeats() {
  // Each node's load moves a little from beat to beat, as a real node's does.
  const load = (i) => ({ cpu_percent: 10 + (i % 3), cores: 1, allocations: i % 7, max_allocations: 1000 });
  const rows = [];
  for (const [via, base] of [["workerd", INNER], ["wrangler proxy", BASE]]) {
    // The profile (stderr) shows where a heartbeat's CPU goes: scripts/profile-worker.mjs.
    const profiling = PROFILE > 0 && via === "workerd" && INSPECTOR_PORT
      ? new Promise((resolve) => {
          const p = spawn("node", [join(ROOT, "scripts/profile-worker.mjs"), INSPECTOR_PORT, String(Math.min(PROFILE, HB_SECS))], { stdio: ["ignore", "pipe", "inherit"] });
          let text = "";
          p.stdout.on("data", (d) => (text += d));
          p.once("exit", () => resolve(text));
        })
      : null;
    const registry = await hammer(HB_SECS, HB_CONCURRENCY, (i) => beat(`hb-${i % HB_NODES}`, "hb", load(i), false, undefined, base));
    const sockets = await hammerSockets(HB_SECS, HB_NODES, base, load);
    const baseline = await hammer(HB_SECS, HB_CONCURRENCY, async () => {
      const response = await fetch(`${base}/healthz`);
      await response.arrayBuffer();
      return response.status;
    });
    if (profiling) console.error(`--- CPU profile, heartbeats straight to workerd ---\n${await profiling}`);
    rows.push({ via, registry, sockets, baseline });
  }
  // The bench's nodes leave the fleet.
  for (let i = 0; i < HB_NODES; i++) await beat(`hb-${i}`, "hb", load(0), true);
  return rows;
}

/** Asks for ICE servers as a client of `region`; the node named first, if one of `nodes`. */
async function firstNode(nodes, region, c) {
  const ip = `2001:db8:5::${(c + 1).toString(16)}`;
  const response = await fetch(`${BASE}/v1/ice-servers`, { headers: { "x-switchboard-region": region, "cf-connecting-ip": ip } });
  const body = await response.json();
  const first = (body.iceServers ?? []).flatMap((s) => (s.username ? s.urls : []))[0] ?? "";
  return { node: nodes.find((n) => first.includes(`${n.id}.bench`)), status: response.status };
}

async function spread() {
  const nodes = [
    { id: "sp-1", cpu: 10, clients: 0 },
    { id: "sp-2", cpu: 30, clients: 0 },
    { id: "sp-3", cpu: 50, clients: 0 },
  ];
  const MAX_ALLOC = 1000;
  const report = () =>
    Promise.all(nodes.map((n) => beat(n.id, "sp", { cpu_percent: n.cpu, cores: 1, allocations: n.clients, max_allocations: MAX_ALLOC })));
  const score = (n, clients) => Math.min(1000, Math.max(n.cpu * 10, Math.floor((clients * 1000) / MAX_ALLOC)));
  await report();
  let reporting = true;
  const reporter = (async () => {
    while (reporting) {
      await sleep(2000);
      await report();
    }
  })();
  await sleep(3500); // past the router's 3 s copy
  /** The expected split: each client's chance of each node, from the true load at that moment. */
  const expected = nodes.map(() => 0);
  /** Clients whose answer named none of the three nodes, by HTTP status. */
  const unplaced = new Map();
  for (let c = 0; c < CLIENTS; c++) {
    const started = performance.now();
    const free = nodes.map((n, i) => 1000 - score(n, expected[i]));
    const total = free.reduce((a, b) => a + b, 0);
    free.forEach((f, i) => (expected[i] += total > 0 ? f / total : 1 / nodes.length));
    const { node, status } = await firstNode(nodes, "sp", c);
    if (node) node.clients += 1;
    else unplaced.set(status, (unplaced.get(status) ?? 0) + 1);
    await sleep(Math.max(0, 1000 / SPREAD_RATE - (performance.now() - started)));
  }
  reporting = false;
  await reporter;
  for (const n of nodes) await beat(n.id, "sp", { cpu_percent: n.cpu, cores: 1 }, true);

  // The burst: equal nodes, one heartbeat each, then BURST clients at once.
  const equal = [{ id: "bu-1" }, { id: "bu-2" }, { id: "bu-3" }].map((n) => ({ ...n, clients: 0 }));
  await Promise.all(equal.map((n) => beat(n.id, "bu", { cpu_percent: 20, cores: 1 })));
  await sleep(3500); // past the router's 3 s copy
  const burst = await Promise.all(Array.from({ length: BURST }, (_, c) => firstNode(equal, "bu", CLIENTS + c)));
  for (const { node } of burst) if (node) node.clients += 1;
  for (const n of equal) await beat(n.id, "bu", { cpu_percent: 20, cores: 1 }, true);
  return {
    rows: nodes.map((n, i) => ({ node: n.id, baseCpu: n.cpu, clients: n.clients, expected: Math.round(expected[i]) })),
    burst: equal.map((n) => ({ node: n.id, clients: n.clients })),
    unplaced: [...unplaced].map(([status, n]) => `${n} × HTTP ${status}`).join(", ") || "none",
  };
}

function spreadTable(sp) {
  const out = [`| Spread of ${CLIENTS} clients at ${SPREAD_RATE}/s | base CPU | clients | expected (by free capacity) |`, "| --- | --- | --- | --- |"];
  for (const r of sp.rows) out.push(`| ${r.node} | ${r.baseCpu} % | ${r.clients} | ${r.expected} |`);
  out.push("", `Clients given none of the three nodes: ${sp.unplaced}.`, "");
  out.push(`| Burst of ${BURST} clients at once, 3 nodes at 20 % CPU | clients |`, "| --- | --- |");
  for (const r of sp.burst) out.push(`| ${r.node} | ${r.clients} |`);
  return out;
}


const want = (part) => ONLY === "" || ONLY === part;
const out = [`Defaults: lease ${LEASE_MS} ms (RELAY_LEASE_MS unset), relay heartbeat every 2 s (--heartbeat-interval unset).`, ""];
if (want("failover")) {
  const fail = await failover();
  out.push("| Failover (kill -9 of the pinned node → relays-changed at the client) | value |", "| --- | --- |");
  out.push(`| kills | ${fail.kills} |`, `| median | ${fail.medianMs} ms |`, `| worst | ${fail.worstMs} ms |`, `| all (ms) | ${fail.all.join(", ")} |`, "");
}
if (want("heartbeats")) {
  const hb = await heartbeats();
  out.push(`| ${HB_SECS} s each; HTTP: ${HB_CONCURRENCY} workers; WebSocket: one socket per node, one heartbeat in flight on each | via | accepted/s | workerd CPU/heartbeat (request) | p50 | p99 | refused |`, "| --- | --- | --- | --- | --- | --- | --- |");
  for (const row of hb) {
    const r = row.registry;
    const w = row.sockets;
    const b = row.baseline;
    out.push(`| signed heartbeats of ${HB_NODES} nodes (Registry object) | ${row.via} | ${r.perSecond} | ${r.cpuUs} µs | ${r.p50Ms} ms | ${r.p99Ms} ms | ${r.refused} |`);
    out.push(`| signed heartbeats of ${HB_NODES} nodes over WebSocket (Registry object) | ${row.via} | ${w.perSecond} | ${w.cpuUs} µs | ${w.p50Ms} ms | ${w.p99Ms} ms | ${w.refused} |`);
    out.push(`| baseline: GET /healthz (router only) | ${row.via} | ${b.perSecond} | ${b.cpuUs} µs | ${b.p50Ms} ms | ${b.p99Ms} ms | ${b.refused} |`);
  }
  out.push("");
}
if (want("spread")) {
  const sp = await spread();
  out.push(...spreadTable(sp));
}
console.log(out.join("\n"));
