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

/** The `m=` lines of an SDP. */
export const mLines = (sdp) => (sdp ?? "").split(/\r?\n/).filter((line) => line.startsWith("m="));

/**
 * An RTCPeerConnection the test drives; every one made is pushed to `registry`. It keeps the
 * signaling state and the transceivers' m-sections as a browser does (JSEP, RFC 8829): an offer
 * has one `m=` line per transceiver (a stopped one without a mid is left out), applying it gives
 * those transceivers a mid that a rollback takes back, and an answer with fewer `m=` lines than
 * the offer is rejected, as Chromium rejects it.
 */
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
    this.nextMid = 0;
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
  addTransceiver(trackOrKind, init) {
    const kind = typeof trackOrKind === "string" ? trackOrKind : trackOrKind.kind;
    const t = {
      direction: init?.direction,
      init,
      mid: null,
      provisional: false,
      currentDirection: null,
      receiver: { track: { kind } },
      sender: { track: typeof trackOrKind === "string" ? null : trackOrKind, replaceTrack: async () => {} },
      stop() {
        t.direction = t.currentDirection = "stopped";
      },
    };
    this.transceivers.push(t);
    return t;
  }
  /** The transceivers an offer made now describes. */
  offered() {
    return this.transceivers.filter((t) => t.mid !== null || t.currentDirection !== "stopped");
  }
  mSections() {
    return this.offered().map((t) => `\r\nm=${t.receiver.track.kind} 9 UDP/TLS/RTP/SAVPF 96`).join("");
  }
  getTransceivers() {
    return this.transceivers;
  }
  async createOffer(options) {
    if (!options?.iceRestart) return { type: "offer", sdp: `v=0 offer${this.mSections()}` };
    this.restarts += 1;
    return {
      type: "offer",
      sdp: `v=0 restart\r\na=ice-ufrag:new${this.restarts}\r\na=ice-pwd:newpassword0123456789abc${this.restarts}\r\n${this.mSections()}`,
    };
  }
  async setLocalDescription(description) {
    if (description?.type === "rollback") {
      if (this.signalingState === "have-local-offer") {
        for (const t of this.transceivers) if (t.provisional) Object.assign(t, { mid: null, provisional: false });
      }
      this.signalingState = "stable";
      return;
    }
    const type = description?.type ?? (this.signalingState === "have-remote-offer" ? "answer" : "offer");
    const sdp = description?.sdp ?? (type === "offer" ? `v=0 offer${this.mSections()}` : "v=0 local answer");
    if (type === "offer") {
      for (const t of this.offered()) if (t.mid === null) Object.assign(t, { mid: String(this.nextMid++), provisional: true });
    }
    this.localDescription = { type, sdp, toJSON() { return this; } };
    this.signalingState = type === "offer" ? "have-local-offer" : "stable";
  }
  async setRemoteDescription(description) {
    if (description.type === "answer") {
      const offered = mLines(this.localDescription?.sdp).length;
      if (mLines(description.sdp).length < offered) {
        throw new Error("Failed to set remote answer sdp: The order of m-lines in answer doesn't match order in offer. Rejecting answer.");
      }
      for (const t of this.transceivers) t.provisional = false;
    }
    this.remoteDescription = description;
    this.signalingState = description.type === "offer" ? "have-remote-offer" : "stable";
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
