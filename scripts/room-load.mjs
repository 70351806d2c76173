// Room cost per frame: N WebSocket clients in N/2 two-peer rooms, each client
// signalling its partner at a fixed rate; prints one JSON summary line.
// Bounded in count and time. Uses the `ws` package that wrangler installs.
//
//   node scripts/room-load.mjs --url http://127.0.0.1:8787 --clients 200 --rate 5 \
//        --seconds 20 --bytes 270 [--cseq] [--ack-every 16]
//
// --cseq sends protocol v1.1 frames (cseq, acks counted); without it, v1 frames.
// Received frames are acknowledged (`ack`) every --ack-every frames or `welcome.limits.ack_delay_ms`
// (500 ms if the room announces none) after the first unacknowledged one, as the SDK does; with
// --cseq and a v1.2 room, every frame a client sends carries its ack and it joins with `caps=acks`.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const WebSocket = require("ws");

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : true]);
    return acc;
  }, []),
);
const url = (args.url ?? "http://127.0.0.1:8787").replace("http://", "ws://");
const clients = Math.min(Number(args.clients ?? 200), 10000) & ~1;
const rate = Math.min(Number(args.rate ?? 5), 100);
const seconds = Math.min(Number(args.seconds ?? 20), 600);
const bytes = Math.min(Number(args.bytes ?? 270), 60000);
const useCseq = args.cseq === true || args.cseq === "true";
const ackEvery = Number(args["ack-every"] ?? 16);
const prefix = args.prefix ?? `load${process.pid}`;

const lat = [];
const errors = {};
let sent = 0, received = 0, failed = 0, dup = 0;
const now = () => Number(process.hrtime.bigint()) / 1e6;

function join(room) {
  return new Promise((resolve) => {
    // v1.1 senders read `acked` (v1.2), as the SDK does.
    const ws = new WebSocket(`${url}/v1/rooms/${room}${useCseq ? "?caps=acks" : ""}`);
    const c = { ws, id: null, partner: null, cseq: 0, lastSeq: 0, acked: 0, seen: new Set() };
    const timer = setTimeout(() => { failed++; try { ws.terminate(); } catch {} resolve(null); }, 15000);
    ws.on("message", (data) => {
      const f = JSON.parse(data.toString());
      if (f.seq) c.lastSeq = f.seq;
      if (f.type === "welcome") {
        c.id = f.peer_id;
        c.ackDelayMs = f.limits?.ack_delay_ms ?? 500;
        c.acksRide = useCseq && (f.rev ?? 0) >= 2;
        if (f.peers.length) c.partner = f.peers[0].peer_id;
        clearTimeout(timer);
        resolve(c);
      } else if (f.type === "peer-joined") {
        c.partner = f.peer_id;
      } else if (f.type === "signal") {
        const key = `${f.from}:${f.payload.n}`;
        if (c.seen.has(key)) dup++; else { c.seen.add(key); received++; lat.push(now() - f.payload.t); }
        // As the SDK: ack after --ack-every frames or the room's ack delay after the first unacknowledged one.
        const ack = () => { c.ackTimer = null; if (c.lastSeq > c.acked) { c.acked = c.lastSeq; ws.send(JSON.stringify({ type: "ack", seq: c.lastSeq })); } };
        if (c.lastSeq - c.acked >= ackEvery) { clearTimeout(c.ackTimer); ack(); }
        else if (!c.ackTimer) c.ackTimer = setTimeout(ack, c.ackDelayMs);
      } else if (f.type === "ack") {
        c.ackedCseq = f.cseq;
      } else if (f.type === "error") {
        errors[f.code] = (errors[f.code] ?? 0) + 1;
      }
      if (typeof f.acked === "number") c.ackedCseq = f.acked;
    });
    ws.on("error", () => {});
    ws.on("close", () => { clearTimeout(timer); });
  });
}

const pad = "x".repeat(Math.max(0, bytes - 120));
const all = [];
const joinStart = now();
for (let r = 0; r < clients / 2; r++) {
  const room = `${prefix}-${r}`;
  all.push(join(room).then((a) => join(room).then((b) => [a, b])));
  if (r % 50 === 49) await new Promise((res) => setTimeout(res, 100));
}
const pairs = (await Promise.all(all)).filter(([a, b]) => a && b);
const joinMs = now() - joinStart;
// Wait until every first peer heard its partner.
for (let i = 0; i < 100 && pairs.some(([a]) => !a.partner); i++) await new Promise((r) => setTimeout(r, 50));
const peers = pairs.flat();
let n = 0;
const period = 1000 / rate;
const start = now();
const deadline = start + seconds * 1000;
await new Promise((resolve) => {
  // Each client sends on its own phase so the load is spread evenly.
  for (const [i, c] of peers.entries()) {
    const tick = () => {
      if (now() >= deadline) return;
      const frame = { type: "signal", to: c.partner, payload: { t: now(), n: n++, pad } };
      if (useCseq) frame.cseq = ++c.cseq;
      if (c.acksRide && c.lastSeq > 0) {
        // As the SDK with a v1.2 room: the frame carries the client's ack.
        frame.ack = c.lastSeq;
        c.acked = c.lastSeq;
        clearTimeout(c.ackTimer);
        c.ackTimer = null;
      }
      if (c.ws.readyState === WebSocket.OPEN) { c.ws.send(JSON.stringify(frame)); sent++; }
      setTimeout(tick, period);
    };
    setTimeout(tick, (i * period) / peers.length);
  }
  setTimeout(resolve, seconds * 1000);
});
// Drain: up to 5 s for frames still in flight.
for (let i = 0; i < 50 && received + dup < sent; i++) await new Promise((r) => setTimeout(r, 100));
const settledAcks = peers.reduce((s, c) => s + (c.ackedCseq ?? 0), 0);
// With --admin: the SQL statements room 0 ran since its object woke, per frame it received.
let sql;
if (args.admin) {
  const base = url.replace("ws://", "http://");
  const r = await fetch(`${base}/v1/rooms/${prefix}-0/stats`, { headers: { authorization: `Bearer ${args.admin}` } });
  const st = await r.json();
  const frames = st.frames_in ?? 0;
  sql = { room_frames_in: frames, per_frame_in: Object.fromEntries(Object.entries(st.sql_since_wake ?? {}).map(([k, v]) => [k, Number((v / Math.max(1, frames)).toFixed(3))])) };
}
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? Number(lat[Math.min(lat.length - 1, Math.floor(p * lat.length))].toFixed(2)) : null);
console.log(JSON.stringify({
  clients: peers.length, failed, join_ms: Math.round(joinMs), rate, seconds, bytes, cseq: useCseq,
  sent, received, lost: sent - received, duplicated: dup, acked_cseqs: useCseq ? settledAcks : undefined,
  msgs_per_s: Math.round(received / seconds), p50_ms: q(0.5), p99_ms: q(0.99), max_ms: q(1), errors, sql,
}));
for (const c of peers) c.ws.close(1000);
setTimeout(() => process.exit(0), 500);
