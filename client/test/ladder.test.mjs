import { test } from "node:test";
import assert from "node:assert/strict";
import { availablePaths, lowerPath, rtcConfiguration, startPath, PATHS } from "../dist/ladder.js";

const stun = { urls: ["stun:127.0.0.1:3478"] };
const turn = {
  urls: ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"],
  username: "1795620000:abc",
  credential: "secret=",
};

test("the ladder is p2p, turn, sfu, websocket, best first", () => {
  assert.deepEqual(PATHS, ["p2p", "turn", "sfu", "websocket"]);
});

test("p2p uses STUN entries only; turn uses TURN entries only with the relay policy", () => {
  assert.deepEqual(rtcConfiguration("p2p", [stun, turn]), { iceServers: [stun], iceTransportPolicy: "all" });
  assert.deepEqual(rtcConfiguration("turn", [stun, turn]), { iceServers: [turn], iceTransportPolicy: "relay" });
  assert.equal(rtcConfiguration("websocket", [stun, turn]), null);
});

test("a mixed entry is split by URL scheme", () => {
  const mixed = { urls: ["stun:a:1", "turn:a:1"], username: "1:x", credential: "c" };
  assert.deepEqual(rtcConfiguration("p2p", [mixed]).iceServers[0].urls, ["stun:a:1"]);
  assert.deepEqual(rtcConfiguration("turn", [mixed]).iceServers[0].urls, ["turn:a:1"]);
});

test("turn is available only with TURN credentials; the SFU rung is not offered by any relay yet", () => {
  assert.deepEqual(availablePaths([stun, turn]), ["p2p", "turn", "websocket"]);
  assert.deepEqual(availablePaths([stun]), ["p2p", "websocket"]);
  assert.deepEqual(availablePaths([{ urls: "turn:x:1" }]), ["p2p", "websocket"]);
  assert.deepEqual(availablePaths([stun, turn], false), ["websocket"]);
});

test("start rung: the best available, or the worse of the two forced rungs", () => {
  const all = ["p2p", "turn", "websocket"];
  assert.equal(startPath(all, null, null), "p2p");
  assert.equal(startPath(all, "turn", null), "turn");
  assert.equal(startPath(all, null, "websocket"), "websocket");
  assert.equal(startPath(all, "websocket", "turn"), "websocket");
  assert.equal(startPath(["p2p", "websocket"], "turn", null), "websocket", "forced TURN without TURN servers falls below");
});

test("moving down skips unavailable rungs and stops at the bottom", () => {
  assert.equal(lowerPath(["p2p", "turn", "websocket"], "p2p"), "turn");
  assert.equal(lowerPath(["p2p", "turn", "websocket"], "turn"), "websocket");
  assert.equal(lowerPath(["p2p", "websocket"], "p2p"), "websocket");
  assert.equal(lowerPath(["p2p", "websocket"], "websocket"), null);
});
