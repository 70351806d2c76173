import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard, roomUrl, turnExpiry } from "../dist/index.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 }));
afterEach(() => mock.timers.reset());

async function joinRoom(options = {}, welcomeOverrides = {}) {
  const server = new FakeServer();
  const pending = Switchboard.join("http://127.0.0.1:8787", "lobby", {
    forcePath: "websocket",
    ...options,
    signaling: { createWebSocket: server.factory, random: () => 0.5, ...options.signaling },
  });
  server.last.accept();
  server.last.receive(welcome({ peers: [{ peer_id: "p2", meta: { name: "bob" } }], ...welcomeOverrides }));
  const room = await pending;
  const events = { data: [], signal: [], path: [], joined: [], left: [], errors: [] };
  room.on("data", (e) => events.data.push(e));
  room.on("signal", (e) => events.signal.push(e));
  room.on("path", (e) => events.path.push(e));
  room.on("peer-joined", (e) => events.joined.push(e));
  room.on("peer-left", (e) => events.left.push(e));
  room.on("error", (e) => events.errors.push(e));
  return { server, room, events };
}

const sentSignals = (socket) => socket.frames().filter((f) => f.type === "signal");

test("roomUrl maps http(s) to ws(s) and appends /v1/rooms/<room>", () => {
  assert.equal(roomUrl("http://127.0.0.1:8787", "lobby"), "ws://127.0.0.1:8787/v1/rooms/lobby");
  assert.equal(roomUrl("https://sb.example.com/", "a-b"), "wss://sb.example.com/v1/rooms/a-b");
  assert.equal(roomUrl("wss://sb.example.com/edge?x=1", "r"), "wss://sb.example.com/edge/v1/rooms/r");
});

test("turnExpiry reads the earliest '<unix expiry>:<id>' username", () => {
  assert.equal(turnExpiry([{ urls: "stun:a" }]), null);
  assert.equal(turnExpiry([{ urls: "turn:a", username: "200:x" }, { urls: "turn:b", username: "100:y" }]), 100);
});

test("the peers present at join are listed; each pair starts with an SDK-internal hello", async () => {
  const { server, room } = await joinRoom();
  assert.equal(room.peerId, "p-self");
  assert.deepEqual(room.peers.map((p) => [p.peerId, p.meta]), [["p2", { name: "bob" }]]);
  const [hello] = sentSignals(server.last);
  assert.equal(hello.to, "p2");
  assert.equal(hello.payload.sb, "rtc");
  assert.equal(hello.payload.t, "hello");
  assert.equal(hello.payload.forced, "websocket");
});

test("the controller (greater peer_id) announces the rung; the other end follows", async () => {
  // "p-self" < "p2": this end is polite and follows p2's announcement.
  const { server, room, events } = await joinRoom();
  server.last.receive({ type: "signal", seq: 1, from: "p2", payload: { sb: "rtc", t: "path", epoch: "x.1", path: "websocket" } });
  assert.equal(room.path("p2"), "websocket");
  assert.deepEqual(events.path, [{ peerId: "p2", path: "websocket", previous: null }]);
  assert.equal(room.connectionState("p2"), "connected");
});

test("as controller, a hello from the other end makes this end announce the forced rung", async () => {
  const { server, room } = await joinRoom({}, { peer_id: "p9" });
  server.last.receive({
    type: "signal",
    seq: 1,
    from: "p2",
    payload: { sb: "rtc", t: "hello", link: "L2", knows: null, forced: null },
  });
  const signals = sentSignals(server.last).map((f) => f.payload);
  assert.equal(signals.filter((p) => p.t === "hello").length, 2, "answers a hello that does not know this link");
  const path = signals.find((p) => p.t === "path");
  assert.equal(path.path, "websocket");
  assert.equal(room.path("p2"), "websocket");
});

test("on the websocket rung data goes as numbered relay frames; relay frames arrive as data, acknowledged", async () => {
  const { server, room, events } = await joinRoom();
  await room.send("p2", { text: "hi" });
  const [frame] = server.last.frames().filter((f) => f.type === "relay");
  assert.equal(frame.to, "p2");
  assert.deepEqual([frame.data.sb, frame.data.n, frame.data.d], ["d", 1, { text: "hi" }]);
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: { sb: "d", s: "L2.1", n: 1, d: { text: "hello" } } });
  server.last.receive({ type: "relay", seq: 2, from: "p2", data: { sb: "d", s: "L2.1", n: 1, d: { text: "hello" } } });
  assert.deepEqual(events.data, [{ from: "p2", data: { text: "hello" }, via: "relay" }], "the duplicate is dropped");
  mock.timers.tick(100);
  const acks = server.last.frames().filter((f) => f.type === "relay" && f.data.sb === "a");
  assert.deepEqual(acks.map((f) => f.data), [{ sb: "a", s: "L2.1", n: 1 }]);
});

test("relay data from a client without the SDK's envelope arrives as is", async () => {
  const { server, events } = await joinRoom();
  server.last.receive({ type: "relay", seq: 1, from: "p2", data: { text: "plain" } });
  assert.deepEqual(events.data, [{ from: "p2", data: { text: "plain" }, via: "relay" }]);
});

test("app signals surface as signal events; SDK-internal ones never do", async () => {
  const { server, room, events } = await joinRoom();
  server.last.receive({ type: "signal", seq: 1, from: "p2", payload: { app: 1 } });
  server.last.receive({ type: "signal", seq: 2, from: "p2", payload: { sb: "rtc", t: "hello", link: "L", knows: null, forced: null } });
  assert.deepEqual(events.signal, [{ from: "p2", payload: { app: 1 } }]);
  await room.signal("*", { app: 2 });
  assert.deepEqual(server.last.frames().at(-1), { type: "broadcast", payload: { app: 2 } });
  await assert.rejects(room.signal("p2", { sb: "rtc", t: "path" }), { code: "invalid_data" });
});

test("send validates its input with typed errors", async () => {
  const { room } = await joinRoom();
  await assert.rejects(room.send("nobody", 1), { code: "unknown_peer" });
  await assert.rejects(room.send("p2", null), { code: "invalid_data" });
});

test("presence: joins and leaves are applied once; a resume reconciles with welcome.peers", async () => {
  const { server, room, events } = await joinRoom();
  server.last.receive({ type: "peer-joined", seq: 1, peer_id: "p3", meta: {} });
  server.last.receive({ type: "peer-joined", seq: 2, peer_id: "p3", meta: {} });
  assert.deepEqual(events.joined.map((e) => e.peerId), ["p3"]);
  server.last.drop(1006);
  mock.timers.tick(1000);
  server.last.accept();
  server.last.receive(welcome({ resumed: true, peers: [{ peer_id: "p3", meta: {} }, { peer_id: "p4", meta: {} }] }));
  assert.equal(room.peerId, "p-self");
  assert.deepEqual(room.peers.map((p) => p.peerId).sort(), ["p3", "p4"]);
  assert.deepEqual(events.left, [{ peerId: "p2", reason: "timeout" }]);
  // A replayed presence frame that welcome.peers already reflects changes nothing.
  server.last.receive({ type: "peer-joined", seq: 3, peer_id: "p4", meta: {} });
  assert.deepEqual(events.joined.map((e) => e.peerId), ["p3", "p4"]);
});

test("TURN credentials are refreshed from /v1/ice-servers before they expire", async () => {
  const nowS = Date.now() / 1000;
  const calls = [];
  const fresh = [{ urls: ["turn:127.0.0.1:3478"], username: `${nowS + 1000}:x`, credential: "new" }];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return { ok: true, status: 200, json: async () => ({ iceServers: fresh }) };
  };
  const { room } = await joinRoom(
    { fetch, token: "jwt" },
    { ice_servers: [{ urls: ["turn:127.0.0.1:3478"], username: `${nowS + 100}:p-self`, credential: "old" }] },
  );
  mock.timers.tick(79_000);
  assert.equal(calls.length, 0);
  mock.timers.tick(1_000);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, "http://127.0.0.1:8787/v1/ice-servers");
  assert.equal(calls[0].init.headers.authorization, "Bearer jwt");
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(room.iceServers, fresh);
});

test("a failed refresh is a typed ice_servers error, not an unhandled rejection", async () => {
  const nowS = Date.now() / 1000;
  const fetch = async () => ({ ok: false, status: 503, json: async () => ({}) });
  const { events } = await joinRoom({ fetch }, { ice_servers: [{ urls: "turn:a", username: `${nowS + 10}:p`, credential: "c" }] });
  mock.timers.tick(8_000);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(events.errors.at(-1)?.code, "ice_servers");
});

test("leave sends leave and closes every pair", async () => {
  const { server, room } = await joinRoom();
  room.leave();
  assert.deepEqual(server.last.frames().at(-1), { type: "leave" });
  assert.deepEqual(room.peers, []);
  await assert.rejects(room.send("*", 1), { code: "closed" });
});

test("trace_id from welcome is on the room, in its errors and in diagnostics()", async () => {
  const { server, room, events } = await joinRoom({}, { rev: 1, trace_id: "00aa11bb22cc33dd", limits: { rate_per_s: 50, rate_burst: 100, max_frame_bytes: 4096 }, cseq: 0 });
  assert.equal(room.traceId, "00aa11bb22cc33dd");
  server.last.receive({ type: "error", code: "bad_json", message: "?" });
  assert.equal(events.errors[0].traceId, "00aa11bb22cc33dd");
  await assert.rejects(room.send("p2", "x".repeat(5000)), { code: "payload_too_large" });
  const d = room.diagnostics();
  assert.equal(d.traceId, "00aa11bb22cc33dd");
  assert.equal(d.signaling.rev, 1);
  assert.deepEqual(d.signaling.limits, { rate_per_s: 50, rate_burst: 100, max_frame_bytes: 4096 });
  assert.deepEqual(d.peers.map((p) => [p.peerId, p.unacknowledged]), [["p2", 0]]);
  assert.equal(d.errors.bad_json, 1);
});
