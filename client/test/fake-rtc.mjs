// Fakes shared by the SDK's RTC unit tests: an RTCPeerConnection and its DataChannels that the
// test opens and feeds by hand, and a way to let queued promise callbacks run.

/** Lets the promise callbacks queued so far (and those they queue) run. */
export const settle = async () => {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
};

/** An RTCDataChannel the test drives: `open()`, `receive(text)`; what the SDK sent is in `sent`. */
export class FakeChannel {
  constructor(label, init = {}) {
    this.label = label;
    this.protocol = init.protocol ?? "";
    this.readyState = "connecting";
    this.bufferedAmount = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onbufferedamountlow = null;
  }
  send(text) {
    if (this.readyState !== "open") throw new Error("InvalidStateError");
    this.sent.push(text);
  }
  close() {
    this.readyState = "closed";
  }
  open() {
    this.readyState = "open";
    this.onopen?.();
  }
  receive(text) {
    this.onmessage?.({ data: text });
  }
}

/** An RTCPeerConnection the test drives; every one made is pushed to `registry`. */
export class FakePc {
  constructor(config, registry) {
    this.config = config;
    this.connectionState = "new";
    this.iceConnectionState = "new";
    this.signalingState = "stable";
    this.restarts = 0;
    this.iceGatheringState = "complete";
    this.channels = [];
    this.closed = false;
    this.localDescription = null;
    this.transceivers = [];
    registry.push(this);
  }
  createDataChannel(label, init) {
    const channel = new FakeChannel(label, init);
    this.channels.push(channel);
    return channel;
  }
  channel(label) {
    return this.channels.find((c) => c.label === label);
  }
  addTransceiver(kind, init) {
    const t = { direction: init?.direction, receiver: { track: { kind } }, sender: { track: null, replaceTrack: async () => {} } };
    this.transceivers.push(t);
    return t;
  }
  getTransceivers() {
    return this.transceivers;
  }
  async createOffer(options) {
    if (!options?.iceRestart) return { type: "offer", sdp: "v=0 offer" };
    this.restarts += 1;
    return { type: "offer", sdp: `v=0 restart\r\na=ice-ufrag:new${this.restarts}\r\na=ice-pwd:newpassword0123456789abc${this.restarts}\r\n` };
  }
  async setLocalDescription(description) {
    this.localDescription = { ...(description ?? { type: "offer", sdp: "v=0 offer" }), toJSON() { return this; } };
  }
  async setRemoteDescription(description) {
    this.remoteDescription = description;
  }
  addEventListener() {}
  removeEventListener() {}
  getConfiguration() {
    return this.config;
  }
  setConfiguration(config) {
    this.config = config;
  }
  restartIce() {}
  async getStats() {
    return new Map();
  }
  close() {
    this.closed = true;
    this.connectionState = "closed";
  }
}
