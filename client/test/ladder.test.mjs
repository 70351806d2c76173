import { test } from "node:test";
import assert from "node:assert/strict";
import { availablePaths, lowerRung, rtcConfiguration, startTarget, upgradeTarget, PATHS, RUNGS } from "../dist/ladder.js";

const stun = { urls: ["stun:127.0.0.1:3478"] };
const turn = {
  urls: ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"],
  username: "1795620000:abc",
  credential: "secret=",
};

test("the ladder is rtc, sfu, websocket; paths are p2p, turn, sfu, websocket", () => {
  assert.deepEqual(RUNGS, ["rtc", "sfu", "websocket"]);
  assert.deepEqual(PATHS, ["p2p", "turn", "sfu", "websocket"]);
});

test("auto puts STUN and TURN in one ICE agent; p2p is STUN only; turn is TURN only with the relay policy", () => {
  assert.deepEqual(rtcConfiguration("auto", [stun, turn]), { iceServers: [stun, turn], iceTransportPolicy: "all" });
  assert.deepEqual(rtcConfiguration("p2p", [stun, turn]), { iceServers: [stun], iceTransportPolicy: "all" });
  assert.deepEqual(rtcConfiguration("turn", [stun, turn]), { iceServers: [turn], iceTransportPolicy: "relay" });
  assert.equal(rtcConfiguration("turn", [stun]), null);
});

test("a mixed entry is split by URL scheme; TURN without credentials is left out", () => {
  const mixed = { urls: ["stun:a:1", "turn:a:1"], username: "1:x", credential: "c" };
  assert.deepEqual(rtcConfiguration("p2p", [mixed]).iceServers[0].urls, ["stun:a:1"]);
  assert.deepEqual(rtcConfiguration("turn", [mixed]).iceServers[0].urls, ["turn:a:1"]);
  assert.deepEqual(rtcConfiguration("auto", [stun, { urls: "turn:x:1" }]).iceServers, [stun]);
});

test("turn is available only with TURN credentials; the SFU rung is not offered by any relay yet", () => {
  assert.deepEqual(availablePaths([stun, turn]), ["p2p", "turn", "websocket"]);
  assert.deepEqual(availablePaths([stun]), ["p2p", "websocket"]);
  assert.deepEqual(availablePaths([{ urls: "turn:x:1" }]), ["p2p", "websocket"]);
  assert.deepEqual(availablePaths([stun, turn], false), ["websocket"]);
});

test("start: rtc in auto mode, or the worse of the two forced paths", () => {
  const ice = [stun, turn];
  assert.deepEqual(startTarget(ice, true, null, null), { rung: "rtc", mode: "auto" });
  assert.deepEqual(startTarget(ice, true, "p2p", null), { rung: "rtc", mode: "p2p" });
  assert.deepEqual(startTarget(ice, true, "turn", null), { rung: "rtc", mode: "turn" });
  assert.deepEqual(startTarget(ice, true, "p2p", "turn"), { rung: "rtc", mode: "turn" });
  assert.deepEqual(startTarget(ice, true, null, "websocket"), { rung: "websocket" });
  assert.deepEqual(startTarget([stun], true, "turn", null), { rung: "websocket" }, "forced TURN without TURN servers falls below");
  assert.deepEqual(startTarget(ice, false, null, null), { rung: "websocket" });
  assert.deepEqual(startTarget(ice, true, "sfu", null), { rung: "websocket" }, "without welcome.sfu there is no SFU rung");
  assert.deepEqual(startTarget(ice, true, "sfu", null, true), { rung: "sfu" });
  assert.deepEqual(startTarget(ice, true, "turn", "sfu", true), { rung: "sfu" }, "the worse forced path wins");
  assert.deepEqual(startTarget(ice, true, null, null, true), { rung: "rtc", mode: "auto" }, "unforced starts on rtc");
  assert.deepEqual(startTarget(ice, false, "sfu", null, true), { rung: "websocket" }, "the SFU rung needs RTCPeerConnection");
  assert.deepEqual(availablePaths(ice, true, true), ["p2p", "turn", "sfu", "websocket"]);
});

test("below rtc comes sfu when the relay offers it, else websocket", () => {
  assert.equal(lowerRung("rtc"), "websocket");
  assert.equal(lowerRung("rtc", true), "sfu");
  assert.equal(lowerRung("sfu", true), "websocket");
  assert.equal(lowerRung("websocket"), null);
});

test("upgrade probes: from turn a direct-only connection, from websocket the auto rtc rung, none from p2p", () => {
  assert.deepEqual(upgradeTarget("turn", true), { rung: "rtc", mode: "p2p" });
  assert.deepEqual(upgradeTarget("websocket", true), { rung: "rtc", mode: "auto" });
  assert.equal(upgradeTarget("p2p", true), null);
  assert.equal(upgradeTarget("websocket", false), null);
});
