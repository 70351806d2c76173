// An in-memory stand-in for the browser WebSocket: the test plays the server.
export class FakeServer {
  constructor() {
    this.sockets = [];
    this.factory = (url) => {
      const socket = new FakeSocket(url);
      this.sockets.push(socket);
      return socket;
    };
  }
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

export class FakeSocket {
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }
  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(text);
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // The server side, driven by the test.
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  frames() {
    return this.sent.map((text) => JSON.parse(text));
  }
}

export function welcome(overrides = {}) {
  return {
    type: "welcome",
    v: 1,
    peer_id: "p-self",
    resume_token: "rt-1",
    room: "lobby",
    peers: [],
    ice_servers: [],
    heartbeat_ms: 1000,
    resumed: false,
    ...overrides,
  };
}
