import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { SignalingConnection, backoffDelay, defaultBackoff } from "../dist/signaling.js";
import { SwitchboardError } from "../dist/errors.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";

const URL_BASE = "ws://127.0.0.1:8787/v1/rooms/lobby";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 }));
afterEach(() => mock.timers.reset());

/** A connection whose random() is fixed, so backoff delays are exact. */
function setup(options = {}) {
  const server = new FakeServer();
  const conn = new SignalingConnection({
    url: URL_BASE,
    createWebSocket: server.factory,
    random: () => 0.5,
    ...options,
  });
  const events = { frames: [], errors: [], states: [], welcomes: [] };
  conn.events.on("frame", (f) => events.frames.push(f));
  conn.events.on("error", (e) => events.errors.push(e));
  conn.events.on("state", (s) => events.states.push(s));
  conn.events.on("welcome", (w) => events.welcomes.push(w));
  return { server, conn, events };
}

async function joined(options = {}, welcomeOverrides = {}) {
  const ctx = setup(options);
  const ready = ctx.conn.connect();
  ctx.server.last.accept();
  ctx.server.last.receive(welcome(welcomeOverrides));
  await ready;
  return ctx;
}

test("backoff grows exponentially, is capped, and is jittered between half and all of the base", () => {
  const opts = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.equal(backoffDelay(0, opts, () => 0), 50);
  assert.equal(backoffDelay(0, opts, () => 1), 100);
  assert.equal(backoffDelay(3, opts, () => 1), 800);
  assert.equal(backoffDelay(10, opts, () => 1), 1000);
  assert.equal(backoffDelay(10, opts, () => 0), 500);
  assert.ok(defaultBackoff.maxMs >= defaultBackoff.initialMs);
});

test("join URL carries meta and token; connect resolves with the first welcome", async () => {
  const { server, conn } = setup({ meta: { name: "ann" }, token: "jwt" });
  const ready = conn.connect();
  const url = server.last.url;
  assert.equal(url.pathname, "/v1/rooms/lobby");
  assert.deepEqual(JSON.parse(url.searchParams.get("meta")), { name: "ann" });
  assert.equal(url.searchParams.get("token"), "jwt");
  assert.equal(url.searchParams.get("resume"), null);
  assert.equal(url.searchParams.get("presence"), null);
  server.last.accept();
  server.last.receive(welcome());
  const frame = await ready;
  assert.equal(frame.peer_id, "p-self");
  assert.equal(conn.peerId, "p-self");
  assert.equal(conn.state, "open");
});

test("heartbeat sends the exact ping text every heartbeat_ms; pongs keep the connection", async () => {
  const { server, conn } = await joined();
  const socket = server.last;
  mock.timers.tick(999);
  assert.deepEqual(socket.sent, []);
  mock.timers.tick(1);
  assert.deepEqual(socket.sent, ['{"type":"ping"}']);
  for (let i = 0; i < 10; i++) {
    socket.receive({ type: "pong" });
    mock.timers.tick(1000);
  }
  assert.equal(socket.sent.filter((t) => t === '{"type":"ping"}').length, 11);
  assert.equal(socket.closedWith, null);
  assert.equal(conn.state, "open");
});

test("three unanswered pings mark the connection dead; it reconnects with resume and last_seq", async () => {
  const { server, conn, events } = await joined({ backoff: { initialMs: 200, maxMs: 5000, factor: 2 } });
  const socket = server.last;
  socket.receive({ type: "peer-joined", seq: 1, peer_id: "p2", meta: {} });
  socket.receive({ type: "signal", seq: 2, from: "p2", payload: { hi: 1 } });
  for (let i = 0; i < 3; i++) mock.timers.tick(1000); // three pings, none answered
  assert.equal(socket.sent.filter((t) => t === '{"type":"ping"}').length, 3);
  assert.equal(socket.closedWith, null);
  mock.timers.tick(1000);
  assert.equal(socket.closedWith?.code, 4000);
  assert.equal(conn.state, "reconnecting");
  const reconnecting = events.states.at(-1);
  assert.equal(reconnecting.delayMs, 150); // base 200, jitter 0.5 → 100 + 50
  assert.equal(server.sockets.length, 1);
  mock.timers.tick(150);
  assert.equal(server.sockets.length, 2);
  const url = server.last.url;
  assert.equal(url.searchParams.get("resume"), "rt-1");
  assert.equal(url.searchParams.get("last_seq"), "2");
});

test("reconnect backoff grows per failed attempt and resets after a welcome", async () => {
  const { server, events } = await joined({ backoff: { initialMs: 100, maxMs: 10_000, factor: 2 } });
  const delays = [];
  for (let i = 0; i < 4; i++) {
    server.last.drop(1006);
    const state = events.states.at(-1);
    assert.equal(state.state, "reconnecting");
    delays.push(state.delayMs);
    mock.timers.tick(state.delayMs);
  }
  assert.deepEqual(delays, [75, 150, 300, 600]);
  server.last.accept();
  server.last.receive(welcome({ resumed: true }));
  server.last.drop(1006);
  assert.equal(events.states.at(-1).delayMs, 75);
});

test("a connection attempt without welcome is abandoned after connectTimeoutMs and retried", async () => {
  const { server, conn } = await joined({ connectTimeoutMs: 2000, backoff: { initialMs: 100, maxMs: 100, factor: 2 } });
  server.last.drop(1006);
  mock.timers.tick(100);
  const hanging = server.last;
  assert.equal(server.sockets.length, 2);
  mock.timers.tick(2000);
  assert.equal(hanging.closedWith?.code, 4000);
  assert.equal(conn.state, "reconnecting");
  mock.timers.tick(100);
  assert.equal(server.sockets.length, 3);
});

test("resume: replayed frames at or below last_seq are processed once, in order", async () => {
  const { server, events } = await joined();
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: "a" });
  server.last.receive({ type: "relay", seq: 2, from: "p2", data: "b" });
  server.last.drop(1006);
  mock.timers.tick(1000);
  const socket = server.last;
  assert.equal(socket.url.searchParams.get("last_seq"), "2");
  socket.accept();
  socket.receive(welcome({ resumed: true }));
  // A server may repeat what the client already has; the client must not deliver it twice.
  socket.receive({ type: "relay", seq: 2, from: "p2", data: "b" });
  socket.receive({ type: "relay", seq: 3, from: "p2", data: "c" });
  assert.deepEqual(events.frames.map((f) => f.data), ["a", "b", "c"]);
  assert.equal(events.welcomes.at(-1).frame.resumed, true);
  assert.equal(events.welcomes.at(-1).previousPeerId, "p-self");
});

test("a failed resume surfaces resume_failed and restarts seq from the fresh welcome", async () => {
  const { server, conn, events } = await joined();
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: "a" });
  server.last.drop(1006);
  mock.timers.tick(1000);
  server.last.accept();
  server.last.receive({ type: "error", code: "resume_failed", message: "unknown resume token" });
  server.last.receive(welcome({ peer_id: "p-new", resume_token: "rt-2", resumed: false }));
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: "fresh" });
  assert.equal(events.errors[0].code, "resume_failed");
  assert.equal(events.errors[0].source, "server");
  assert.ok(events.errors[0] instanceof SwitchboardError);
  assert.equal(conn.peerId, "p-new");
  assert.equal(conn.lastSeq, 1);
  assert.deepEqual(events.frames.map((f) => f.data), ["a", "fresh"]);
});

test("acks: at once after ackEvery frames, otherwise after ackDelayMs", async () => {
  const { server } = await joined({ ackEvery: 3, ackDelayMs: 400 });
  const socket = server.last;
  const acks = () => socket.frames().filter((f) => f.type === "ack");
  socket.receive({ type: "relay", seq: 1, from: "p2", data: 1 });
  socket.receive({ type: "relay", seq: 2, from: "p2", data: 2 });
  assert.deepEqual(acks(), []);
  socket.receive({ type: "relay", seq: 3, from: "p2", data: 3 });
  assert.deepEqual(acks(), [{ type: "ack", seq: 3 }]);
  socket.receive({ type: "relay", seq: 4, from: "p2", data: 4 });
  mock.timers.tick(399);
  assert.equal(acks().length, 1);
  mock.timers.tick(1);
  assert.deepEqual(acks().at(-1), { type: "ack", seq: 4 });
  mock.timers.tick(5000);
  assert.equal(acks().length, 2, "nothing new, no further ack");
});

test("acks: without ackDelayMs the delay is the room's welcome.limits.ack_delay_ms, else 500 ms", async () => {
  const limits = { rate_per_s: 50, rate_burst: 100, max_frame_bytes: 65536 };
  for (const [announced, expected] of [[1500, 1500], [undefined, 500]]) {
    const { server } = await joined({}, { limits: announced === undefined ? limits : { ...limits, ack_delay_ms: announced } });
    const socket = server.last;
    const acks = () => socket.frames().filter((f) => f.type === "ack");
    socket.receive({ type: "relay", seq: 1, from: "p2", data: 1 });
    mock.timers.tick(expected - 1);
    assert.equal(acks().length, 0, `no ack before ${expected} ms`);
    mock.timers.tick(1);
    assert.deepEqual(acks(), [{ type: "ack", seq: 1 }]);
  }
});

test("backpressure: frames queue while bufferedAmount is high, reject beyond the bound, drain in order", async () => {
  const { server, conn } = await joined({ highWaterMark: 1000, maxQueuedFrames: 3, drainPollMs: 50 });
  const socket = server.last;
  socket.bufferedAmount = 5000;
  const sent = [];
  const promises = [1, 2, 3].map((n) => conn.send({ type: "relay", to: "p2", data: n }).then(() => sent.push(n)));
  assert.equal(conn.queuedFrames, 3);
  await assert.rejects(conn.send({ type: "relay", to: "p2", data: 4 }), (error) => {
    assert.ok(error instanceof SwitchboardError);
    assert.equal(error.code, "backpressure");
    return true;
  });
  mock.timers.tick(200);
  assert.equal(socket.frames().filter((f) => f.type === "relay").length, 0);
  socket.bufferedAmount = 0;
  mock.timers.tick(50);
  await Promise.all(promises);
  assert.deepEqual(sent, [1, 2, 3]);
  assert.deepEqual(socket.frames().filter((f) => f.type === "relay").map((f) => f.data), [1, 2, 3]);
  assert.equal(conn.queuedFrames, 0);
});

test("the queue bound is also in bytes", async () => {
  const { server, conn } = await joined({ highWaterMark: 0, maxQueuedBytes: 100 });
  server.last.bufferedAmount = 1;
  const first = conn.send({ type: "relay", to: "p2", data: "x".repeat(40) });
  await assert.rejects(conn.send({ type: "relay", to: "p2", data: "y".repeat(60) }), { code: "backpressure" });
  conn.leave();
  await assert.rejects(first, { code: "closed" });
});

test("frames sent while reconnecting are queued and flushed after the resumed welcome", async () => {
  const { server, conn } = await joined();
  server.last.drop(1006);
  const p = conn.send({ type: "relay", to: "p2", data: "while away" });
  mock.timers.tick(1000);
  const socket = server.last;
  socket.accept();
  assert.deepEqual(socket.sent, [], "nothing is written before welcome");
  socket.receive(welcome({ resumed: true }));
  await p;
  assert.deepEqual(socket.frames(), [{ type: "relay", to: "p2", data: "while away" }]);
});

test("server error frames surface as typed error events and the connection keeps working", async () => {
  const { server, conn, events } = await joined();
  server.last.receive({ type: "error", code: "unknown_peer", message: "no such peer" });
  server.last.receive({ type: "error", code: "something_new", message: "?" });
  assert.deepEqual(events.errors.map((e) => [e.code, e.source]), [["unknown_peer", "server"], ["internal", "server"]]);
  assert.equal(conn.state, "open");
});

test("a throwing listener becomes a listener error event instead of escaping", async () => {
  const { server, conn, events } = await joined();
  conn.events.on("frame", () => {
    throw new Error("app bug");
  });
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: 1 });
  assert.equal(events.frames.length, 1);
  assert.equal(events.errors[0].code, "listener");
});

test("leave sends leave, closes with 1000, and never reconnects", async () => {
  const { server, conn } = await joined();
  const socket = server.last;
  conn.leave();
  assert.deepEqual(socket.frames().at(-1), { type: "leave" });
  assert.equal(socket.closedWith.code, 1000);
  assert.equal(conn.state, "closed");
  mock.timers.tick(60_000);
  assert.equal(server.sockets.length, 1);
  await assert.rejects(conn.send({ type: "relay", to: "p2", data: 1 }), { code: "closed" });
});

test("a refused first connection rejects connect with the server's error", async () => {
  const { server, conn } = setup();
  const ready = conn.connect();
  server.last.accept();
  server.last.receive({ type: "error", code: "room_full", message: "64 peers" });
  server.last.drop(4002);
  await assert.rejects(ready, { code: "room_full", source: "server" });
  mock.timers.tick(60_000);
  assert.equal(server.sockets.length, 1);
});

test("presence: off asks the room for no presence; presence_full refuses the join", async () => {
  const { server, conn } = setup({ presence: "off" });
  const ready = conn.connect();
  assert.equal(server.last.url.searchParams.get("presence"), "off");
  server.last.accept();
  server.last.receive({ type: "error", code: "presence_full", message: "join with presence=off" });
  server.last.drop(4002);
  await assert.rejects(ready, { code: "presence_full", source: "server" });
});

test("a first connection that closes without a frame rejects with connect_failed", async () => {
  const { server, conn } = setup();
  const ready = conn.connect();
  server.last.drop(1006);
  await assert.rejects(ready, { code: "connect_failed" });
});

test("close 4001 (replaced by a newer connection) ends the session without reconnecting", async () => {
  const { server, conn, events } = await joined();
  server.last.drop(4001);
  assert.equal(conn.state, "closed");
  assert.equal(events.errors.at(-1).code, "closed");
  mock.timers.tick(60_000);
  assert.equal(server.sockets.length, 1);
});

test("a gap in server seq resumes at once from the last contiguous seq; nothing past the gap is delivered", async () => {
  const { server, conn, events } = await joined();
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: "a" });
  server.last.receive({ type: "relay", seq: 3, from: "p2", data: "c" });
  assert.deepEqual(events.frames.map((f) => f.data), ["a"]);
  assert.equal(conn.state, "reconnecting");
  assert.equal(events.states.at(-1).delayMs, 0);
  mock.timers.tick(0);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.url.searchParams.get("last_seq"), "1");
  server.last.accept();
  server.last.receive(welcome({ resumed: true }));
  server.last.receive({ type: "relay", seq: 2, from: "p2", data: "b" });
  server.last.receive({ type: "relay", seq: 3, from: "p2", data: "c" });
  assert.deepEqual(events.frames.map((f) => f.data), ["a", "b", "c"]);
});

test("close 4003 retry_after_ms=<n>: resume after a uniformly random delay in [0, n]", async () => {
  for (const [random, expected] of [[0, 0], [0.25, 500], [1, 2000]]) {
    const { server, events } = await joined({ random: () => random });
    server.last.drop(4003, "retry_after_ms=2000");
    const state = events.states.at(-1);
    assert.equal(state.state, "reconnecting");
    assert.equal(state.delayMs, expected);
    mock.timers.tick(expected);
    assert.equal(server.sockets.length, 2);
    assert.equal(server.last.url.searchParams.get("resume"), "rt-1");
  }
});

test("a token function is called before every (re)connect", async () => {
  const tokens = [];
  let n = 0;
  const token = async () => {
    n += 1;
    tokens.push(`jwt-${n}`);
    return `jwt-${n}`;
  };
  const server = new FakeServer();
  const conn = new SignalingConnection({ url: URL_BASE, createWebSocket: server.factory, random: () => 0.5, token });
  const ready = conn.connect();
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(server.last.url.searchParams.get("token"), "jwt-1");
  server.last.accept();
  server.last.receive(welcome());
  await ready;
  server.last.drop(1006);
  mock.timers.tick(1000);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(server.sockets.length, 2);
  assert.equal(server.last.url.searchParams.get("token"), "jwt-2");
});

/** A reconnect whose upgrade is refused: the socket closes without a frame; the probe sees `status`. */
async function refusedReconnect(token, statuses) {
  const server = new FakeServer();
  const probes = [];
  const fetch = async (url, init) => {
    probes.push({ url, authorization: init.headers.authorization });
    return { status: statuses[Math.min(probes.length - 1, statuses.length - 1)] };
  };
  const conn = new SignalingConnection({ url: URL_BASE, createWebSocket: server.factory, random: () => 0.5, token, fetch });
  const events = { errors: [], states: [] };
  conn.events.on("error", (e) => events.errors.push(e));
  conn.events.on("state", (s) => events.states.push(s.state));
  const ready = conn.connect();
  for (let i = 0; i < 4; i++) await Promise.resolve();
  server.last.accept();
  server.last.receive(welcome());
  await ready;
  server.last.drop(1006); // a network drop: reconnect
  return { server, conn, events, probes };
}

const flush = async () => {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
};

test("JWT expired: with a token function a 401 asks it once more and the resume succeeds", async () => {
  let n = 0;
  const token = async () => `jwt-${++n}`;
  const { server, conn, probes } = await refusedReconnect(token, [401, 200]);
  mock.timers.tick(1000);
  await flush();
  assert.equal(server.sockets.length, 2);
  server.last.drop(1006); // the upgrade is refused (HTTP 401, invisible to WebSocket)
  await flush();
  assert.equal(probes.length, 1);
  assert.equal(probes[0].url, "http://127.0.0.1:8787/v1/ice-servers");
  assert.equal(probes[0].authorization, "Bearer jwt-2");
  mock.timers.tick(0);
  await flush();
  assert.equal(server.sockets.length, 3);
  assert.equal(server.last.url.searchParams.get("token"), "jwt-3");
  server.last.accept();
  server.last.receive(welcome({ resumed: true }));
  assert.equal(conn.state, "open");
});

test("JWT expired: a fixed token ends with unauthorized and closed, without a reconnect loop", async () => {
  const { server, conn, events } = await refusedReconnect("expired-jwt", [401]);
  mock.timers.tick(1000);
  await flush();
  server.last.drop(1006);
  await flush();
  assert.equal(conn.state, "closed");
  assert.equal(events.errors.at(-1).code, "unauthorized");
  mock.timers.tick(600_000);
  await flush();
  assert.equal(server.sockets.length, 2);
});

test("JWT: a token function whose fresh token is refused too ends with unauthorized", async () => {
  let n = 0;
  const { server, conn, events } = await refusedReconnect(async () => `jwt-${++n}`, [401]);
  mock.timers.tick(1000);
  await flush();
  server.last.drop(1006);
  await flush();
  mock.timers.tick(0);
  await flush();
  server.last.drop(1006);
  await flush();
  assert.equal(conn.state, "closed");
  assert.equal(events.errors.at(-1).code, "unauthorized");
  assert.equal(server.sockets.length, 3);
});

test("reconnecting gives up after giveUpAfterMs with a final reconnect_timeout error", async () => {
  const { server, conn, events } = await joined({ giveUpAfterMs: 10_000, backoff: { initialMs: 1000, maxMs: 4000, factor: 2 } });
  server.last.drop(1006);
  for (let i = 0; i < 20 && conn.state !== "closed"; i++) {
    mock.timers.tick(events.states.at(-1).delayMs ?? 0);
    server.last.drop(1006);
  }
  assert.equal(conn.state, "closed");
  assert.equal(events.errors.at(-1).code, "reconnect_timeout");
  const sockets = server.sockets.length;
  mock.timers.tick(600_000);
  assert.equal(server.sockets.length, sockets);
});
