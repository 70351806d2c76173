// Headless Chromium <-> relay SFU <-> headless Chromium, without the SDK: each page POSTs its
// offer to the relay's /v1/sessions (WHIP-style, cross-origin, bearer token minted here with the
// shared secret), then DataChannel messages and a fake-camera video travel through the relay.
// Run by tests/interop/run.sh, which starts the relay with --sfu-listen inside a loopback-only
// network namespace.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../package.json', import.meta.url));
const { chromium } = require('playwright-core');

const API = process.env.SFU_API ?? 'http://127.0.0.1:9478';
const SECRET = process.env.RELAY_SECRET;
assert.ok(SECRET, 'RELAY_SECRET must be set (tests/interop/run.sh sets it)');

const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** The relay session token (proto/src/sfu_token.rs), as the Worker signs it. */
function sfuToken(room, peerId, ttlS = 600) {
  const b64 = (b) => Buffer.from(b).toString('base64url');
  const signed = `sfu1.${b64(JSON.stringify({ room, peer_id: peerId, exp: Math.floor(Date.now() / 1000) + ttlS }))}`;
  return `${signed}.${createHmac('sha256', SECRET).update(signed).digest('base64url')}`;
}

async function sessions() {
  const text = await (await fetch(`${API}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('switchboard_relay_sfu_sessions '));
  return Number(line?.split(' ')[1]);
}

async function waitFor(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: FLAGS });
});
after(async () => { await browser?.close(); });

/**
 * A page with one RTCPeerConnection to the relay: a `chat` channel, the reserved
 * `switchboard-control` channel (answers the relay's renegotiation offers), and the fake camera
 * when `camera` is set. Resolves once the chat channel is open.
 */
async function join(room, peerId, { camera = false } = {}) {
  const page = await browser.newPage();
  // getUserMedia needs a secure context: a page on http://127.0.0.1 is one (the relay's own
  // /healthz will do); the DataChannel pages stay on about:blank, a foreign origin for CORS.
  if (camera) await page.goto(`${API}/healthz`);
  else await page.setContent('<!doctype html><title>sfu</title>');
  const status = await page.evaluate(async ({ api, token, camera }) => {
    window.received = [];
    const pc = new RTCPeerConnection();
    window.pc = pc;
    const chat = pc.createDataChannel('chat');
    chat.binaryType = 'arraybuffer';
    chat.onmessage = (e) => window.received.push(e.data);
    window.chat = chat;
    const control = pc.createDataChannel('switchboard-control');
    control.onmessage = async (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type !== 'offer') return;
      await pc.setRemoteDescription(msg);
      await pc.setLocalDescription(await pc.createAnswer());
      control.send(JSON.stringify({ type: 'answer', sdp: pc.localDescription.sdp }));
    };
    pc.ontrack = (e) => { window.remoteStream = e.streams[0]?.id ?? ''; };
    if (camera) {
      const media = await navigator.mediaDevices.getUserMedia({ video: true });
      media.getTracks().forEach((t) => pc.addTrack(t, media));
    }
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
    });
    const res = await fetch(`${api}/v1/sessions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) return { status: res.status, body: await res.text() };
    window.location_ = res.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    await new Promise((resolve) => { chat.readyState === 'open' ? resolve() : (chat.onopen = resolve); });
    return { status: 201 };
  }, { api: API, token: sfuToken(room, peerId), camera });
  assert.equal(status.status, 201, JSON.stringify(status));
  return page;
}

test('DataChannel text and binary (incl. 256 KiB) arrive intact and in order through the relay', async () => {
  const a = await join('dc-room', 'alice');
  const b = await join('dc-room', 'bob');
  await a.evaluate(() => {
    const big = new Uint8Array(256 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) % 251;
    window.chat.send('first');
    window.chat.send(new Uint8Array([0, 1, 2, 255]).buffer);
    window.chat.send(big.buffer);
    for (let i = 0; i < 50; i++) window.chat.send(`n${i}`);
    window.chat.send('last');
  });
  const got = await waitFor('54 messages on bob', () => b.evaluate(() => {
    if (window.received.length < 54) return null;
    return window.received.map((m) => {
      if (typeof m === 'string') return m;
      const u = new Uint8Array(m);
      if (u.length === 4) return `bin:${Array.from(u).join(',')}`;
      let ok = u.length === 256 * 1024;
      for (let i = 0; ok && i < u.length; i++) ok = u[i] === (i * 7) % 251;
      return ok ? 'big-intact' : `big-corrupt:${u.length}`;
    });
  }));
  const want = ['first', 'bin:0,1,2,255', 'big-intact', ...Array.from({ length: 50 }, (_, i) => `n${i}`), 'last'];
  assert.deepEqual(got, want);
  // The sender does not get its own messages back.
  assert.equal(await a.evaluate(() => window.received.length), 0);
  await a.close();
  await b.close();
});

test('a fake-camera video from page A is decoded on page B, and leaving frees the sessions', async () => {
  const a = await join('video-room', 'alice', { camera: true });
  const b = await join('video-room', 'bob');
  // The relay renegotiates over the control channel; the stream id is the publisher's peer id.
  assert.equal(await waitFor('a remote track on bob', () => b.evaluate(() => window.remoteStream)), 'alice');
  const frames = await waitFor('frames decoded on bob', () => b.evaluate(async () => {
    let n = 0;
    (await window.pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'video') n = r.framesDecoded ?? 0;
    });
    return n > 0 ? n : null;
  }));
  assert.ok(frames > 0);
  assert.equal(await sessions() >= 2, true);
  // Leaving: close the connections and the pages; the relay drops both sessions.
  await a.evaluate(() => window.pc.close());
  await b.evaluate(() => window.pc.close());
  await a.close();
  await b.close();
  await waitFor('session count 0', async () => (await sessions()) === 0, 40000);
});

test('with UDP to the SFU blocked, pages connect over ICE-TCP and still exchange messages', async () => {
  const { execFileSync } = await import('node:child_process');
  const port = new URL(`udp://${process.env.SFU_UDP ?? '127.0.0.1:3479'}`).port;
  // Only inside the test's own network namespace (run.sh), never on the host.
  assert.equal(process.env.SWITCHBOARD_IN_NETNS, '1', 'run through tests/interop/run.sh');
  const rule = ['INPUT', '-p', 'udp', '--dport', port, '-j', 'DROP'];
  execFileSync('iptables', ['-I', ...rule]);
  try {
    const a = await join('tcp-room', 'alice');
    const b = await join('tcp-room', 'bob');
    const protocols = await Promise.all([a, b].map((p) => p.evaluate(async () => {
      const stats = await window.pc.getStats();
      const byId = {};
      let pairId;
      stats.forEach((r) => {
        byId[r.id] = r;
        if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      });
      return byId[byId[pairId]?.remoteCandidateId]?.protocol;
    })));
    assert.deepEqual(protocols, ['tcp', 'tcp']);
    await a.evaluate(() => window.chat.send('over tcp'));
    assert.equal(await waitFor('the message on bob', () => b.evaluate(() => window.received[0])), 'over tcp');
    await a.close();
    await b.close();
  } finally {
    execFileSync('iptables', ['-D', ...rule]);
  }
});
