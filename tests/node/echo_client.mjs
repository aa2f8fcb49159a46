// A Node.js `ws` client for tests/integration/test_compression_clients.py: connects to the URL in
// argv[2] with ws's default permessage-deflate offer, sends a fixed set of messages one at a time
// (text, binary, empty, Unicode, large, and one message sent as fragments), waits for each echo and
// compares it byte for byte. Prints one JSON line: the 101's Sec-WebSocket-Extensions and each message's verdict.
// Exits 2 if the exchange does not finish within argv[3] seconds.
import WebSocket from 'ws';

const url = process.argv[2];
const timeoutSeconds = Number(process.argv[3] || 30);

function randomBytes(length, seed) {
  // A linear congruential generator: the same bytes on every run, and incompressible.
  let state = seed >>> 0;
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    bytes[i] = state >>> 24;
  }
  return bytes;
}

const chat = (i) => JSON.stringify({
  type: 'chat', id: i, room: 'general', user: `user${i % 7}`,
  text: `message number ${i}, the quick brown fox jumps over the lazy dog`,
});

const messages = [];
for (let i = 0; i < 20; i++) messages.push({ data: chat(i), binary: false });
messages.push(
  { data: '', binary: false },
  { data: Buffer.alloc(0), binary: true },
  { data: 'é🙂 naïve', binary: false },
  { data: randomBytes(1000, 1), binary: true },
  { data: Buffer.from(Array.from({ length: 4096 }, (_, i) => i % 256)), binary: true },
  { data: randomBytes(200000, 2), binary: true },
  { data: Array.from({ length: 3000 }, (_, i) => chat(i)).join(''), binary: false },
);
const fragments = Array.from({ length: 20 }, (_, i) => chat(1000 + i));

const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: `no result within ${timeoutSeconds}s` }));
  process.exit(2);
}, timeoutSeconds * 1000);

const ws = new WebSocket(url, { maxPayload: 0 });
const echoes = [];
let wake = null;
let agreed = null; // the Sec-WebSocket-Extensions header of the 101 (ws.extensions names only)
ws.on('upgrade', (response) => { agreed = response.headers['sec-websocket-extensions'] ?? null; });
ws.on('message', (data, isBinary) => {
  echoes.push({ data, isBinary });
  if (wake) wake();
});
ws.on('error', (err) => {
  console.log(JSON.stringify({ error: String(err) }));
  process.exit(1);
});

async function nextEcho() {
  while (echoes.length === 0) await new Promise((resolve) => { wake = resolve; });
  return echoes.shift();
}

function verdict(expected, binary, echo) {
  const bytes = Buffer.isBuffer(expected) ? expected : Buffer.from(expected, 'utf8');
  return {
    binary, length: bytes.length,
    ok: echo.isBinary === binary && Buffer.compare(bytes, echo.data) === 0,
  };
}

ws.on('open', async () => {
  const results = [];
  for (const message of messages) {
    ws.send(message.data, { binary: message.binary });
    results.push(verdict(message.data, message.binary, await nextEcho()));
  }
  fragments.forEach((part, i) => ws.send(part, { binary: false, fin: i === fragments.length - 1 }));
  results.push({ ...verdict(fragments.join(''), false, await nextEcho()), fragments: fragments.length });
  ws.on('close', (code) => {
    clearTimeout(timer);
    console.log(JSON.stringify({ extensions: agreed, results, closeCode: code }));
  });
  ws.close(1000, 'done');
});
