"""Issue 14: the clients users run, through the gateway with compression on: Chromium and Node ``ws``.

Each negotiates permessage-deflate with the gateway as it would with uvicorn, sends text and
binary messages (empty, Unicode, incompressible, larger than a frame, and one sent as fragments),
and gets every echo back byte for byte; the gateway's counters show that both directions really
were compressed. Python ``websockets`` is in ``test_compression.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_demo_browser import attach, start_chromium
from tests.support import ROOT, GatewayProcess, Upstream, scaled

COMPRESSION = {"compression": {"enabled": True}, "max_frame_size": "64KiB"}
NODE_CLIENT = ROOT / "tests" / "node" / "echo_client.mjs"


async def compressed_counts(gw: GatewayProcess) -> tuple[float, float]:
    """Compressed messages counted (client to upstream, upstream to client)."""
    return (await gw.metric("ws_gateway_compressed_messages_total", direction="client_to_upstream"),
            await gw.metric("ws_gateway_compressed_messages_total", direction="upstream_to_client"))


@pytest.mark.timeout(int(scaled(90)))
async def test_node_ws_client_negotiates_and_exchanges_byte_exact(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Node's ``ws`` (default offer) agrees permessage-deflate; 28 messages echo exact, one of them fragmented."""
    node = shutil.which("node")
    assert node, "Node.js is missing: run `make system-deps` (scripts/install-system-deps.sh)"
    assert (ROOT / "tests" / "node" / "node_modules" / "ws").is_dir(), "run `make test` (npm ci in tests/node)"
    gw = make_gateway(upstream.url, {"client": COMPRESSION})
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT), gw.url.replace("http", "ws") + "/ws/echo", str(scaled(30)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), scaled(60))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (out.decode(), err.decode())
    report = json.loads(out)
    assert report["extensions"].startswith("permessage-deflate"), report["extensions"]
    assert "server_max_window_bits=12" in report["extensions"], report["extensions"]
    results = report["results"]
    assert len(results) == 28 and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert results[-1]["fragments"] == 20 and report["closeCode"] == 1000
    sent_up, sent_down = await compressed_counts(gw)
    # ws compresses messages of 1024 bytes or more by default (its `threshold`): 4 of them plus the
    # fragmented one; the gateway compresses every message it sends (min_size 0).
    large = sum(1 for r in results if r["length"] >= 1024)
    assert large <= sent_up <= len(results), (sent_up, large)
    assert sent_down == len(results)


BROWSER_EXCHANGE = """
(async () => {
  const chat = (i) => JSON.stringify({type: 'chat', id: i, room: 'general', user: `user${i % 7}`,
    text: `message number ${i}, the quick brown fox jumps over the lazy dog`});
  const bytes = (length, seed) => {
    let state = seed >>> 0;
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) { state = (Math.imul(state, 1664525) + 1013904223) >>> 0; out[i] = state >>> 24; }
    return out;
  };
  const messages = [];
  for (let i = 0; i < 20; i++) messages.push(chat(i));
  messages.push('', new Uint8Array(0), 'é🙂 naïve', bytes(1000, 1), bytes(200000, 2),
                Array.from({length: 3000}, (_, i) => chat(i)).join(''));
  const ws = new WebSocket(URL);
  ws.binaryType = 'arraybuffer';
  const echoes = [];
  let wake = null;
  ws.onmessage = (event) => { echoes.push(event.data); if (wake) wake(); };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('error')); });
  const results = [];
  for (const message of messages) {
    ws.send(message);
    while (echoes.length === 0) await new Promise((resolve) => { wake = resolve; });
    const echo = echoes.shift();
    let ok;
    if (typeof message === 'string') ok = echo === message;
    else {
      const got = new Uint8Array(echo);
      ok = echo instanceof ArrayBuffer && got.length === message.length && got.every((b, i) => b === message[i]);
    }
    results.push({ok, text: typeof message === 'string', length: message.length});
  }
  const closed = new Promise((resolve) => { ws.onclose = (event) => resolve(event.code); });
  ws.close(1000, 'done');
  return {extensions: ws.extensions, results, closeCode: await closed};
})()
"""


@pytest.mark.timeout(int(scaled(90)))
async def test_chromium_negotiates_and_exchanges_byte_exact(
    tmp_path: Path, make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Headless Chromium agrees permessage-deflate with the gateway; text and binary echo exact."""
    gw = make_gateway(upstream.url, {"client": COMPRESSION})
    browser, port_file = start_chromium(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            page = await attach(http, browser, port_file)
            try:
                url = json.dumps(gw.url.replace("http", "ws") + "/ws/echo")
                report = await page.evaluate(BROWSER_EXCHANGE.replace("URL", url, 1))
                assert page.errors() == [], page.errors()
            finally:
                await page.close()
    finally:
        browser.stop()
    assert report["extensions"].startswith("permessage-deflate"), report
    results = report["results"]
    assert len(results) == 26 and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    assert report["closeCode"] == 1000
    sent_up, sent_down = await compressed_counts(gw)
    assert sent_up >= 20, sent_up  # Chromium compresses what it sends once deflate is agreed
    assert sent_down == len(results)
