// The ladder's timing with fake RTCPeerConnections: moving down after the rung
// timeout, retrying the best rung from below, ICE restarts, and the follower
// obeying the controller's announcements.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../dist/index.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 }));
afterEach(() => mock.timers.reset());

const ICE = [
  { urls: ["stun:127.0.0.1:3478"] },
  { urls: ["turn:127.0.0.1:3478?transport=udp"], username: "1800000000:p", credential: "c" },
];

class FakeDataChannel {
  constructor() {
    this.readyState = "connecting";
    this.bufferedAmount = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = null;
  }
  send(text) {
    this.sent.push(text);
  }
  close() {
    this.readyState = "closed";
  }
}

class FakePeerConnection {
  constructor(config, registry) {
    this.config = config;
    this.connectionState = "new";
    this.signalingState = "stable";
    this.restarts = 0;
    this.closed = false;
    this.tracks = [];
    this.transceivers = [];
    registry.push(this);
  }
  addTransceiver(kind, init) {
    const transceiver = {
      direction: init.direction,
      receiver: { track: { kind } },
      sender: {
        track: null,
        replaceTrack: async (track) => {
          transceiver.sender.track = track;
        },
      },
    };
    this.transceivers.push(transceiver);
    return transceiver;
  }
  getTransceivers() {
    return this.transceivers;
  }
  sentTracks() {
    return [...this.transceivers.map((t) => t.sender.track).filter(Boolean), ...this.tracks];
  }
  createDataChannel() {
    this.dc = new FakeDataChannel();
    return this.dc;
  }
  addTrack(track) {
    this.tracks.push(track);
  }
  restartIce() {
    this.restarts += 1;
  }
  getConfiguration() {
    return this.config;
  }
  setConfiguration(config) {
    this.config = config;
  }
  close() {
    this.closed = true;
  }
  // Test controls.
  connect() {
    this.connectionState = "connected";
    this.dc.readyState = "open";
    this.dc.onopen?.();
    this.onconnectionstatechange?.();
  }
  setState(state) {
    this.connectionState = state;
    this.onconnectionstatechange?.();
  }
}

async function joinWithFakes(selfId, options = {}) {
  const server = new FakeServer();
  const pcs = [];
  const pending = Switchboard.join("http://127.0.0.1:8787", "lobby", {
    ladder: { rungTimeoutMs: 1000, upgradeIntervalMs: 5000, iceGraceMs: 300 },
    createPeerConnection: (config) => new FakePeerConnection(config, pcs),
    fetch: async () => {
      throw new Error("no network in unit tests");
    },
    ...options,
    signaling: { createWebSocket: server.factory, random: () => 0.5 },
  });
  server.last.accept();
  server.last.receive(welcome({ peer_id: selfId, peers: [{ peer_id: "p5", meta: {} }], ice_servers: ICE }));
  const room = await pending;
  const paths = [];
  room.on("path", ({ path }) => paths.push(path));
  return { server, room, pcs, paths };
}

let seq = 0;
function fromPeer(server, payload) {
  seq += 1;
  server.last.receive({ type: "signal", seq, from: "p5", payload });
}
const hello = { sb: "rtc", t: "hello", link: "remote-link", knows: null, forced: null };
const announced = (server) =>
  server.last.frames().filter((f) => f.type === "signal" && f.payload.t === "path").map((f) => f.payload.path);

test("controller: p2p → turn → websocket on rung timeouts, then back up to p2p when it works", async () => {
  // "p9" > "p5": this end controls the pair.
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  assert.deepEqual(paths, ["p2p"]);
  assert.equal(pcs[0].config.iceTransportPolicy, "all");
  assert.deepEqual(pcs[0].config.iceServers, [ICE[0]]);

  mock.timers.tick(1000);
  assert.deepEqual(paths, ["p2p", "turn"]);
  assert.ok(pcs[0].closed);
  assert.equal(pcs[1].config.iceTransportPolicy, "relay");
  assert.deepEqual(pcs[1].config.iceServers, [ICE[1]]);

  mock.timers.tick(1000);
  assert.deepEqual(paths, ["p2p", "turn", "websocket"]);
  assert.equal(room.peerConnection("p5"), null);
  await room.send("p5", { n: 1 });
  assert.deepEqual(server.last.frames().at(-1), { type: "relay", to: "p5", data: { n: 1 } });

  mock.timers.tick(5000); // the upgrade retry
  assert.deepEqual(paths, ["p2p", "turn", "websocket", "p2p"]);
  pcs[2].connect();
  mock.timers.tick(20_000);
  assert.equal(room.path("p5"), "p2p");
  assert.equal(room.connectionState("p5"), "connected");
  assert.deepEqual(announced(server), ["p2p", "turn", "websocket", "p2p"]);
  await room.send("p5", { n: 2 });
  assert.deepEqual(pcs[2].dc.sent, ['{"n":2}']);
});

test("controller: a failed connection restarts ICE at once, then moves down if it does not recover", async () => {
  const { server, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].connect();
  pcs[0].setState("failed");
  assert.equal(pcs[0].restarts, 1);
  mock.timers.tick(999);
  assert.deepEqual(paths, ["p2p"]);
  mock.timers.tick(1);
  assert.deepEqual(paths, ["p2p", "turn"]);
});

test("disconnected restarts ICE only after the grace period, and recovery keeps the rung", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].connect();
  pcs[0].setState("disconnected");
  mock.timers.tick(299);
  assert.equal(pcs[0].restarts, 0);
  mock.timers.tick(1);
  assert.equal(pcs[0].restarts, 1);
  pcs[0].setState("connected");
  mock.timers.tick(10_000);
  assert.deepEqual(paths, ["p2p"]);
  assert.equal(room.connectionState("p5"), "connected");
});

test("a forced rung is kept: on timeout it is retried, never left", async () => {
  const { server, pcs, paths } = await joinWithFakes("p9", { forcePath: "turn" });
  fromPeer(server, hello);
  assert.deepEqual(paths, ["turn"]);
  mock.timers.tick(1000);
  mock.timers.tick(1000);
  assert.deepEqual(paths, ["turn"]);
  assert.equal(pcs.length, 3);
  assert.ok(pcs.every((pc) => pc.config.iceTransportPolicy === "relay"));
});

test("follower: obeys the controller's announcements and drops SDP of other epochs", async () => {
  // "p1" < "p5": this end is polite and follows.
  const { server, room, pcs, paths } = await joinWithFakes("p1");
  fromPeer(server, hello);
  assert.deepEqual(paths, [], "the follower does not choose");
  mock.timers.tick(30_000);
  assert.deepEqual(paths, []);
  fromPeer(server, { sb: "rtc", t: "path", epoch: "remote-link.1", path: "turn" });
  assert.equal(room.path("p5"), "turn");
  assert.equal(pcs.length, 1);
  fromPeer(server, { sb: "rtc", t: "path", epoch: "remote-link.2", path: "websocket" });
  assert.equal(room.path("p5"), "websocket");
  assert.ok(pcs[0].closed);
  // An answer for the abandoned epoch must not touch anything.
  fromPeer(server, { sb: "rtc", t: "sdp", epoch: "remote-link.1", description: { type: "answer", sdp: "x" } });
  assert.equal(room.peerConnection("p5"), null);
  mock.timers.tick(30_000);
  assert.deepEqual(paths, ["turn", "websocket"]);
});

test("local tracks go on the pre-allocated transceivers of every new rung's connection", async () => {
  const { server, room, pcs } = await joinWithFakes("p9");
  const camera = { kind: "video", id: "t1" };
  room.addTrack(camera);
  fromPeer(server, hello);
  assert.deepEqual(pcs[0].transceivers.map((t) => [t.receiver.track.kind, t.direction]), [["audio", "sendrecv"], ["video", "sendrecv"]]);
  assert.deepEqual(pcs[0].sentTracks(), [camera]);
  assert.deepEqual(pcs[0].tracks, [], "no renegotiating addTrack for the first track of a kind");
  mock.timers.tick(1000);
  assert.deepEqual(pcs[1].sentTracks(), [camera]);
  // A second video track has no free transceiver: it is added (and renegotiated).
  const screen = { kind: "video", id: "t2" };
  room.addTrack(screen);
  assert.deepEqual(pcs[1].tracks, [screen]);
});

test("ICE restarts are left to the controller, so restart offers never collide", async () => {
  const { server, pcs } = await joinWithFakes("p1");
  fromPeer(server, hello);
  fromPeer(server, { sb: "rtc", t: "path", epoch: "remote-link.1", path: "p2p" });
  pcs[0].setState("failed");
  mock.timers.tick(5000);
  assert.equal(pcs[0].restarts, 0);
});
