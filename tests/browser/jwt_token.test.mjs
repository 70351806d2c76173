// A JWT that expires mid-session. With a token function the SDK asks for a
// fresh token before every reconnect, so the resume succeeds. With a fixed
// token the resume is refused (HTTP 401, which a browser WebSocket cannot
// see; the SDK checks `/v1/ice-servers` with the token): the session ends
// with a typed `unauthorized` error and `signaling-state: closed`, without a
// reconnect loop.
import { test } from "node:test";
import assert from "node:assert/strict";
import { openDemo, uniqueRoom, workerAndBrowser } from "./harness.mjs";

const SECRET = "browser-test-jwt-secret";
const env = workerAndBrowser({ worker: { port: 18830, inspectorPort: 19830, vars: { JWT_SECRET: SECRET } } });
const LIFETIME_S = 3;

/** Joins `room` from a fresh page with a token source built in the page: "function" or "fixed". */
async function joinWithToken(t, room, kind) {
  const page = await openDemo(env.browser, env.dev.url, { room, join: "0" });
  t.after(() => page.context().close());
  await page.evaluate(
    async ([roomName, secret, lifetime, tokenKind]) => {
      const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
      const text = (s) => new TextEncoder().encode(s);
      const key = await crypto.subtle.importKey("raw", text(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      window.__tokensMinted = 0;
      const mint = async () => {
        window.__tokensMinted += 1;
        const head = b64url(text(JSON.stringify({ alg: "HS256", typ: "JWT" })));
        const body = b64url(text(JSON.stringify({ room: roomName, sub: "ann", exp: Math.floor(Date.now() / 1000) + lifetime })));
        const signature = new Uint8Array(await crypto.subtle.sign("HMAC", key, text(`${head}.${body}`)));
        return `${head}.${body}.${b64url(signature)}`;
      };
      const token = tokenKind === "function" ? mint : await mint();
      const { Switchboard } = window.SwitchboardSDK;
      const room = await Switchboard.join(location.origin, roomName, { token, forcePath: "websocket" });
      window.__room = room;
      window.__states = [];
      window.__errors = [];
      room.on("signaling-state", (event) => window.__states.push(event));
      room.on("error", (error) => window.__errors.push({ code: error.code, source: error.source }));
    },
    [room, SECRET, LIFETIME_S, kind],
  );
  return page;
}

/** Waits until the token has expired on the Worker's clock, then drops the signaling socket. */
async function dropAfterExpiry(page) {
  await new Promise((resolve) => setTimeout(resolve, (LIFETIME_S + 1.5) * 1000));
  await page.evaluate(() => window.__room.dropConnection());
}

test("JWT expires mid-session: with a token function the resume succeeds", async (t) => {
  const page = await joinWithToken(t, uniqueRoom("jwtfn"), "function");
  const peerId = await page.evaluate(() => window.__room.peerId);
  await dropAfterExpiry(page);
  await page.waitForFunction(() => window.__states.some((s) => s.state === "open" && s.resumed === true), null, { timeout: 20_000 });
  assert.equal(await page.evaluate(() => window.__room.peerId), peerId, "the same peer, resumed");
  assert.ok((await page.evaluate(() => window.__tokensMinted)) >= 2, "a fresh token was asked for before the reconnect");
  assert.deepEqual(await page.evaluate(() => window.__errors), []);
});

test("JWT expires mid-session: a fixed token ends with unauthorized and closed, no reconnect loop", async (t) => {
  const page = await joinWithToken(t, uniqueRoom("jwtfixed"), "fixed");
  await dropAfterExpiry(page);
  await page.waitForFunction(() => window.__states.some((s) => s.state === "closed"), null, { timeout: 20_000 });
  assert.deepEqual(await page.evaluate(() => window.__errors.map((e) => e.code)), ["unauthorized"]);
  const attempts = () => page.evaluate(() => window.__states.filter((s) => s.state === "reconnecting").length);
  const before = await attempts();
  assert.ok(before >= 1 && before <= 2, `reconnect attempts before giving up: ${before}`);
  // Closed for good: nothing happens any more.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.equal(await attempts(), before);
  assert.equal(await page.evaluate(() => window.__room.signalingState), "closed");
});
