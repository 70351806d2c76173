// `relays-changed` (opt-in with `caps=relays`): the room pushes fresh ICE servers and a new SFU grant when a
// relay node dies or drains. The SDK asks for it (`caps=relays`), applies the ICE servers to every
// connection, and moves pairs on the `sfu` rung to a session on the new node make-before-break:
// relay frames carry the data until the new session's probe came back, unacknowledged messages
// are sent again on the new path exactly once, and the old session is closed afterwards.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../dist/index.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";
import { FakePc, settle } from "./fake-rtc.mjs";

const NOW = 1_700_000_000_000;
beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: NOW }));
afterEach(() => mock.timers.reset());

const ICE = [{ urls: ["stun:node1.test:3478"] }, { urls: ["turn:node1.test:3478"], username: "1700003600:u", credential: "c" }];
const ICE2 = [{ urls: ["stun:node2.test:3478"] }, { urls: ["turn:node2.test:3478"], username: "1700003600:u", credential: "c2" }];
const GRANT = { url: "http://node1.test:3480/v1/sessions", token: "sfu1.tok.one", expires: NOW / 1000 + 600 };
const GRANT2 = { url: "http://node2.test:3480/v1/sessions", token: "sfu1.tok.two", expires: NOW / 1000 + 600 };

async function join(selfId, options = {}) {
  const server = new FakeServer();
  const pcs = [];
  const requests = [];
  const fetchImpl = async (url, init = {}) => {
    const method = init.method ?? "GET";
    requests.push({ url: String(url), method, headers: init.headers ?? {} });
    if (method === "POST") return new Response("v=0 answer", { status: 201, headers: { location: "/v1/sessions/abc" } });
    if (method === "DELETE") return new Response("", { status: 200 });
    return new Response("", { status: 404 });
  };
  const pending = Switchboard.join("http://127.0.0.1:8787", "lobby", {
    ladder: { rungTimeoutMs: 1000, upgradeIntervalMs: 60_000, iceGraceMs: 300 },
    createPeerConnection: (config) => new FakePc(config, pcs),
    fetch: fetchImpl,
    ...options,
    signaling: { createWebSocket: server.factory, random: () => 0.5 },
  });
  server.last.accept();
  server.last.receive(welcome({ peer_id: selfId, peers: [{ peer_id: "p5", meta: {} }], ice_servers: ICE, sfu: GRANT }));
  const room = await pending;
  const relays = [];
  room.on("relays", (event) => relays.push(event));
  room.on("error", () => {});
  return { server, room, pcs, requests, relays };
}

let seq = 0;
const fromPeer = (server, payload) => {
  seq += 1;
  server.last.receive({ type: "signal", seq, from: "p5", payload });
};
const hello = { sb: "rtc", t: "hello", link: "remote-link", knows: null, forced: null };
const sessions = (pcs) => pcs.filter((pc) => pc.channel("switchboard")?.protocol === "switchboard-envelope");
const sentOn = (pc) => pc.channel("switchboard").sent.map((text) => JSON.parse(text.slice(text.indexOf("\n") + 1)));
const relayed = (server) => server.last.frames().filter((f) => f.type === "relay" && f.data.sb === "d").map((f) => f.data);

async function open(pc) {
  pc.connectionState = "connected";
  pc.channel("switchboard").open();
  pc.channel("switchboard-control").open();
  await settle();
}

test("the SDK asks for relays-changed when it joins", async () => {
  const { server } = await join("p9");
  assert.deepEqual(server.last.url.searchParams.get("caps").split(","), ["relays", "acks"]);
});

test("relays-changed: new ICE servers reach every connection and the room reports the move", async () => {
  seq = 0;
  const { server, room, pcs, relays } = await join("p9", { forcePath: "turn" });
  fromPeer(server, hello);
  const rtc = pcs.find((pc) => pc.config.iceTransportPolicy === "relay");
  assert.ok(rtc, "a TURN connection");
  assert.deepEqual(rtc.config.iceServers.flatMap((s) => s.urls), ["turn:node1.test:3478"]);
  let restarts = 0;
  rtc.restartIce = () => {
    restarts += 1;
  };
  server.last.receive({ type: "relays-changed", reason: "node_lost", ice_servers: ICE2, sfu: GRANT });
  assert.deepEqual(room.iceServers, ICE2);
  assert.deepEqual(rtc.config.iceServers.flatMap((s) => s.urls), ["turn:node2.test:3478"]);
  assert.equal(restarts, 1, "the TURN connection restarts ICE at once (p9 controls the pair)");
  assert.deepEqual(relays, [{ reason: "node_lost", sfuMoved: false }]);
  // Not a sequenced frame: the next seq still follows on.
  fromPeer(server, { sb: "rtc", t: "path", path: "turn" });
  assert.equal(server.last.frames().filter((f) => f.type === "error").length, 0);
});

test("relays-changed with a new SFU node: relay frames carry the pair until the new session is proven, each message exactly once", async () => {
  seq = 0;
  const { server, room, pcs, requests, relays } = await join("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  await settle();
  const [first] = sessions(pcs);
  await open(first);
  first.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p5"), "sfu");
  await room.send("p5", "one");
  assert.deepEqual(sentOn(first).filter((m) => m.sb === "d").map((m) => m.d), ["one"]);

  // node1 dies: the room pushes node2.
  server.last.receive({ type: "relays-changed", reason: "node_lost", ice_servers: ICE2, sfu: GRANT2 });
  assert.deepEqual(relays, [{ reason: "node_lost", sfuMoved: true }]);
  assert.deepEqual(relayed(server).map((m) => m.d), ["one"], "the unacknowledged message moves to relay frames at once");
  await room.send("p5", "two");
  assert.deepEqual(relayed(server).map((m) => m.d), ["one", "two"]);
  await settle();
  const post = requests.filter((r) => r.method === "POST").at(-1);
  assert.equal(post.url, GRANT2.url);
  assert.equal(post.headers.authorization, `Bearer ${GRANT2.token}`);
  const second = sessions(pcs).at(-1);
  assert.notEqual(second, first);
  assert.equal(first.closed, false, "the old session stays until the new one is open");
  await open(second);
  assert.ok(first.closed, "the old session is closed once the new one is open");
  assert.ok(requests.some((r) => r.method === "DELETE"));
  // The probe through the new node comes back: the pair is on sfu again, and the
  // unacknowledged messages are sent once more on it (the receiver drops what it already has).
  assert.deepEqual(sentOn(second).at(-1), { sb: "p", e: "sfu" });
  second.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p5"), "sfu");
  await room.send("p5", "three");
  assert.deepEqual(sentOn(second).filter((m) => m.sb === "d").map((m) => [m.n, m.d]), [[1, "one"], [2, "two"], [3, "three"]]);
  const stream = sentOn(second).find((m) => m.sb === "d").s;
  second.channel("switchboard").receive(`p5\n${JSON.stringify({ sb: "a", s: stream, n: 3 })}`);
  assert.equal(room.diagnostics().peers[0].unacknowledged, 0);
  assert.equal(relayed(server).length, 2, "nothing more over the socket");
});

test("relays-changed without an SFU: the pair leaves the sfu rung", async () => {
  seq = 0;
  const { server, room, pcs } = await join("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  await settle();
  const [first] = sessions(pcs);
  await open(first);
  first.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  server.last.receive({ type: "relays-changed", reason: "no_nodes", ice_servers: ICE2 });
  assert.ok(first.closed);
  assert.equal(room.path("p5"), "websocket");
});
