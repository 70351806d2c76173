// Headless Chromium as a TURN client of the Switchboard relay: two pages,
// iceTransportPolicy "relay", only our server in iceServers, a DataChannel
// between them. Run by tests/interop/run.sh, which starts the relay on
// 127.0.0.1 inside a loopback-only network namespace.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../../package.json', import.meta.url));
const { chromium } = require('playwright-core');

const SERVER = process.env.RELAY_ADDR ?? '127.0.0.1:3478';
const SECRET = process.env.RELAY_SECRET;
assert.ok(SECRET, 'RELAY_SECRET must be set (tests/interop/run.sh sets it)');

const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns', '--disable-quic',
  '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** TURN REST credentials, as the Worker issues them. */
function credentials(user, secret = SECRET) {
  const username = `${Math.floor(Date.now() / 1000) + 3600}:${user}`;
  return { username, credential: createHmac('sha1', secret).update(username).digest('base64') };
}

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: FLAGS });
});
after(async () => { await browser?.close(); });

/** A blank page with a relay-only RTCPeerConnection; helpers live on window. */
async function peerPage(iceServer) {
  const page = await browser.newPage();
  await page.setContent('<!doctype html><title>turn</title>');
  await page.evaluate((iceServer) => {
    window.errors = [];
    window.received = [];
    window.pc = new RTCPeerConnection({ iceServers: [iceServer], iceTransportPolicy: 'relay' });
    window.pc.addEventListener('icecandidateerror', (e) => window.errors.push(e.errorCode));
    window.gathered = () => new Promise((resolve) => {
      if (window.pc.iceGatheringState === 'complete') return resolve();
      window.pc.addEventListener('icegatheringstatechange', () => {
        if (window.pc.iceGatheringState === 'complete') resolve();
      });
    });
    window.wire = (dc) => {
      window.dc = dc;
      dc.onmessage = (e) => {
        window.received.push(e.data);
        if (String(e.data).startsWith('ping')) dc.send(`pong:${e.data}`);
      };
    };
    window.pc.ondatachannel = (e) => window.wire(e.channel);
    window.selectedLocal = async () => {
      const stats = await window.pc.getStats();
      const byId = {};
      let pairId;
      stats.forEach((r) => {
        byId[r.id] = r;
        if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
      });
      const local = byId[byId[pairId]?.localCandidateId];
      return local ? { type: local.candidateType, relayProtocol: local.relayProtocol } : null;
    };
  }, iceServer);
  return page;
}

async function connect(transport, user) {
  const iceServer = { urls: [`turn:${SERVER}?transport=${transport}`], ...credentials(user) };
  const a = await peerPage(iceServer);
  const b = await peerPage(iceServer);
  const offer = await a.evaluate(async () => {
    window.wire(window.pc.createDataChannel('interop'));
    await window.pc.setLocalDescription(await window.pc.createOffer());
    await window.gathered();
    return window.pc.localDescription.toJSON();
  });
  const answer = await b.evaluate(async (offer) => {
    await window.pc.setRemoteDescription(offer);
    await window.pc.setLocalDescription(await window.pc.createAnswer());
    await window.gathered();
    return window.pc.localDescription.toJSON();
  }, offer);
  assert.match(offer.sdp, / typ relay /, 'the offer carries relay candidates');
  assert.doesNotMatch(offer.sdp, / typ host /, 'relay-only gathers no host candidates');
  await a.evaluate((answer) => window.pc.setRemoteDescription(answer), answer);
  return { a, b };
}

for (const transport of ['udp', 'tcp']) {
  test(`DataChannel between two pages through the relay (client transport ${transport})`, async () => {
    const { a, b } = await connect(transport, `chromium-${transport}`);
    await a.waitForFunction(() => window.dc?.readyState === 'open', null, { timeout: 20_000 });
    await a.evaluate(() => window.dc.send('ping 1'));
    await a.waitForFunction(() => window.received.includes('pong:ping 1'), null, { timeout: 10_000 });
    assert.deepEqual(await b.evaluate(() => window.received), ['ping 1']);
    for (const page of [a, b]) {
      const local = await page.evaluate(() => window.selectedLocal());
      assert.equal(local?.type, 'relay', 'the selected pair uses a relayed candidate');
      assert.equal(local?.relayProtocol, transport);
    }
    await a.close();
    await b.close();
  });
}

test('a wrong TURN credential is refused with 401 and yields no relay candidate', async () => {
  const bad = { urls: [`turn:${SERVER}?transport=udp`], ...credentials('mallory', 'not-the-secret') };
  const page = await peerPage(bad);
  const sdp = await page.evaluate(async () => {
    window.pc.createDataChannel('x');
    await window.pc.setLocalDescription(await window.pc.createOffer());
    await window.gathered();
    return window.pc.localDescription.sdp;
  });
  assert.doesNotMatch(sdp, / typ relay /);
  assert.ok((await page.evaluate(() => window.errors)).includes(401), 'icecandidateerror 401');
  await page.close();
});
