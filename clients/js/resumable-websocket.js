// ResumableWebSocket: a WebSocket whose session survives network drops, through ws-gateway.
//
// An ES module with no build step and no dependencies (docs/resume.md has the wire protocol):
//
//   import { ResumableWebSocket } from "./resumable-websocket.js";
//   const ws = new ResumableWebSocket("wss://example.com/ws/chat", ["chat.v1"]);
//   ws.onmessage = (event) => console.log(event.data);
//   ws.addEventListener("resumed", (event) => console.log("back after", event.detail.gapMs, "ms"));
//   ws.addEventListener("reset", () => console.log("session lost: connect afresh"));
//
// It has WebSocket's API (send, close, readyState, binaryType, protocol, extensions, bufferedAmount,
// onopen/onmessage/onclose/onerror, addEventListener) plus two events: "resumed" after a drop was
// resumed (every message arrives once and in order, both ways), and "reset" when it could not be
// (close 4410 from the gateway, or no connection within the grace period); a "close" event with
// code 4410 follows a reset. readyState stays OPEN while a drop is being resumed; messages sent
// meanwhile go out after the resume.

const MARKER = "ws-gateway.resumable";
const RESUME_PREFIX = "ws-gateway.resume.";
const RESUME_REFUSED = 4410;
const DEFAULT_DELAYS = [0, 100, 250, 500, 1000, 2000];

function sizeOf(data) {
  if (typeof data === "string") return new TextEncoder().encode(data).length;
  if (data instanceof Blob) return data.size;
  return data.byteLength;
}

export class ResumableWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url, protocols = [], options = {}) {
    super();
    this.url = url;
    this._protocols = typeof protocols === "string" ? [protocols] : [...protocols];
    this._bufferBytes = options.bufferBytes ?? 1 << 20;
    this._delays = options.retryDelays ?? DEFAULT_DELAYS;
    this._binaryType = "blob";
    this._readyState = ResumableWebSocket.CONNECTING;
    this._token = null;
    this._graceMs = 0;
    this._received = 0; // app messages delivered to the page
    this._sentCount = 0;
    this._sent = []; // [index, data] not yet confirmed by a resume
    this._sentBytes = 0;
    this._forgotThrough = 0;
    this._closing = false;
    this._droppedAt = 0;
    this.resumes = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._connect(null);
  }

  get readyState() { return this._readyState; }
  get binaryType() { return this._binaryType; }
  set binaryType(value) { this._binaryType = value; if (this._ws) this._ws.binaryType = value; }
  get protocol() { return this._protocol ?? ""; }
  get extensions() { return this._ws ? this._ws.extensions : ""; }
  get bufferedAmount() { return this._ws ? this._ws.bufferedAmount : 0; }

  send(data) {
    if (this._readyState !== ResumableWebSocket.OPEN) throw new DOMException("not open", "InvalidStateError");
    this._sentCount += 1;
    this._sent.push([this._sentCount, data]);
    this._sentBytes += sizeOf(data);
    while (this._sentBytes > this._bufferBytes && this._sent.length > 1) {
      const [index, old] = this._sent.shift();
      this._sentBytes -= sizeOf(old);
      this._forgotThrough = index;
    }
    if (this._live) this._ws.send(data); // else it goes out after the resume
  }

  close(code = 1000, reason = "") {
    if (this._readyState >= ResumableWebSocket.CLOSING) return;
    this._closing = true;
    this._readyState = ResumableWebSocket.CLOSING;
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) this._ws.close(code, reason);
    else this._finish(code, reason, true);
  }

  _emit(type, init = {}) {
    const event = type === "message" ? new MessageEvent("message", init)
      : type === "close" ? new CloseEvent("close", init)
      : init.detail !== undefined ? new CustomEvent(type, init) : new Event(type);
    const handler = this["on" + type];
    if (typeof handler === "function") handler.call(this, event);
    this.dispatchEvent(event);
  }

  _connect(resume) {
    const offer = [...this._protocols, MARKER];
    if (resume) offer.push(`${RESUME_PREFIX}${this._token}.${this._received}`);
    const ws = new WebSocket(this.url, offer);
    ws.binaryType = this._binaryType;
    this._ws = ws;
    this._live = false;
    let first = true;
    ws.onmessage = (event) => {
      if (!first) {
        this._received += 1;
        this._emit("message", { data: event.data, origin: event.origin });
        return;
      }
      first = false;
      let message = null;
      try { message = JSON.parse(event.data); } catch { message = null; }
      this._hello(message, resume);
    };
    ws.onclose = (event) => this._closed(ws, event, resume, !first);
    ws.onerror = () => { if (!resume && first) this._emit("error"); };
  }

  _hello(message, resume) {
    const expected = resume ? "resumed" : "resumable";
    if (!message || message["ws-gateway"] !== expected) {
      // Not a resumable session (resume is off at the gateway, or something else answered).
      return this._reset(`the gateway's first message is not "${expected}"`);
    }
    this._token = message.token;
    if (!resume) {
      this._graceMs = message["grace_ms"];
      this._protocol = this._ws.protocol === MARKER ? "" : this._ws.protocol;
      this._readyState = ResumableWebSocket.OPEN;
      this._live = true;
      this._emit("open");
      return;
    }
    const got = message.received;
    if (got < this._forgotThrough || got > this._sentCount) {
      this._reset(`the gateway has ${got} of our messages; we kept those after ${this._forgotThrough}`);
      return;
    }
    while (this._sent.length && this._sent[0][0] <= got) this._sentBytes -= sizeOf(this._sent.shift()[1]);
    for (const [, data] of this._sent) this._ws.send(data);
    this._live = true;
    this.resumes += 1;
    this._emit("resumed", { detail: { gapMs: Date.now() - this._droppedAt, resent: this._sent.length } });
  }

  _closed(ws, event, resume, greeted) {
    if (ws !== this._ws) return;
    this._live = false;
    if (this._closing) return this._finish(event.code, event.reason, event.wasClean);
    if (event.code === RESUME_REFUSED) return this._reset(event.reason);
    const dropped = !event.wasClean || event.code === 1006;
    if (!this._token || !dropped) return this._finish(event.code, event.reason, event.wasClean);
    if (!resume || greeted) {
      this._droppedAt = Date.now();
      this._attempt = 0;
    }
    this._retry();
  }

  _retry() {
    const delay = this._delays[Math.min(this._attempt, this._delays.length - 1)];
    this._attempt += 1;
    if (Date.now() + delay - this._droppedAt > this._graceMs) {
      return this._reset(`no connection within the grace period (${this._graceMs} ms)`);
    }
    setTimeout(() => { if (!this._closing) this._connect(true); }, delay);
  }

  _reset(reason) {
    this._closing = true;
    this._emit("reset", { detail: { reason } });
    if (this._ws && this._ws.readyState <= WebSocket.OPEN) this._ws.close();
    this._finish(RESUME_REFUSED, reason, false);
  }

  _finish(code, reason, wasClean) {
    if (this._readyState === ResumableWebSocket.CLOSED) return;
    this._readyState = ResumableWebSocket.CLOSED;
    this._emit("close", { code, reason, wasClean });
  }
}
