// Fakes shared by the SDK's RTC unit tests: a DataChannel the test opens and feeds by hand, and
// a way to let queued promise callbacks run.

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
