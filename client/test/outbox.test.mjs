// Protocol v1.1 on the client: the acked outbox (`cseq`), resend after
// resume, refusals tied to their send, rate limits honoured, and the client's
// own token bucket and frame-size check. Fake socket, fake timers.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { SignalingConnection } from "../dist/signaling.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";

const URL_BASE = "ws://127.0.0.1:8787/v1/rooms/lobby";
const LIMITS = { rate_per_s: 1000, rate_burst: 1000, max_frame_bytes: 65536 };

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_000_000 }));
afterEach(() => mock.timers.reset());

const settle = async () => {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
};

async function joined(options = {}, welcomeOverrides = {}) {
  const server = new FakeServer();
  const conn = new SignalingConnection({ url: URL_BASE, createWebSocket: server.factory, random: () => 0.5, ...options });
  const errors = [];
  const frames = [];
  conn.events.on("error", (e) => errors.push(e));
  conn.events.on("frame", (f) => frames.push(f));
  const ready = conn.connect();
  server.last.accept();
  server.last.receive(welcome({ rev: 1, trace_id: "0123456789abcdef", limits: LIMITS, cseq: 0, ...welcomeOverrides }));
  await ready;
  return { server, conn, errors, frames };
}

/** Tracks a send's outcome without awaiting it. */
function track(promise) {
  const outcome = { state: "pending", error: undefined };
  promise.then(
    () => (outcome.state = "resolved"),
    (error) => {
      outcome.state = "rejected";
      outcome.error = error;
    },
  );
  return outcome;
}

const signal = (n) => ({ type: "signal", to: "p2", payload: { n } });
const written = (socket) => socket.frames().filter((f) => f.type === "signal");

test("v1.1: frames carry cseq 1, 2, 3…; send resolves on the room's (cumulative) ack, not on write", async () => {
  const { server, conn } = await joined();
  const outcomes = [1, 2, 3].map((n) => track(conn.send(signal(n))));
  assert.deepEqual(written(server.last).map((f) => [f.payload.n, f.cseq]), [[1, 1], [2, 2], [3, 3]]);
  await settle();
  assert.deepEqual(outcomes.map((o) => o.state), ["pending", "pending", "pending"]);
  server.last.receive({ type: "ack", cseq: 2 });
  await settle();
  assert.deepEqual(outcomes.map((o) => o.state), ["resolved", "resolved", "pending"]);
  assert.equal(conn.queuedFrames, 1);
  server.last.receive({ type: "ack", cseq: 3 });
  await settle();
  assert.equal(outcomes[2].state, "resolved");
  assert.equal(conn.queuedFrames, 0);
});

test("v1.1: a refusal (sequenced error with cseq) rejects exactly that send with the room's typed error", async () => {
  const { server, conn, errors } = await joined();
  const outcomes = [1, 2, 3].map((n) => track(conn.send(signal(n))));
  server.last.receive({ type: "error", code: "unknown_peer", message: "no p2", cseq: 2, seq: 1 });
  await settle();
  assert.deepEqual(outcomes.map((o) => o.state), ["resolved", "rejected", "pending"]);
  const error = outcomes[1].error;
  assert.equal(error.code, "unknown_peer");
  assert.equal(error.cseq, 2);
  assert.equal(error.source, "server");
  assert.equal(error.traceId, "0123456789abcdef");
  assert.deepEqual(errors, [], "tied to its send, not an unattached error event");
  assert.equal(conn.lastSeq, 1, "the refusal is part of the sequenced stream");
  // The same refusal replayed after a resume is not applied twice.
  server.last.receive({ type: "error", code: "unknown_peer", message: "no p2", cseq: 2, seq: 1 });
  server.last.receive({ type: "ack", cseq: 3 });
  await settle();
  assert.equal(outcomes[2].state, "resolved");
});

test("half-open socket: frames written into it are resent after resume from welcome.cseq, none twice", async () => {
  const { server, conn } = await joined({ heartbeat_ms: 1000, backoff: { initialMs: 100, maxMs: 100, factor: 1 } });
  const outcomes = [1, 2, 3, 4].map((n) => track(conn.send(signal(n))));
  const dead = server.last;
  assert.equal(written(dead).length, 4);
  // The socket is silently gone: no pongs, no acks. Three unanswered pings later the client resumes.
  for (let i = 0; i < 4; i++) mock.timers.tick(1000);
  mock.timers.tick(100);
  assert.equal(server.sockets.length, 2);
  const fresh = server.last;
  fresh.accept();
  // The room had processed 1 and 2 before the connection died.
  fresh.receive(welcome({ rev: 1, resumed: true, limits: LIMITS, cseq: 2 }));
  assert.deepEqual(written(fresh).map((f) => [f.payload.n, f.cseq]), [[3, 3], [4, 4]], "only the unprocessed, same cseq, in order");
  fresh.receive({ type: "ack", cseq: 4 });
  await settle();
  assert.deepEqual(outcomes.map((o) => o.state), ["resolved", "resolved", "resolved", "resolved"]);
});

test("after a resume with nothing left to resend, a duplicate of the last frame draws the ack that settles the rest", async () => {
  const { server, conn } = await joined({ backoff: { initialMs: 100, maxMs: 100, factor: 1 } });
  const outcomes = [1, 2].map((n) => track(conn.send(signal(n))));
  server.last.drop(1006);
  mock.timers.tick(100);
  const fresh = server.last;
  fresh.accept();
  fresh.receive(welcome({ rev: 1, resumed: true, limits: LIMITS, cseq: 2 }));
  assert.deepEqual(written(fresh).map((f) => f.cseq), [2], "a duplicate: the room answers it with ack and delivers nothing");
  // The room replays the refusal of 1 (sequenced) before the ack of the duplicate.
  fresh.receive({ type: "error", code: "queue_full", message: "full", cseq: 1, seq: 1 });
  fresh.receive({ type: "ack", cseq: 2 });
  await settle();
  assert.deepEqual(outcomes.map((o) => o.state), ["rejected", "resolved"]);
  assert.equal(outcomes[0].error.code, "queue_full");
});

test("rate_limited: nothing is written for retry_after_ms, then the outbox is resent from the refused cseq", async () => {
  const { server, conn, errors } = await joined();
  [1, 2, 3, 4].forEach((n) => track(conn.send(signal(n))));
  server.last.receive({ type: "ack", cseq: 1 });
  server.last.receive({ type: "error", code: "rate_limited", message: "slow down", cseq: 2, retry_after_ms: 400 });
  assert.equal(errors[0].code, "rate_limited");
  assert.equal(errors[0].retryAfterMs, 400);
  track(conn.send(signal(5)));
  mock.timers.tick(399);
  assert.deepEqual(written(server.last).map((f) => f.cseq), [1, 2, 3, 4]);
  mock.timers.tick(60);
  assert.deepEqual(written(server.last).map((f) => f.cseq), [1, 2, 3, 4, 2, 3, 4, 5]);
});

test("out_of_order: the outbox is resent from the cseq the room expects", async () => {
  const { server, conn } = await joined();
  [1, 2, 3].forEach((n) => track(conn.send(signal(n))));
  server.last.receive({ type: "error", code: "out_of_order", message: "gap", cseq: 3, expected: 2 });
  assert.deepEqual(written(server.last).map((f) => f.cseq), [1, 2, 3, 2, 3]);
});

test("a v1 room (no rev): no cseq, and send resolves once written", async () => {
  const { server, conn } = await joined({}, { rev: undefined, limits: undefined, cseq: undefined });
  await conn.send(signal(1));
  assert.deepEqual(written(server.last), [{ type: "signal", to: "p2", payload: { n: 1 } }]);
  assert.equal(conn.queuedFrames, 0);
});

test("the client's token bucket keeps writes within the room's announced rate", async () => {
  const { server, conn } = await joined({}, { limits: { rate_per_s: 20, rate_burst: 10, max_frame_bytes: 65536 } });
  for (let n = 1; n <= 30; n++) track(conn.send(signal(n)));
  const count = () => written(server.last).length;
  assert.equal(count(), 8, "the burst (less a margin) at once");
  for (let i = 0; i < 20; i++) mock.timers.tick(50);
  const afterOneSecond = count();
  assert.ok(afterOneSecond >= 8 + 17 && afterOneSecond <= 8 + 20, `about 19 more per second, got ${afterOneSecond - 8}`);
  for (let i = 0; i < 20; i++) mock.timers.tick(50);
  assert.equal(count(), 30);
});

test("frames over max_frame_bytes are refused locally with payload_too_large and never sent", async () => {
  const { server, conn } = await joined({}, { limits: { ...LIMITS, max_frame_bytes: 1000 } });
  await assert.rejects(conn.send({ type: "relay", to: "p2", data: "x".repeat(1000) }), (error) => {
    assert.equal(error.code, "payload_too_large");
    assert.equal(error.source, "client");
    return true;
  });
  assert.equal(server.last.frames().filter((f) => f.type === "relay").length, 0);
});

test("a fresh join after a failed resume rejects what the old session had not settled", async () => {
  const { server, conn } = await joined({ backoff: { initialMs: 100, maxMs: 100, factor: 1 } });
  const outcome = track(conn.send(signal(1)));
  server.last.drop(1006);
  mock.timers.tick(100);
  server.last.accept();
  server.last.receive({ type: "error", code: "resume_failed", message: "expired" });
  server.last.receive(welcome({ rev: 1, peer_id: "p-new", resume_token: "rt-2", resumed: false, limits: LIMITS, cseq: 0 }));
  await settle();
  assert.equal(outcome.state, "rejected");
  assert.equal(outcome.error.code, "resume_failed");
  track(conn.send(signal(2)));
  assert.deepEqual(written(server.last).map((f) => f.cseq), [1], "the new identity counts from 1 again");
});

test("signals overtake relay data that waits for tokens; relay data keeps its own order", async () => {
  const { server, conn } = await joined({}, { limits: { rate_per_s: 20, rate_burst: 4, max_frame_bytes: 65536 } });
  for (let n = 1; n <= 4; n++) track(conn.send({ type: "relay", to: "p2", data: n }));
  track(conn.send(signal(99)));
  for (let i = 0; i < 20; i++) mock.timers.tick(50);
  const order = server.last.frames().filter((f) => f.cseq).map((f) => (f.type === "signal" ? `s${f.payload.n}` : `r${f.data}`));
  assert.deepEqual(order, ["r1", "r2", "s99", "r3", "r4"]);
  assert.deepEqual(server.last.frames().filter((f) => f.cseq).map((f) => f.cseq), [1, 2, 3, 4, 5]);
});

test("a frame delivered again after a Worker restart (same sender and cseq, new seq) is dropped", async () => {
  const { server, frames } = await joined();
  server.last.receive({ type: "signal", seq: 1, from: "p2", cseq: 7, payload: "a" });
  server.last.receive({ type: "relay", seq: 2, from: "p2", cseq: 8, data: "b" });
  server.last.receive({ type: "relay", seq: 3, from: "p2", cseq: 8, data: "b" });
  server.last.receive({ type: "relay", seq: 4, from: "p3", cseq: 8, data: "other sender" });
  server.last.receive({ type: "signal", seq: 5, from: "p2", payload: "v1 sender, no cseq" });
  assert.deepEqual(frames.map((f) => f.payload ?? f.data), ["a", "b", "other sender", "v1 sender, no cseq"]);
});

test("v1.2: every frame carries the client's ack, so no ack frame of its own goes out", async () => {
  const { server, conn } = await joined({ ackDelayMs: 400 }, { rev: 2 });
  const socket = server.last;
  socket.receive({ type: "signal", seq: 1, from: "p2", cseq: 1, payload: "offer" });
  socket.receive({ type: "signal", seq: 2, from: "p2", cseq: 2, payload: "candidate" });
  void conn.send(signal(1));
  assert.deepEqual(written(socket).map((f) => [f.cseq, f.ack]), [[1, 2]]);
  mock.timers.tick(5000);
  assert.deepEqual(socket.frames().filter((f) => f.type === "ack"), [], "the ack rode on the signal");
  // Something received after the last frame it wrote is acknowledged on its own, after the delay.
  socket.receive({ type: "signal", seq: 3, from: "p2", cseq: 3, payload: "late" });
  mock.timers.tick(400);
  assert.deepEqual(socket.frames().filter((f) => f.type === "ack"), [{ type: "ack", seq: 3 }]);
});

test("v1.1 rooms get no ack inside frames", async () => {
  const { server, conn } = await joined();
  server.last.receive({ type: "signal", seq: 1, from: "p2", cseq: 1, payload: "offer" });
  void conn.send(signal(1));
  assert.equal(written(server.last)[0].ack, undefined);
});

test("v1.2: the room's ack riding on a frame settles sends, after the frame it rides on", async () => {
  const { server, conn, frames } = await joined({}, { rev: 2 });
  const socket = server.last;
  const first = track(conn.send(signal(1)));
  const second = track(conn.send(signal(2)));
  socket.receive({ type: "signal", seq: 1, from: "p2", cseq: 1, payload: "answer", acked: 1 });
  await settle();
  assert.deepEqual(frames.map((f) => f.payload), ["answer"]);
  assert.deepEqual([first.state, second.state], ["resolved", "pending"]);
  // A refusal carrying the ack of the frame it refuses: the refusal counts, not a success.
  socket.receive({ type: "error", seq: 2, code: "unknown_peer", message: "no such peer", cseq: 2, acked: 2 });
  await settle();
  assert.equal(second.state, "rejected");
  assert.equal(second.error.code, "unknown_peer");
  assert.equal(conn.queuedFrames, 0);
});
