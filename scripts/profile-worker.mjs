// CPU-profiles a running `wrangler dev` Worker through its inspector port for N
// seconds and prints self time by function (wasm functions, the runtime APIs
// they call, JS glue). Used by scripts/bench-room-cost.sh --profile.
//   node scripts/profile-worker.mjs <inspector-port> <seconds>
// PROFILE_TOP=N (rows of the inclusive list), PROFILE_FOCUS=re (the callers of matching functions),
// PROFILE_UNDER=re (self time of what runs below matching functions).
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const WebSocket = require("ws");
const port = process.argv[2] ?? "19900";
const secs = Number(process.argv[3] ?? 10);
const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
console.error(JSON.stringify(targets.map(t => [t.title, t.webSocketDebuggerUrl])));
const results = [];
for (const t of targets) {
  const ws = new WebSocket(t.webSocketDebuggerUrl);
  await new Promise(r => ws.on("open", r));
  let id = 0; const pending = new Map();
  ws.on("message", d => { const m = JSON.parse(d); if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); } });
  const call = (method, params = {}) => new Promise(r => { const i = ++id; pending.set(i, r); ws.send(JSON.stringify({ id: i, method, params })); });
  await call("Profiler.enable");
  await call("Profiler.setSamplingInterval", { interval: 200 });
  await call("Profiler.start");
  results.push({ t, ws, call });
}
await new Promise(r => setTimeout(r, secs * 1000));
for (const { t, ws, call } of results) {
  const res = await call("Profiler.stop");
  const prof = res.result?.profile;
  if (!prof) { console.log("no profile", JSON.stringify(res).slice(0, 300)); continue; }
  const byId = new Map(prof.nodes.map(n => [n.id, n]));
  const self = new Map();
  let total = 0;
  prof.samples.forEach((s, i) => {
    const dt = prof.timeDeltas[i] ?? 0; total += dt;
    const n = byId.get(s); const key = `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.split("/").pop()}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  });
  // Inclusive time per function (a function counted once per sample, however deep it recurs).
  const parent = new Map();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const incl = new Map();
  prof.samples.forEach((s, i) => {
    const dt = prof.timeDeltas[i] ?? 0; const seen = new Set();
    for (let id = s; id !== undefined; id = parent.get(id)) {
      const n = byId.get(id); const key = `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.split("/").pop()}`;
      if (!seen.has(key)) { seen.add(key); incl.set(key, (incl.get(key) ?? 0) + dt); }
    }
  });
  const top = [...incl.entries()].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.PROFILE_TOP ?? 40));
  console.log(`-- inclusive`);
  for (const [k, v] of top) console.log(`${(v / 1000).toFixed(1).padStart(8)} ms ${(100 * v / total).toFixed(1).padStart(5)}%  ${k.slice(0, 140)}`);
  if (process.env.PROFILE_FOCUS) {
    // Who calls the focused functions: the chain of callers of each sample in them.
    const re = new RegExp(process.env.PROFILE_FOCUS);
    const chains = new Map();
    prof.samples.forEach((s, i) => {
      const names = [];
      for (let id = s; id !== undefined; id = parent.get(id)) names.push(byId.get(id).callFrame.functionName.slice(0, 60));
      const at = names.findIndex(n => re.test(n));
      if (at < 0) return;
      const key = names.slice(at, at + 6).join(" <- ");
      chains.set(key, (chains.get(key) ?? 0) + (prof.timeDeltas[i] ?? 0));
    });
    console.log(`-- callers of /${process.env.PROFILE_FOCUS}/`);
    for (const [k, v] of [...chains.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10)) console.log(`${(v / 1000).toFixed(1).padStart(8)} ms  ${k}`);
  }
  if (process.env.PROFILE_UNDER) {
    // Self time of the functions below the matching one (e.g. one handler's own breakdown).
    const re = new RegExp(process.env.PROFILE_UNDER);
    const under = new Map();
    let sum = 0;
    prof.samples.forEach((s, i) => {
      const chain = [];
      for (let id = s; id !== undefined; id = parent.get(id)) chain.push(byId.get(id).callFrame.functionName);
      if (!chain.some((n) => re.test(n))) return;
      const dt = prof.timeDeltas[i] ?? 0; sum += dt;
      const key = chain[0] || "(anon)";
      under.set(key, (under.get(key) ?? 0) + dt);
    });
    console.log(`-- self time below /${process.env.PROFILE_UNDER}/: ${(sum / 1000).toFixed(1)} ms`);
    for (const [k, v] of [...under.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${(v / 1000).toFixed(1).padStart(8)} ms  ${k.slice(0, 140)}`);
  }
  console.log(`-- self`);
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
  console.log(`== ${t.title}: total ${(total / 1000).toFixed(0)} ms`);
  for (const [k, v] of rows) console.log(`${(v / 1000).toFixed(1).padStart(8)} ms ${(100 * v / total).toFixed(1).padStart(5)}%  ${k}`);
  ws.close();
}
process.exit(0);
