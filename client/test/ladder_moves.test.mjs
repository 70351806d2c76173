// The ladder's moves with fake RTCPeerConnections and fake timers: one ICE
// agent for direct and relayed, make-before-break switches (upgrade probes,
// forced rungs, falling to the WebSocket rung), exactly-once data across the
// switches, ICE restarts, batched trickle ICE and the follower's side.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../dist/index.js";
import { FakeChannel, settle } from "./fake-rtc.mjs";
import { FakeServer, welcome } from "./fake-websocket.mjs";

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 }));
afterEach(() => mock.timers.reset());

const ICE = [
  { urls: ["stun:127.0.0.1:3478"] },
  { urls: ["turn:127.0.0.1:3478?transport=udp"], username: "1800000000:p", credential: "c" },
];

/** The shared FakeChannel, speaking JSON: `sent` holds parsed messages, `receive` takes one. */
class FakeDataChannel extends FakeChannel {
  constructor(label = "switchboard") {
    super(label);
  }
  send(text) {
    super.send(text);
    this.sent[this.sent.length - 1] = JSON.parse(text);
  }
  receive(message) {
    super.receive(JSON.stringify(message));
  }
  /** App data (stream envelopes) sent on this channel, in order. */
  data() {
    return this.sent.filter((m) => m.sb === "d").map((m) => m.d);
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
    this.dc = null;
    // What getStats reports for the selected candidate pair.
    this.localType = "host";
    this.remoteType = "host";
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
  createDataChannel(label) {
    this.dc = new FakeDataChannel(label);
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
  async getStats() {
    return new Map([
      ["T", { id: "T", type: "transport", selectedCandidatePairId: "P" }],
      ["P", { id: "P", type: "candidate-pair", localCandidateId: "L", remoteCandidateId: "R" }],
      ["L", { id: "L", type: "local-candidate", candidateType: this.localType }],
      ["R", { id: "R", type: "remote-candidate", candidateType: this.remoteType }],
    ]);
  }
  close() {
    this.closed = true;
    this.connectionState = "closed";
  }
  // Test controls.
  /** ICE connects and the DataChannel opens; the SDK then sends its probe message. */
  open() {
    if (!this.dc) {
      this.dc = new FakeDataChannel();
      this.ondatachannel?.({ channel: this.dc });
    }
    this.connectionState = "connected";
    this.dc.readyState = "open";
    this.dc.onopen?.();
    this.onconnectionstatechange?.();
  }
  /** The remote end answers the probe: the connection has passed data and is usable. */
  async answerProbe() {
    await settle();
    const probe = this.dc.sent.find((m) => m.sb === "p");
    assert.ok(probe, "the SDK probes a new DataChannel before using it");
    // The other end reports whether its own candidate of the selected pair is relayed.
    this.dc.receive({ sb: "q", e: probe.e, relay: this.remoteType === "relay" });
    await settle();
  }
  async connect() {
    this.open();
    await this.answerProbe();
  }
  setState(state) {
    this.connectionState = state;
    this.onconnectionstatechange?.();
  }
}

async function joinWithFakes(selfId, options = {}) {
  seq = 0;
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
  const data = [];
  const tracks = [];
  room.on("path", ({ path }) => paths.push(path));
  room.on("data", (event) => data.push(event));
  room.on("track", ({ track }) => tracks.push(track));
  return { server, room, pcs, paths, data, tracks };
}

let seq = 0;
function fromPeer(server, payload) {
  seq += 1;
  server.last.receive({ type: "signal", seq, from: "p5", payload });
}
const hello = { sb: "rtc", t: "hello", link: "remote-link", knows: null, forced: null };
const internal = (server, t) => server.last.frames().filter((f) => f.type === "signal" && f.payload.t === t).map((f) => f.payload);
const relayed = (server) => server.last.frames().filter((f) => f.type === "relay" && f.data.sb === "d").map((f) => f.data.d);

test("one ICE agent: the pair starts on one auto connection with STUN and TURN and reports turn from the selected pair", async () => {
  // "p9" > "p5": this end controls the pair.
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  assert.equal(pcs.length, 1);
  assert.equal(pcs[0].config.iceTransportPolicy, "all");
  assert.deepEqual(pcs[0].config.iceServers, ICE);
  assert.deepEqual(internal(server, "open").map((p) => p.mode), ["auto"]);
  pcs[0].localType = "relay";
  await pcs[0].connect();
  assert.deepEqual(paths, ["turn"], "no rung timeout: relayed candidates raced in the same agent");
  assert.equal(room.path("p5"), "turn");
  assert.equal(room.connectionState("p5"), "connected");
  assert.deepEqual(internal(server, "path").map((p) => p.path), ["turn"]);
});

test("a failed upgrade probe leaves the working connection untouched", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].remoteType = "relay";
  await pcs[0].connect();
  assert.equal(room.path("p5"), "turn");
  mock.timers.tick(5000); // the upgrade probe: a direct-only connection next to the working one
  assert.equal(pcs.length, 2);
  assert.deepEqual(pcs[1].config, { iceServers: [ICE[0]], iceTransportPolicy: "all" });
  assert.equal(pcs[0].closed, false);
  await room.send("p5", "during the probe");
  assert.deepEqual(pcs[0].dc.data(), ["during the probe"], "data stays on the working connection");
  mock.timers.tick(1000); // the probe does not become usable in time
  assert.ok(pcs[1].closed);
  assert.equal(pcs[0].closed, false);
  assert.equal(room.peerConnection("p5"), pcs[0]);
  assert.deepEqual(paths, ["turn"]);
  assert.deepEqual(internal(server, "close").map((p) => p.epoch), [internal(server, "open")[1].epoch]);
  mock.timers.tick(5000); // and probes again later
  assert.equal(pcs.length, 3);
});

test("a successful upgrade probe takes over make-before-break and gets the unacknowledged data", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].localType = "relay";
  await pcs[0].connect();
  mock.timers.tick(5000);
  await room.send("p5", 1);
  await room.send("p5", 2);
  // The receiver acknowledged 1 only.
  const stream = pcs[0].dc.sent.find((m) => m.sb === "d").s;
  pcs[0].dc.receive({ sb: "a", s: stream, n: 1 });
  pcs[1].open();
  assert.equal(pcs[0].closed, false, "the old connection carries the pair until the new one passed data");
  await room.send("p5", 3);
  assert.deepEqual(pcs[0].dc.data(), [1, 2, 3]);
  await pcs[1].answerProbe();
  assert.deepEqual(paths, ["turn", "p2p"]);
  assert.ok(pcs[0].closed, "then the old one is closed");
  assert.equal(room.peerConnection("p5"), pcs[1]);
  assert.deepEqual(pcs[1].dc.data(), [2, 3], "every unacknowledged message again, in order, on the new path");
  await room.send("p5", 4);
  assert.deepEqual(pcs[1].dc.data(), [2, 3, 4]);
});

test("nothing usable within the rung timeout: the WebSocket rung, then an auto probe later moves the pair up", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  await room.send("p5", "early");
  assert.deepEqual(relayed(server), ["early"], "data never waits for ICE");
  mock.timers.tick(1000);
  assert.deepEqual(paths, ["websocket"]);
  assert.ok(pcs[0].closed);
  assert.equal(room.peerConnection("p5"), null);
  mock.timers.tick(5000);
  assert.equal(pcs.length, 2);
  assert.equal(pcs[1].config.iceTransportPolicy, "all");
  await pcs[1].connect();
  assert.deepEqual(paths, ["websocket", "p2p"]);
  // "early" was never acknowledged: it is sent again on the DataChannel; the receiver drops the duplicate.
  assert.deepEqual(pcs[1].dc.data(), ["early"]);
});

test("an active connection that fails: data moves to relay frames at once, ICE restarts, then the pair moves down", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  await pcs[0].connect();
  await room.send("p5", "a");
  pcs[0].setState("failed");
  assert.equal(pcs[0].restarts, 1);
  assert.equal(room.connectionState("p5"), "failed");
  await room.send("p5", "b");
  assert.deepEqual(relayed(server), ["a", "b"], "unacknowledged data is retransmitted over the relay");
  mock.timers.tick(999);
  assert.deepEqual(paths, ["p2p"]);
  mock.timers.tick(1);
  assert.deepEqual(paths, ["p2p", "websocket"]);
  assert.ok(pcs[0].closed);
  assert.equal(pcs.length, 2, "a fresh connection is tried at once");
  assert.deepEqual(pcs[1].config, { iceServers: ICE, iceTransportPolicy: "all" });
  await pcs[1].connect();
  assert.deepEqual(paths, ["p2p", "websocket", "p2p"]);
});

test("disconnected restarts ICE only after the grace period, and recovery keeps the connection", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  await pcs[0].connect();
  pcs[0].setState("disconnected");
  mock.timers.tick(299);
  assert.equal(pcs[0].restarts, 0);
  mock.timers.tick(1);
  assert.equal(pcs[0].restarts, 1);
  pcs[0].setState("connected");
  mock.timers.tick(10_000);
  assert.deepEqual(paths, ["p2p"]);
  assert.equal(room.connectionState("p5"), "connected");
  assert.equal(pcs.length, 1);
});

test("a forced rung is kept: on timeout it is retried, never left", async () => {
  const { server, pcs, paths } = await joinWithFakes("p9", { forcePath: "turn" });
  fromPeer(server, hello);
  mock.timers.tick(1000);
  mock.timers.tick(1000);
  assert.deepEqual(paths, []);
  assert.equal(pcs.length, 3);
  assert.ok(pcs.every((pc) => pc.config.iceTransportPolicy === "relay"));
  await pcs[2].connect();
  assert.deepEqual(paths, ["turn"]);
  mock.timers.tick(60_000);
  assert.equal(pcs.length, 3, "no upgrade probes while forced");
});

test("forced moves p2p → websocket → turn → p2p deliver every message exactly once, in order", async () => {
  // Two rooms wired back to back through the fake signaling: A controls (p9), B follows (p1).
  const { server, room, pcs } = await joinWithFakes("p9", { forcePath: "p2p" });
  fromPeer(server, hello);
  await pcs[0].connect();
  const sent = [];
  let n = 0;
  const sendSome = async (k) => {
    for (let i = 0; i < k; i++) {
      n += 1;
      sent.push(n);
      await room.send("p5", n);
    }
  };
  await sendSome(3);
  room.forcePath("websocket");
  await sendSome(3);
  room.forcePath("turn");
  await sendSome(2);
  assert.equal(pcs[1].config.iceTransportPolicy, "relay");
  await pcs[1].connect();
  await sendSome(2);
  room.forcePath("p2p");
  await sendSome(1);
  await pcs[2].connect();
  await sendSome(1);
  // The receiver sees every copy the sender put on any path, interleaved as paths allow.
  const { ReceiveStream } = await import("../dist/stream.js");
  const rx = new ReceiveStream();
  const copies = [
    ...pcs[0].dc.sent,
    ...server.last.frames().filter((f) => f.type === "relay").map((f) => f.data),
    ...pcs[1].dc.sent,
    ...pcs[2].dc.sent,
  ].filter((m) => m.sb === "d");
  // Worst case order for the receiver: latest path first.
  const delivered = copies.reverse().flatMap((m) => rx.onData(m).deliver);
  assert.deepEqual(delivered, sent);
  assert.ok(copies.length > sent.length, "retransmissions happened (and were deduplicated)");
});

test("follower: builds and drops connections when told, switches on its own usable connection", async () => {
  // "p1" < "p5": this end is polite and follows.
  const { server, room, pcs, paths, tracks } = await joinWithFakes("p1");
  fromPeer(server, hello);
  mock.timers.tick(30_000);
  assert.deepEqual(paths, [], "the follower does not choose");
  assert.equal(pcs.length, 0);
  fromPeer(server, { sb: "rtc", t: "open", epoch: "remote-link.1", mode: "turn" });
  assert.equal(pcs[0].config.iceTransportPolicy, "relay");
  const camera = { kind: "video", id: "remote-cam" };
  pcs[0].ontrack({ track: camera, streams: [] });
  assert.deepEqual(tracks, [], "tracks of a connection that does not carry the pair yet are held");
  await pcs[0].connect();
  assert.deepEqual(paths, ["turn"]);
  assert.deepEqual(tracks, [camera]);
  fromPeer(server, { sb: "rtc", t: "open", epoch: "remote-link.2", mode: "p2p" });
  assert.equal(pcs.length, 2);
  assert.equal(room.peerConnection("p5"), pcs[0]);
  await pcs[1].connect();
  assert.equal(room.peerConnection("p5"), pcs[1]);
  assert.deepEqual(paths, ["turn", "p2p"]);
  fromPeer(server, { sb: "rtc", t: "close", epoch: "remote-link.1" });
  assert.ok(pcs[0].closed);
  fromPeer(server, { sb: "rtc", t: "close", epoch: "remote-link.2" });
  fromPeer(server, { sb: "rtc", t: "path", path: "websocket" });
  assert.deepEqual(paths, ["turn", "p2p", "websocket"]);
  assert.equal(room.connectionState("p5"), "connected");
  // An answer for a closed epoch must not touch anything.
  fromPeer(server, { sb: "rtc", t: "sdp", epoch: "remote-link.1", description: { type: "answer", sdp: "x" } });
  assert.equal(room.peerConnection("p5"), null);
});

test("trickled ICE candidates go out batched, one signal per connection per batch window", async () => {
  const { server, pcs } = await joinWithFakes("p9", { ladder: { candidateBatchMs: 50, rungTimeoutMs: 1000 } });
  fromPeer(server, hello);
  for (let i = 0; i < 6; i++) {
    pcs[0].onicecandidate({ candidate: { toJSON: () => ({ candidate: `c${i}`, sdpMid: "0" }) } });
    mock.timers.tick(5);
  }
  mock.timers.tick(50);
  const batches = internal(server, "ice");
  assert.equal(batches.length, 1);
  assert.deepEqual(batches[0].candidates.map((c) => c.candidate), ["c0", "c1", "c2", "c3", "c4", "c5"]);
});

test("local tracks go on the pre-allocated transceivers of every connection", async () => {
  const { server, room, pcs } = await joinWithFakes("p9");
  const camera = { kind: "video", id: "t1" };
  room.addTrack(camera);
  fromPeer(server, hello);
  assert.deepEqual(pcs[0].transceivers.map((t) => [t.receiver.track.kind, t.direction]), [["audio", "sendrecv"], ["video", "sendrecv"]]);
  assert.deepEqual(pcs[0].sentTracks(), [camera]);
  assert.deepEqual(pcs[0].tracks, [], "no renegotiating addTrack for the first track of a kind");
  mock.timers.tick(1000); // websocket, then an upgrade probe builds a new connection
  mock.timers.tick(5000);
  assert.deepEqual(pcs[1].sentTracks(), [camera]);
  const screen = { kind: "video", id: "t2" };
  room.addTrack(screen);
  assert.deepEqual(pcs[1].tracks, [screen], "a second video track has no free transceiver: it is added");
});

test("ICE restarts are left to the controller; after a TURN refresh the follower asks for one", async () => {
  const { server, room, pcs } = await joinWithFakes("p1");
  fromPeer(server, hello);
  fromPeer(server, { sb: "rtc", t: "open", epoch: "remote-link.1", mode: "turn" });
  await pcs[0].connect();
  pcs[0].setState("failed");
  mock.timers.tick(5000);
  assert.equal(pcs[0].restarts, 0);
  room["setIceServers"]([ICE[0], { ...ICE[1], credential: "fresh" }]);
  assert.equal(pcs[0].config.iceServers[0].credential, "fresh");
  assert.deepEqual(internal(server, "restart").map((p) => p.epoch), ["remote-link.1"]);
});

test("after a TURN refresh the controller restarts ICE on connections that relay", async () => {
  const { server, room, pcs } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].localType = "relay";
  await pcs[0].connect();
  room["setIceServers"]([ICE[0], { ...ICE[1], credential: "fresh" }]);
  assert.equal(pcs[0].restarts, 1);
  assert.equal(pcs[0].config.iceServers[1].credential, "fresh");
  fromPeer(server, { sb: "rtc", t: "restart", epoch: internal(server, "open")[0].epoch });
  assert.equal(pcs[0].restarts, 2, "and on the follower's request");
});

test("without acks, unacknowledged data is sent again after retransmitMs on the current path", async () => {
  const { server, room, pcs } = await joinWithFakes("p9", { ladder: { retransmitMs: 500, rungTimeoutMs: 1000 } });
  fromPeer(server, hello);
  await pcs[0].connect();
  await room.send("p5", "x");
  mock.timers.tick(499);
  assert.deepEqual(pcs[0].dc.data(), ["x"]);
  mock.timers.tick(1);
  assert.deepEqual(pcs[0].dc.data(), ["x", "x"]);
  const stream = pcs[0].dc.sent.find((m) => m.sb === "d").s;
  pcs[0].dc.receive({ sb: "a", s: stream, n: 1 });
  mock.timers.tick(5000);
  assert.deepEqual(pcs[0].dc.data(), ["x", "x"], "acknowledged: no more copies");
});

test("the path is turn when either end's candidate is relayed, as each end reports its own over the DataChannel", async () => {
  const { server, room, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  // Locally the selected pair looks direct (the relayed packets arrive as a peer-reflexive candidate)…
  pcs[0].remoteType = "relay"; // …but the other end reports that its candidate is relayed.
  await pcs[0].connect();
  assert.equal(room.path("p5"), "turn");
  const probe = pcs[0].dc.sent.find((m) => m.sb === "p");
  assert.equal(probe.relay, false, "this end reports its own (host) candidate");
  // The other end's ICE moves to a direct pair and says so; a direct pair that lasts is believed.
  pcs[0].remoteType = "host";
  pcs[0].dc.receive({ sb: "r", relay: false });
  await settle();
  assert.deepEqual(paths, ["turn"]);
  mock.timers.tick(300);
  await settle();
  assert.deepEqual(paths, ["turn", "p2p"]);
});

test("crossed reports while ICE settles do not flap the path: a p2p claim must last", async () => {
  const { server, pcs, paths } = await joinWithFakes("p9");
  fromPeer(server, hello);
  pcs[0].localType = "relay";
  await pcs[0].connect();
  assert.deepEqual(paths, ["turn"]);
  // This end's pair becomes (host, relay) and the other end has not reported its switch yet.
  pcs[0].localType = "host";
  pcs[0].dc.receive({ sb: "r", relay: false });
  await settle();
  mock.timers.tick(100);
  pcs[0].dc.receive({ sb: "r", relay: true });
  await settle();
  mock.timers.tick(300);
  await settle();
  assert.deepEqual(paths, ["turn"]);
});

test("two tracks of a kind added before replaceTrack completes do not share the free transceiver", async () => {
  const { server, room, pcs } = await joinWithFakes("p9");
  fromPeer(server, hello);
  const audio = pcs[0].transceivers.find((t) => t.receiver.track.kind === "audio");
  audio.sender.replaceTrack = () => new Promise(() => undefined); // never completes within the test
  const first = { kind: "audio", id: "a1" };
  const second = { kind: "audio", id: "a2" };
  room.addTrack(first);
  room.addTrack(second);
  assert.deepEqual(pcs[0].tracks, [second], "the second one is added, not swapped onto the first one's transceiver");
});
