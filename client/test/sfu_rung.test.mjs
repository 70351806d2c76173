// The `sfu` rung with fake RTCPeerConnections, a fake fetch and fake timers:
// the session set-up (POST with the token, DELETE on leave), the per-pair
// probe through the relay's envelope channel, data through it, the automatic
// ladder's fall from rtc to sfu to websocket, and the token refresh.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../dist/index.js";
import { FakeServer, welcome } from "./fake-websocket.mjs";
import { FakePc, settle } from "./fake-rtc.mjs";

const NOW = 1_700_000_000_000;
beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: NOW }));
afterEach(() => mock.timers.reset());

const ICE = [{ urls: ["stun:127.0.0.1:3478"] }];
const GRANT = { url: "http://relay.test/v1/sessions", token: "sfu1.tok.en", expires: NOW / 1000 + 600 };

/** A fetch that answers only when aborted (a relay that accepted the connection and went quiet). */
const never = (init) =>
  new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(new Error("aborted"))));

async function joinWithSfu(selfId, options = {}, relay = {}) {
  const server = new FakeServer();
  const pcs = [];
  const requests = [];
  const fetchImpl = async (url, init = {}) => {
    requests.push({ url: String(url), method: init.method ?? "GET", headers: init.headers ?? {}, body: init.body, signal: init.signal });
    const method = init.method ?? "GET";
    if (method === "POST") {
      if (relay.post) return relay.post(init);
      return new Response(relay.answer ?? "v=0 answer", { status: 201, headers: { location: "/v1/sessions/abc" } });
    }
    if (method === "PATCH" && relay.patch) return relay.patch(init);
    if (method === "DELETE") return new Response("", { status: 200 });
    if (String(url).includes("/v1/sfu-token")) {
      return new Response(JSON.stringify({ ...GRANT, token: "sfu1.fresh.tok", expires: GRANT.expires + 600 }), { status: 200 });
    }
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
  const paths = [];
  const data = [];
  const errors = [];
  const tracks = [];
  room.on("path", ({ path }) => paths.push(path));
  room.on("data", (event) => data.push(event));
  room.on("error", (error) => errors.push(error));
  room.on("track", (event) => tracks.push(event));
  return { server, room, pcs, requests, paths, data, errors, tracks };
}

let seq = 0;
function fromPeer(server, payload) {
  seq += 1;
  server.last.receive({ type: "signal", seq, from: "p5", payload });
}
const hello = { sb: "rtc", t: "hello", link: "remote-link", knows: null, forced: null };
const internal = (server, t) => server.last.frames().filter((f) => f.type === "signal" && f.payload.t === t).map((f) => f.payload);
/** The SFU session's connection: the one with the envelope channel. */
const sfuPc = (pcs) => pcs.find((pc) => pc.channel("switchboard")?.protocol === "switchboard-envelope");
const sent = (pc) => pc.channel("switchboard").sent.map((text) => [text.slice(0, text.indexOf("\n")), JSON.parse(text.slice(text.indexOf("\n") + 1))]);

async function openSfu(pcs) {
  await settle();
  const pc = sfuPc(pcs);
  assert.ok(pc, "an RTCPeerConnection to the relay");
  pc.connectionState = "connected";
  pc.channel("switchboard").open();
  pc.channel("switchboard-control").open();
  await settle();
  return pc;
}

test("forced sfu: one session to the room's relay, a probe through it, then data in the envelope", async () => {
  seq = 0;
  const { server, room, pcs, requests, paths, data } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  assert.deepEqual(internal(server, "sfu"), [{ sb: "rtc", t: "sfu", on: true }], "the controller moves the pair onto sfu");
  assert.deepEqual(internal(server, "open"), [], "no pair connection on the sfu rung");
  await settle();
  const post = requests.find((r) => r.method === "POST");
  assert.equal(post.url, GRANT.url);
  assert.equal(post.headers.authorization, `Bearer ${GRANT.token}`);
  assert.equal(post.headers["content-type"], "application/sdp");
  assert.equal(post.body, "v=0 offer");
  const pc = await openSfu(pcs);
  assert.equal(pc.remoteDescription.sdp, "v=0 answer");
  assert.deepEqual(pc.config.iceServers, [], "the relay is ICE-lite with host candidates: no STUN/TURN");
  assert.equal(pc.channel("switchboard-control").label, "switchboard-control");
  assert.deepEqual(sent(pc).at(-1), ["p5", { sb: "p", e: "sfu" }], "the probe is addressed to the peer");
  assert.equal(room.path("p5"), null, "not on sfu before the probe made the round trip");

  // Until the other page's session is up the relay drops the probe: it is sent again.
  mock.timers.tick(250);
  assert.equal(sent(pc).filter(([, m]) => m.sb === "p").length, 2);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.deepEqual(paths, ["sfu"]);
  assert.equal(room.path("p5"), "sfu");
  assert.deepEqual(internal(server, "path").map((p) => p.path), ["sfu"]);
  // A late hello from the same remote instance leaves the pair where it is.
  fromPeer(server, hello);
  assert.deepEqual(internal(server, "sfu"), [{ sb: "rtc", t: "sfu", on: true }]);
  assert.equal(room.path("p5"), "sfu");

  await room.send("p5", { hello: "via sfu" });
  assert.deepEqual(sent(pc).at(-1)[0], "p5");
  assert.deepEqual(sent(pc).at(-1)[1].d, { hello: "via sfu" });
  // The other end's probe is answered; its data is delivered once, with via "sfu".
  pc.channel("switchboard").receive('p5\n{"sb":"p","e":"sfu"}');
  assert.deepEqual(sent(pc).at(-1), ["p5", { sb: "q", e: "sfu" }]);
  const envelope = JSON.stringify({ sb: "d", s: "remote-link.1", n: 1, d: "hi" });
  pc.channel("switchboard").receive(`p5\n${envelope}`);
  pc.channel("switchboard").receive(`p5\n${envelope}`);
  assert.deepEqual(data.map((d) => [d.from, d.data, d.via]), [["p5", "hi", "sfu"]]);
  assert.equal(server.last.frames().filter((f) => f.type === "relay" && f.data.sb === "d").length, 0, "no data over the socket");

  room.leave();
  const del = requests.find((r) => r.method === "DELETE");
  assert.equal(del.url, "http://relay.test/v1/sessions/abc");
  assert.ok(pc.closed);
});

test("automatic ladder: rtc does not work, sfu does not either, then websocket", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu("p9");
  fromPeer(server, hello);
  assert.deepEqual(internal(server, "open").map((p) => p.mode), ["auto"], "rtc first");
  mock.timers.tick(1000); // the rtc connection is not usable in time
  assert.deepEqual(internal(server, "sfu"), [{ sb: "rtc", t: "sfu", on: true }], "then the sfu rung");
  await settle();
  assert.ok(sfuPc(pcs), "a session to the relay");
  assert.equal(room.path("p5"), null);
  mock.timers.tick(1000); // no probe answer through the relay in time
  assert.deepEqual(internal(server, "sfu").at(-1), { sb: "rtc", t: "sfu", on: false });
  assert.equal(room.path("p5"), "websocket");
});

test("automatic ladder: when rtc fails and the sfu probe comes back, the pair is on sfu", async () => {
  seq = 0;
  const { server, room, pcs, requests } = await joinWithSfu("p9");
  fromPeer(server, hello);
  mock.timers.tick(1000);
  const pc = await openSfu(pcs);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p5"), "sfu");
  // The connection fails: an ICE restart is tried first; the relay no longer knows the session
  // (404), so the pair falls to the WebSocket rung and tells the follower.
  pc.connectionState = "failed";
  pc.onconnectionstatechange?.();
  await settle();
  assert.equal(requests.filter((r) => r.method === "PATCH").length, 1, "an ICE restart before giving up");
  assert.equal(room.path("p5"), "websocket");
  assert.deepEqual(internal(server, "sfu").at(-1), { sb: "rtc", t: "sfu", on: false });
});

test("the follower joins the sfu rung when told and sends through it once its probe came back", async () => {
  seq = 0;
  // "p1" < "p5": the other end controls the pair.
  const { server, room, pcs, paths } = await joinWithSfu("p1");
  fromPeer(server, hello);
  fromPeer(server, { sb: "rtc", t: "sfu", on: true });
  const pc = await openSfu(pcs);
  await room.send("p5", "before");
  assert.ok(server.last.frames().some((f) => f.type === "relay" && f.data.d === "before"), "relay frames until the rung is proven");
  // The controller announces sfu only after its probe went through both sessions: that proves ours too.
  fromPeer(server, { sb: "rtc", t: "path", path: "sfu" });
  assert.deepEqual(paths, ["sfu"]);
  await room.send("p5", "from the follower");
  assert.deepEqual(sent(pc).at(-1)[1].d, "from the follower");
  // Told to leave the rung: data goes back to relay frames.
  fromPeer(server, { sb: "rtc", t: "sfu", on: false });
  fromPeer(server, { sb: "rtc", t: "path", path: "websocket" });
  await room.send("p5", "after");
  assert.ok(server.last.frames().some((f) => f.type === "relay" && f.data.d === "after"));
  assert.equal(room.path("p5"), "websocket");
});

test("the SFU token is refreshed from /v1/sfu-token at 80% of its lifetime", async () => {
  seq = 0;
  const { requests } = await joinWithSfu("p9");
  mock.timers.tick(479_000);
  await settle();
  assert.equal(requests.filter((r) => r.url.includes("/v1/sfu-token")).length, 0);
  mock.timers.tick(1_000);
  await settle();
  const refresh = requests.find((r) => r.url.includes("/v1/sfu-token"));
  assert.ok(refresh, "refreshed at 480 s of 600");
  const url = new URL(refresh.url);
  assert.equal(url.origin + url.pathname, "http://127.0.0.1:8787/v1/sfu-token");
  assert.equal(url.searchParams.get("room"), "lobby");
  assert.equal(url.searchParams.get("sfu_token"), GRANT.token);
  // The next refresh is scheduled from the new expiry (1200 s after NOW): at 80% of the remaining 720 s.
  mock.timers.tick(575_000);
  await settle();
  assert.equal(requests.filter((r) => r.url.includes("/v1/sfu-token")).length, 1);
  mock.timers.tick(2_000);
  await settle();
  const second = requests.filter((r) => r.url.includes("/v1/sfu-token"))[1];
  assert.equal(new URL(second.url).searchParams.get("sfu_token"), "sfu1.fresh.tok", "the refreshed token proves the peer next time");
});

test("forced p2p → sfu is make-before-break and the unacknowledged data is sent again through the relay", async () => {
  seq = 0;
  const { server, room, pcs, paths } = await joinWithSfu("p9", { forcePath: "p2p" });
  fromPeer(server, hello);
  const rtc = pcs[0];
  const dc = rtc.channel("switchboard");
  rtc.connectionState = "connected";
  dc.open();
  await settle();
  const probe = JSON.parse(dc.sent.find((text) => JSON.parse(text).sb === "p"));
  dc.receive(JSON.stringify({ sb: "q", e: probe.e, relay: false }));
  await settle();
  assert.equal(room.path("p5"), "p2p");
  await room.send("p5", "one");
  room.forcePath("sfu");
  assert.deepEqual(internal(server, "sfu"), [{ sb: "rtc", t: "sfu", on: true }]);
  await room.send("p5", "two");
  const onRtc = dc.sent.map((text) => JSON.parse(text)).filter((m) => m.sb === "d").map((m) => m.d);
  assert.deepEqual(onRtc, ["one", "two"], "the working connection carries data while the sfu rung is built");
  assert.equal(rtc.closed, false);
  const pc = await openSfu(pcs);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.deepEqual(paths, ["p2p", "sfu"]);
  assert.ok(rtc.closed, "the pair's connection is closed once the sfu rung works");
  assert.ok(internal(server, "close").length >= 1);
  const onSfu = sent(pc).filter(([, m]) => m.sb === "d").map(([to, m]) => [to, m.n, m.d]);
  assert.deepEqual(onSfu.map(([to, , d]) => [to, d]), [["p5", "one"], ["p5", "two"]], "unacknowledged data is sent again through the relay");
  // The receiver acknowledges through the relay; nothing is sent a third time.
  const stream = sent(pc).find(([, m]) => m.sb === "d")[1].s;
  assert.equal(room.diagnostics().peers[0].unacknowledged, 2);
  pc.channel("switchboard").receive(`p5\n${JSON.stringify({ sb: "a", s: stream, n: 2 })}`);
  assert.equal(room.diagnostics().peers[0].unacknowledged, 0);
});

test("a relay offer right behind the relay's answer to our offer is answered, not taken for glare", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  // Signaling states as a browser keeps them; applying a description takes a few ticks.
  pc.signalingState = "stable";
  pc.setLocalDescription = async (description) => {
    await settle();
    const type = description?.type ?? (pc.signalingState === "have-remote-offer" ? "answer" : "offer");
    pc.localDescription = { type, sdp: `v=0 local ${type}` };
    pc.signalingState = type === "offer" ? "have-local-offer" : "stable";
  };
  pc.setRemoteDescription = async (description) => {
    await settle();
    pc.signalingState = description.type === "offer" ? "have-remote-offer" : "stable";
  };
  // A camera starts after the session is up: the SDK offers it over the control channel.
  room.addTrack({ kind: "video", id: "cam" }, { id: "stream" });
  pc.onnegotiationneeded?.();
  await settle();
  await settle();
  const control = pc.channel("switchboard-control");
  assert.deepEqual(control.sent.map((t) => JSON.parse(t).type), ["offer"]);
  // The relay answers it and at once offers its own tracks (another publisher's camera).
  control.receive(JSON.stringify({ type: "answer", sdp: "v=0 relay answer" }));
  control.receive(JSON.stringify({ type: "offer", sdp: "v=0 relay offer" }));
  for (let i = 0; i < 5; i++) await settle();
  assert.deepEqual(control.sent.map((t) => JSON.parse(t).type), ["offer", "answer"]);
  assert.equal(pc.signalingState, "stable");
});

const RELAY_ANSWER = "v=0 answer\r\na=ice-lite\r\na=ice-ufrag:relay1\r\na=ice-pwd:relaypassword0123456789\r\na=setup:passive\r\n";

test("a POST the relay never answers fails the session after the rung timeout; the forced pair tries a new one", async () => {
  seq = 0;
  const { server, room, requests, errors } = await joinWithSfu("p9", { forcePath: "sfu" }, { post: never });
  fromPeer(server, hello);
  await settle();
  assert.equal(requests.filter((r) => r.method === "POST").length, 1);
  assert.equal(room.sfuState, "connecting");
  mock.timers.tick(999);
  await settle();
  assert.equal(room.sfuState, "connecting");
  mock.timers.tick(1);
  await settle();
  assert.equal(room.sfuState, "failed", "a clear failure, not connecting forever");
  assert.ok(requests.find((r) => r.method === "POST").signal.aborted, "the request is aborted");
  assert.ok(errors.some((e) => /could not set up the relay session/.test(e.message) && /no answer within 1000 ms/.test(String(e.cause?.message))));
  // The forced rung is kept: after iceGraceMs the pair asks for the rung again and a new session is made.
  mock.timers.tick(300);
  await settle();
  assert.equal(requests.filter((r) => r.method === "POST").length, 2, "a new session attempt");
});

test("automatic ladder: a relay that never answers the POST sends the pair to websocket", async () => {
  seq = 0;
  const { server, room, requests } = await joinWithSfu("p9", {}, { post: never });
  fromPeer(server, hello);
  mock.timers.tick(1000); // rtc is not usable in time
  await settle();
  assert.equal(requests.filter((r) => r.method === "POST").length, 1);
  mock.timers.tick(1000);
  await settle();
  assert.equal(room.sfuState, "failed");
  assert.equal(room.path("p5"), "websocket");
  assert.deepEqual(internal(server, "sfu").at(-1), { sb: "rtc", t: "sfu", on: false });
});

test("a control-channel offer the relay never answers fails the session and the pair leaves sfu", async () => {
  seq = 0;
  const { server, room, pcs, errors } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p5"), "sfu");
  room.addTrack({ kind: "video", id: "cam" }, { id: "stream" });
  pc.onnegotiationneeded?.();
  await settle();
  assert.deepEqual(pc.channel("switchboard-control").sent.map((t) => JSON.parse(t).type), ["offer"]);
  mock.timers.tick(999);
  await settle();
  assert.equal(room.sfuState, "open");
  mock.timers.tick(1);
  await settle();
  assert.equal(room.sfuState, "failed");
  assert.ok(errors.some((e) => /did not answer a control-channel offer within 1000 ms/.test(e.message)));
  assert.equal(room.path("p5"), "websocket", "the forced pair is carried by relay frames until sfu works again");
});

test("an answered control offer does not fail the session later", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  room.addTrack({ kind: "video", id: "cam" }, { id: "stream" });
  pc.onnegotiationneeded?.();
  await settle();
  assert.equal(pc.signalingState, "have-local-offer");
  pc.channel("switchboard-control").receive(JSON.stringify({ type: "answer", sdp: "v=0 relay answer\r\nm=video 9 UDP/TLS/RTP/SAVPF 96" }));
  await settle();
  mock.timers.tick(5000);
  await settle();
  assert.equal(room.sfuState, "open");
});

test("a track the relay forwards before the pair with its publisher exists is shown once that pair is on sfu", async () => {
  seq = 0;
  const { server, room, pcs, tracks } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  // p7's camera reaches this page before p7's peer-joined frame does.
  const camera = { kind: "video", id: "p7-cam", readyState: "live" };
  const ended = { kind: "audio", id: "p7-old-mic", readyState: "live" };
  pc.ontrack({ track: ended, streams: [{ id: "p7" }] });
  ended.readyState = "ended";
  pc.ontrack({ track: camera, streams: [{ id: "p7" }] });
  assert.deepEqual(tracks, []);
  seq += 1;
  server.last.receive({ type: "peer-joined", seq, peer_id: "p7", meta: {} });
  seq += 1;
  server.last.receive({ type: "signal", seq, from: "p7", payload: { ...hello, link: "p7-link" } });
  assert.ok(internal(server, "sfu").length >= 2, "the pair with p7 goes onto sfu");
  pc.channel("switchboard").receive('p7\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p7"), "sfu");
  assert.deepEqual(
    tracks.map((t) => [t.peerId, t.track.id]),
    [["p7", "p7-cam"]],
    "the live track is delivered, the ended one is not",
  );
});

test("ICE restart over PATCH when the relay path is disconnected: same session, new credentials, the pair stays on sfu", async () => {
  seq = 0;
  const patches = [];
  const { server, room, pcs, requests } = await joinWithSfu(
    "p9",
    { forcePath: "sfu" },
    {
      answer: RELAY_ANSWER,
      patch: async (init) => {
        patches.push(init.body);
        return new Response("a=ice-ufrag:relay2\r\na=ice-pwd:relaypassword9876543210\r\n", {
          status: 200,
          headers: { "content-type": "application/trickle-ice-sdpfrag" },
        });
      },
    },
  );
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  pc.iceConnectionState = "connected";
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  assert.equal(room.path("p5"), "sfu");
  // The network changes: ICE is disconnected; after iceGraceMs the SDK restarts it.
  pc.iceConnectionState = "disconnected";
  pc.oniceconnectionstatechange?.();
  mock.timers.tick(299);
  await settle();
  assert.deepEqual(patches, []);
  mock.timers.tick(1);
  await settle();
  assert.equal(patches.length, 1);
  assert.equal(patches[0], "a=ice-ufrag:new1\r\na=ice-pwd:newpassword0123456789abc1\r\n");
  const patch = requests.find((r) => r.method === "PATCH");
  assert.equal(patch.url, "http://relay.test/v1/sessions/abc");
  assert.equal(patch.headers["content-type"], "application/trickle-ice-sdpfrag");
  assert.equal(pc.localDescription.sdp.includes("a=ice-ufrag:new1"), true, "the restart offer is applied");
  assert.equal(pc.remoteDescription.type, "answer");
  assert.match(pc.remoteDescription.sdp, /a=ice-ufrag:relay2\r\na=ice-pwd:relaypassword9876543210\r\n/);
  assert.match(pc.remoteDescription.sdp, /a=ice-lite/);
  assert.equal(pcs.filter((p) => p === sfuPc(pcs)).length, 1);
  assert.equal(requests.filter((r) => r.method === "POST").length, 1, "no new session");
  // ICE comes back on the new credentials: nothing fails later, data goes on through the session.
  pc.iceConnectionState = "connected";
  pc.oniceconnectionstatechange?.();
  mock.timers.tick(5000);
  await settle();
  assert.equal(room.sfuState, "open");
  assert.equal(room.path("p5"), "sfu");
  await room.send("p5", "after the restart");
  assert.deepEqual(sent(pc).at(-1)[1].d, "after the restart");
  // A later outage gets its own restart.
  pc.iceConnectionState = "failed";
  pc.oniceconnectionstatechange?.();
  await settle();
  assert.equal(patches.length, 2);
});

test("an ICE restart that does not bring the path back fails the session after the rung timeout", async () => {
  seq = 0;
  const { server, room, pcs, errors } = await joinWithSfu(
    "p9",
    { forcePath: "sfu" },
    {
      answer: RELAY_ANSWER,
      patch: async () => new Response("a=ice-ufrag:relay2\r\na=ice-pwd:relaypassword9876543210\r\n", { status: 200 }),
    },
  );
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  pc.iceConnectionState = "failed";
  pc.oniceconnectionstatechange?.();
  await settle();
  assert.equal(room.sfuState, "open", "restarting");
  // A second failure report during the same outage does not give up while the restart runs.
  pc.connectionState = "failed";
  pc.onconnectionstatechange?.();
  await settle();
  assert.equal(room.sfuState, "open");
  mock.timers.tick(1000);
  await settle();
  assert.equal(room.sfuState, "failed");
  assert.ok(errors.some((e) => /did not come back within 1000 ms of an ICE restart/.test(e.message)));
  assert.equal(room.path("p5"), "websocket");
});

test("an ICE restart PATCH the relay never answers fails the session", async () => {
  seq = 0;
  const { server, room, pcs, errors } = await joinWithSfu("p9", { forcePath: "sfu" }, { answer: RELAY_ANSWER, patch: never });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  pc.channel("switchboard").receive('p5\n{"sb":"q","e":"sfu"}');
  pc.iceConnectionState = "failed";
  pc.oniceconnectionstatechange?.();
  await settle();
  mock.timers.tick(1000);
  await settle();
  assert.equal(room.sfuState, "failed");
  assert.ok(errors.some((e) => /ICE restart with the relay failed/.test(e.message) && /no answer within 1000 ms/.test(String(e.cause?.message))));
});

test("restartAnswer: the relay's last description under its new credentials, as an answer", async () => {
  const { restartAnswer, sdpAttribute } = await import("../dist/sfu.js");
  const offer = "v=0\r\na=ice-lite\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-ufrag:old\r\na=ice-pwd:oldpassword\r\na=setup:actpass\r\n";
  const answer = restartAnswer(offer, "nu", "newpassword");
  assert.equal(sdpAttribute(answer, "ice-ufrag"), "nu");
  assert.equal(sdpAttribute(answer, "ice-pwd"), "newpassword");
  assert.equal(sdpAttribute(answer, "setup"), "passive");
  assert.equal(sdpAttribute(answer, "ice-lite"), null);
  assert.match(answer, /a=ice-lite\r\n/);
});

test("simulcast: true sends a video track to the relay as the q/h/f layers; audio and simulcast: false as one encoding", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu(
    "p9",
    { forcePath: "sfu", simulcast: true },
    { answer: "v=0 answer\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" },
  );
  // Added before the session exists: the session's first offer carries the layers.
  const camera = { kind: "video", id: "cam" };
  room.addTrack(camera, { id: "stream" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  const video = pc.getTransceivers().find((t) => t.sender.track === camera);
  assert.equal(video.init.direction, "sendonly");
  assert.deepEqual(video.init.streams, [{ id: "stream" }]);
  assert.deepEqual(video.init.sendEncodings, [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
    { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
  ]);
  assert.equal(room.sfuState, "open");
  // Later tracks: audio has one encoding; a video track can opt out, or name its own layers.
  const mic = { kind: "audio", id: "mic" };
  room.addTrack(mic, { id: "stream" });
  const screen = { kind: "video", id: "screen" };
  room.addTrack(screen, { streams: [{ id: "screen-stream" }], simulcast: false });
  const second = { kind: "video", id: "cam2" };
  const layers = [
    { rid: "lo", scaleResolutionDownBy: 2, maxBitrate: 200_000, maxFramerate: 15 },
    { rid: "hi", scaleResolutionDownBy: 1, maxBitrate: 1_000_000 },
  ];
  room.addTrack(second, { simulcast: layers });
  const init = (track) => pc.getTransceivers().find((t) => t.sender.track === track).init;
  assert.equal(init(mic).sendEncodings, undefined);
  assert.equal(init(screen).sendEncodings, undefined);
  assert.deepEqual(init(screen).streams, [{ id: "screen-stream" }]);
  assert.deepEqual(init(second).sendEncodings, layers);
  assert.deepEqual(init(second).streams, []);
});

test("simulcast: true picks the default layers a source of that size can send", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu("p9", { forcePath: "sfu", simulcast: true });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  const camera = (id, width, height) => ({ kind: "video", id, getSettings: () => ({ width, height }) });
  const rids = (track) => pc.getTransceivers().find((t) => t.sender.track === track).init.sendEncodings?.map((e) => e.rid);
  const hd = camera("hd", 1280, 720);
  const vga = camera("vga", 640, 480);
  const small = camera("small", 320, 240);
  const unknown = camera("unknown", undefined, undefined);
  for (const track of [hd, vga, small, unknown]) room.addTrack(track, { id: "stream" });
  assert.deepEqual(rids(hd), ["q", "h", "f"]);
  assert.deepEqual(rids(vga), ["h", "f"], "a VGA camera gets the top two: browsers send two layers at that size");
  assert.equal(rids(small), undefined, "too small for layers: one encoding");
  assert.deepEqual(rids(unknown), ["q", "h", "f"]);
  const h = pc.getTransceivers().find((t) => t.sender.track === vga).init.sendEncodings;
  assert.deepEqual(h, [
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 150_000 },
    { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 500_000 },
  ], "each layer capped by its own size: 320×240 and 640×480");
  const caps = (track) => pc.getTransceivers().find((t) => t.sender.track === track).init.sendEncodings.map((e) => e.maxBitrate);
  assert.deepEqual(caps(hd), [150_000, 500_000, 1_500_000], "720p: 320×180, 640×360, 1280×720");
  const fhd = camera("fhd", 1920, 1080);
  room.addTrack(fhd, { id: "stream" });
  assert.deepEqual(caps(fhd), [500_000, 1_500_000, 3_000_000], "1080p: 480×270, 960×540, 1920×1080");
});

test("simulcast is off by default; invalid layers are an invalid_data error and the track is not added", async () => {
  seq = 0;
  const { server, room, pcs } = await joinWithSfu("p9", { forcePath: "sfu" });
  fromPeer(server, hello);
  const pc = await openSfu(pcs);
  const camera = { kind: "video", id: "cam" };
  room.addTrack(camera, { id: "stream" });
  assert.equal(pc.getTransceivers().find((t) => t.sender.track === camera).init.sendEncodings, undefined);
  const bad = [
    [{ rid: "a", scaleResolutionDownBy: 2, maxBitrate: 1 }, { rid: "a", scaleResolutionDownBy: 1, maxBitrate: 2 }],
    [{ rid: "has space", scaleResolutionDownBy: 2, maxBitrate: 1 }, { rid: "b", scaleResolutionDownBy: 1, maxBitrate: 2 }],
    [{ rid: "a", scaleResolutionDownBy: 0.5, maxBitrate: 1 }, { rid: "b", scaleResolutionDownBy: 1, maxBitrate: 2 }],
    [{ rid: "a", scaleResolutionDownBy: 2, maxBitrate: 0 }, { rid: "b", scaleResolutionDownBy: 1, maxBitrate: 2 }],
  ];
  for (const simulcast of bad) {
    const track = { kind: "video", id: `bad-${bad.indexOf(simulcast)}` };
    assert.throws(() => room.addTrack(track, { simulcast }), (error) => error.code === "invalid_data");
    assert.equal(pc.getTransceivers().find((t) => t.sender.track === track), undefined);
  }
  // One layer is one encoding.
  const single = { kind: "video", id: "single" };
  room.addTrack(single, { simulcast: [{ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 500_000 }] });
  assert.equal(pc.getTransceivers().find((t) => t.sender.track === single).init.sendEncodings, undefined);
});

/** A relay whose ICE-restart PATCH answers new credentials; its answers to control offers echo the m-lines. */
async function restartableSession() {
  const patches = [];
  const session = await joinWithSfu(
    "p9",
    { forcePath: "sfu" },
    {
      answer: RELAY_ANSWER,
      patch: async (init) => {
        patches.push(init.body);
        return new Response("a=ice-ufrag:relay2\r\na=ice-pwd:relaypassword9876543210\r\n", { status: 200 });
      },
    },
  );
  fromPeer(session.server, hello);
  const pc = await openSfu(session.pcs);
  pc.iceConnectionState = "connected";
  pc.oniceconnectionstatechange?.();
  session.pcs.length = 0;
  session.pcs.push(pc);
  /** The relay answers the SDK's last control offer with as many m-lines as it has. */
  const answerControl = async () => {
    const offer = JSON.parse(pc.channel("switchboard-control").sent.at(-1));
    assert.equal(offer.type, "offer");
    const m = offer.sdp.split("\r\n").filter((l) => l.startsWith("m=")).join("\r\n");
    pc.channel("switchboard-control").receive(JSON.stringify({ type: "answer", sdp: `${RELAY_ANSWER}${m}\r\n` }));
    await settle();
  };
  return { ...session, pc, patches, answerControl };
}

test("a track added while the relay path is down waits for the ICE restart and is offered once ICE is back", async () => {
  seq = 0;
  const { room, pc, patches, errors, answerControl } = await restartableSession();
  pc.iceConnectionState = "disconnected";
  pc.oniceconnectionstatechange?.();
  // The camera starts while the SDK waits iceGraceMs before restarting ICE.
  const camera = { kind: "video", id: "cam" };
  room.addTrack(camera, { id: "stream" });
  if (pc.getTransceivers().length > 0) pc.onnegotiationneeded?.(); // a browser fires it for a new transceiver
  await settle();
  mock.timers.tick(300);
  await settle();
  assert.equal(patches.length, 1, "the ICE restart was made");
  assert.equal(pc.localDescription.sdp.includes("m=video"), false, "the restart offer holds only what the relay knows");
  assert.equal(room.sfuState, "open", "the session is kept");
  assert.deepEqual(errors.map((e) => e.message), []);
  assert.equal(pc.getTransceivers().length, 0, "the track waits for the connection");
  // ICE is back on the new credentials: the track is attached and offered over the control channel.
  pc.iceConnectionState = "connected";
  pc.oniceconnectionstatechange?.();
  pc.onnegotiationneeded?.();
  await settle();
  const video = pc.getTransceivers().find((t) => t.sender.track === camera);
  assert.ok(video, "the track is attached");
  await answerControl();
  assert.equal(pc.signalingState, "stable");
  assert.notEqual(video.mid, null, "the relay has the track's m-section");
  mock.timers.tick(5000);
  await settle();
  assert.equal(room.sfuState, "open");
  assert.deepEqual(errors.map((e) => e.message), []);
});

test("a track whose control offer is out when ICE fails is offered again after the restart, not in it", async () => {
  seq = 0;
  const { room, pc, patches, errors, answerControl } = await restartableSession();
  const camera = { kind: "video", id: "cam" };
  room.addTrack(camera, { id: "stream" });
  pc.onnegotiationneeded?.();
  await settle();
  const control = pc.channel("switchboard-control");
  assert.deepEqual(control.sent.map((t) => JSON.parse(t).type), ["offer"]);
  assert.equal(pc.signalingState, "have-local-offer");
  // The path breaks before the relay's answer arrives: the SDK restarts ICE at once.
  pc.iceConnectionState = "failed";
  pc.oniceconnectionstatechange?.();
  await settle();
  assert.equal(patches.length, 1);
  assert.equal(pc.localDescription.sdp.includes("m=video"), false, "the withdrawn track is not in the restart offer");
  assert.equal(room.sfuState, "open");
  assert.deepEqual(errors.map((e) => e.message), []);
  pc.iceConnectionState = "connected";
  pc.oniceconnectionstatechange?.();
  pc.onnegotiationneeded?.();
  await settle();
  assert.equal(JSON.parse(control.sent.at(-1)).type, "offer");
  assert.match(JSON.parse(control.sent.at(-1)).sdp, /m=video/, "offered again once the path is back");
  const live = pc.getTransceivers().filter((t) => t.sender.track === camera && t.currentDirection !== "stopped");
  assert.equal(live.length, 1, "on one transceiver");
  await answerControl();
  assert.notEqual(live[0].mid, null);
  mock.timers.tick(5000);
  await settle();
  assert.equal(room.sfuState, "open");
  assert.deepEqual(errors.map((e) => e.message), []);
});
