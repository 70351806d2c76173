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
