// The per-pair data stream: numbering, in-order delivery, dedup, cumulative
// acks, retransmission and a restarted remote instance.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ReceiveStream, SendStream, parseEnvelope } from "../dist/stream.js";

function pair() {
  return { tx: new SendStream("L"), rx: new ReceiveStream() };
}

test("messages are numbered from 1 per stream and delivered in order", () => {
  const { tx, rx } = pair();
  const sent = ["a", "b", "c"].map((d) => tx.push(d, 1));
  assert.deepEqual(sent.map((e) => [e.s, e.n]), [["L.1", 1], ["L.1", 2], ["L.1", 3]]);
  const out = sent.flatMap((e) => rx.onData(e).deliver);
  assert.deepEqual(out, ["a", "b", "c"]);
  assert.deepEqual(rx.ack(), { sb: "a", s: "L.1", n: 3 });
});

test("a message that overtakes an earlier one waits for it; duplicates are dropped", () => {
  const { tx, rx } = pair();
  const [m1, m2, m3] = [1, 2, 3].map((d) => tx.push(d, 1));
  assert.deepEqual(rx.onData(m2).deliver, []);
  assert.deepEqual(rx.onData(m3).deliver, []);
  assert.equal(rx.onData(m3).duplicate, true);
  assert.deepEqual(rx.onData(m1).deliver, [1, 2, 3]);
  assert.equal(rx.onData(m1).duplicate, true);
  assert.equal(rx.onData(m2).duplicate, true);
  assert.deepEqual(rx.ack(), { sb: "a", s: "L.1", n: 3 });
});

test("acks release the retransmission buffer; a retransmission after a path change is deduplicated", () => {
  const { tx, rx } = pair();
  const all = Array.from({ length: 10 }, (_, i) => tx.push(i + 1, 1));
  // The old path delivered 1..6 and died with 7..10 in flight; only 1..4 were acknowledged.
  const got = all.slice(0, 6).flatMap((e) => rx.onData(e).deliver);
  assert.equal(tx.onAck({ sb: "a", s: "L.1", n: 4 }), 4);
  assert.equal(tx.pending, 6);
  // The new path gets every unacknowledged message again.
  const again = tx.retransmission();
  assert.deepEqual(again.map((e) => e.n), [5, 6, 7, 8, 9, 10]);
  got.push(...again.flatMap((e) => rx.onData(e).deliver));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  tx.onAck(rx.ack());
  assert.equal(tx.pending, 0);
});

test("an ack of another stream releases nothing", () => {
  const { tx } = pair();
  tx.push("x", 1);
  assert.equal(tx.onAck({ sb: "a", s: "other.1", n: 5 }), 0);
  assert.equal(tx.pending, 1);
});

test("the retransmission buffer is bounded in messages and bytes", () => {
  const tx = new SendStream("L", { maxUnacked: 2, maxUnackedBytes: 10, maxReorder: 8 });
  assert.ok(tx.fits(5));
  tx.push("a", 5);
  assert.ok(!tx.fits(6), "bytes bound");
  tx.push("b", 4);
  assert.ok(!tx.fits(1), "count bound");
});

test("the reorder buffer is bounded: a message too far ahead is dropped unacknowledged and accepted when resent", () => {
  const tx = new SendStream("L");
  const rx = new ReceiveStream({ maxUnacked: 100, maxUnackedBytes: 1e6, maxReorder: 3 });
  const m = Array.from({ length: 5 }, (_, i) => tx.push(i + 1, 1));
  assert.deepEqual(rx.onData(m[4]).deliver, []);
  assert.equal(rx.onData(m[4]).duplicate, false, "not kept, so not a duplicate either");
  assert.deepEqual(m.slice(0, 4).flatMap((e) => rx.onData(e).deliver), [1, 2, 3, 4]);
  assert.deepEqual(rx.onData(m[4]).deliver, [5]);
});

test("a restarted remote instance gets every unacknowledged message, renumbered, exactly once", () => {
  const tx = new SendStream("L");
  const old = new ReceiveStream();
  const m = Array.from({ length: 5 }, (_, i) => tx.push(i + 1, 1));
  m.slice(0, 3).forEach((e) => old.onData(e));
  tx.onAck(old.ack());
  // The remote page rebuilt its side: a fresh receiver sees message 4 of the old generation first.
  const fresh = new ReceiveStream();
  assert.deepEqual(fresh.onData(m[3]).deliver, [], "cannot deliver 4 without 1..3");
  const renumbered = tx.restart();
  assert.deepEqual(renumbered.map((e) => [e.s, e.n, e.d]), [["L.2", 1, 4], ["L.2", 2, 5]]);
  assert.deepEqual(renumbered.flatMap((e) => fresh.onData(e).deliver), [4, 5]);
  // A late message of the retired generation is ignored.
  assert.equal(fresh.onData(m[4]).duplicate, true);
  const next = tx.push(6, 1);
  assert.deepEqual([next.s, next.n], ["L.2", 3]);
  assert.deepEqual(fresh.onData(next).deliver, [6]);
});

test("a new sender link starts a new receiving stream", () => {
  const rx = new ReceiveStream();
  const a = new SendStream("A");
  rx.onData(a.push("a1", 1));
  const b = new SendStream("B");
  assert.deepEqual(rx.onData(b.push("b1", 1)).deliver, ["b1"]);
  assert.equal(rx.onData(a.push("a2", 1)).duplicate, true, "the replaced instance is retired");
});

test("parseEnvelope accepts data and acks and refuses anything else", () => {
  assert.deepEqual(parseEnvelope({ sb: "d", s: "L.1", n: 1, d: { x: 1 } }), { sb: "d", s: "L.1", n: 1, d: { x: 1 } });
  assert.deepEqual(parseEnvelope({ sb: "a", s: "L.1", n: 0 }), { sb: "a", s: "L.1", n: 0 });
  assert.equal(parseEnvelope({ sb: "d", s: "L.1", n: 0, d: 1 }), null);
  assert.equal(parseEnvelope({ sb: "d", s: "L.1", n: 1, d: null }), null);
  assert.equal(parseEnvelope({ sb: "d", s: "L.1", n: 1.5, d: 1 }), null);
  assert.equal(parseEnvelope({ text: "hi" }), null);
  assert.equal(parseEnvelope("hi"), null);
});
