"""Issue 11 in a browser: headless Chromium runs clients/js/resumable-websocket.js through a proxy
that cuts its connection mid-stream, and the Python helper does the same through NGINX.

The module is served as it is (no build step) by a small aiohttp static server on loopback; the
page imports it and drives a session while the test cuts the TCP connection under it
(``CuttingProxy`` from test_resume.py). What the app saw comes from ``tests/recording_app.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clients.python.resumable_websocket import ResumableWebSocket
from tests.integration.test_demo_browser import DevTools, attach, start_chromium
from tests.integration.test_resume import RESUME, CuttingProxy, app_saw, exchange
from tests.support import HOST, ROOT, GatewayProcess, NginxProcess, Upstream, async_wait_until, scaled

CLIENTS_JS = ROOT / "clients" / "js"


@asynccontextmanager
async def static_site() -> AsyncIterator[str]:
    """clients/js/ and an empty page, on a free loopback port; yields the base URL."""
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>resume</title>", content_type="text/html")

    async def no_icon(_request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_static("/js/", CLIENTS_JS)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def page_session(tmp_path: Path, gateway_port: int, query: str, count: int
                       ) -> AsyncIterator[tuple[DevTools, CuttingProxy]]:
    """Headless Chromium on the static page, through a CuttingProxy to the gateway, with PAGE_SESSION
    started: the page opens /ws/stream?<query> with the JS helper and sends ``count`` messages."""
    browser, port_file = start_chromium(tmp_path)
    try:
        async with static_site() as site, CuttingProxy(gateway_port) as proxy, aiohttp.ClientSession() as http:
            page = await attach(http, browser, port_file)
            try:
                await page.navigate(site + "/")
                url = json.dumps(f"{proxy.url}/ws/stream?{query}")
                assert await page.evaluate(PAGE_SESSION.replace("URL", url, 1).replace("COUNT", str(count)))
                yield page, proxy
            finally:
                await page.close()
    finally:
        browser.stop()


PAGE_SESSION = """
(async () => {
  const { ResumableWebSocket } = await import('/js/resumable-websocket.js');
  const state = window.state = { sent: 0, received: [], events: [], done: false, error: null };
  const ws = window.ws = new ResumableWebSocket(URL);
  ws.addEventListener('resumed', (e) => state.events.push('resumed ' + e.detail.resent));
  ws.addEventListener('reset', (e) => state.events.push('reset ' + e.detail.reason));
  ws.onclose = (e) => state.events.push('close ' + e.code);
  ws.onmessage = (e) => state.received.push(e.data);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('no open')); });
  state.events.push('open');
  (async () => {
    for (let i = 0; i < COUNT; i++) {
      ws.send('m' + i);
      state.sent = i + 1;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })().catch((e) => { state.error = String(e); });
  return true;
})()
"""


async def page_state(page: DevTools) -> dict[str, Any]:
    return dict(await page.evaluate("JSON.parse(JSON.stringify(window.state))"))


@pytest.mark.timeout(int(scaled(90)))
async def test_chromium_with_the_js_helper_resumes_cuts_mid_stream(
    tmp_path: Path, make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """Two cuts while the page sends 150 messages and the app sends 100 ticks: all once, in order, one
    app connection."""
    app, records = record_app
    gw = make_gateway(app.url, RESUME)
    count, ticks = 150, 100
    async with page_session(tmp_path, gw.port, f"client=5&ticks={ticks}&interval_ms=15", count) as (page, proxy):
        for cut_after in (40, 100):
            await async_wait_until_page(page, lambda s, n=cut_after: s["sent"] >= n, f"{cut_after} sent")
            proxy.cut()

        def complete(state: dict[str, Any]) -> bool:
            received = state["received"]
            return (sum(m.startswith("echo:") for m in received) >= count
                    and sum(m.startswith("tick:") for m in received) >= ticks)

        await async_wait_until_page(page, complete, "every echo and tick", timeout=30)
        state = await page_state(page)
        await page.evaluate("window.ws.close(1000, 'done')")
        await async_wait_until_page(page, lambda s: "close 1000" in s["events"], "the close")
        assert page.errors() == [], page.errors()  # a cut is not an error the page sees
    assert state["error"] is None, state["error"]
    received = state["received"]
    assert [m for m in received if m.startswith("echo:")] == [f"echo:m{i}" for i in range(count)]
    assert [m for m in received if m.startswith("tick:")] == [f"tick:{n}" for n in range(1, ticks + 1)]
    assert state["events"][0] == "open" and sum(e.startswith("resumed") for e in state["events"]) == 2, state
    assert proxy.accepted == 3
    await async_wait_until(lambda: app_saw(records, 5)[-1:] == ["closed 1000"], 10, "the app to see the close")
    assert app_saw(records, 5) == ["open", *(f"m{i}" for i in range(count)), "closed 1000"]
    assert await gw.metric("ws_gateway_client_resumes_total", result="resumed") == 2


@pytest.mark.timeout(int(scaled(60)))
async def test_chromium_gets_reset_when_the_cut_outlasts_the_grace_period(
    tmp_path: Path, make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """The proxy refuses connections longer than resume.grace: the page gets 'reset', then close 4410;
    the app hears a client loss (1001)."""
    app, records = record_app
    gw = make_gateway(app.url, {"resume": {"grace": "1s"}})
    async with page_session(tmp_path, gw.port, "client=7", 5) as (page, proxy):
        await async_wait_until_page(page, lambda s: len(s["received"]) == 5, "5 echoes")
        proxy.refusing = True
        proxy.cut()
        await async_wait_until_page(page, lambda s: any(e.startswith("close") for e in s["events"]),
                                    "the page to give up")
        state = await page_state(page)
        ready_state = await page.evaluate("window.ws.readyState")
    events = state["events"]
    assert events[0] == "open" and events[-2].startswith("reset ") and events[-1] == "close 4410", events
    assert ready_state == 3  # CLOSED
    await async_wait_until(lambda: "closed 1001" in app_saw(records, 7), 10, "the app to hear the client loss")
    assert app_saw(records, 7) == ["open", *(f"m{i}" for i in range(5)), "closed 1001"]


@pytest.mark.timeout(int(scaled(60)))
async def test_chromium_gets_reset_at_once_when_the_resume_reaches_another_gateway(
    tmp_path: Path, make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """The gateway's 4410 reaches the page (its 101 names the resumable marker, which a browser needs): the
    page resets at once, long before the 30 s grace."""
    app, _ = record_app
    first, other = make_gateway(app.url), make_gateway(app.url)
    async with page_session(tmp_path, first.port, "client=12", 3) as (page, proxy):
        await async_wait_until_page(page, lambda s: len(s["received"]) == 3, "3 echoes")
        proxy.target_port = other.port
        proxy.cut()
        await async_wait_until_page(page, lambda s: "close 4410" in s["events"], "the reset", timeout=5)
        state = await page_state(page)
    assert any(e == "reset session cannot be resumed" for e in state["events"]), state["events"]
    assert await other.metric("ws_gateway_client_resumes_total", result="refused") == 1


async def async_wait_until_page(page: DevTools, condition: Callable[[dict[str, Any]], bool], what: str,
                                timeout: float = 15) -> None:
    """Poll the page's ``window.state`` until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while True:
        state = await page_state(page)
        if condition(state):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page state: {state}")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(int(scaled(90)))
async def test_python_helper_resumes_through_nginx(
    tmp_path: Path, make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """NGINX between the client and the gateway passes the resume offer: cuts in front of NGINX resume too."""
    app, records = record_app
    gw = make_gateway(app.url, RESUME)
    nginx = NginxProcess(tmp_path, gw.port)
    try:
        async with CuttingProxy(nginx.port) as proxy:
            ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=6&ticks=60&interval_ms=15")
            await ws.connect()
            received = await exchange(ws, 100, 60, proxy, cuts=[0.3, 0.7])
            await ws.close()
    finally:
        nginx.stop()
    assert [m for m in received if m.startswith("echo:")] == [f"echo:m{i}" for i in range(100)]
    assert [m for m in received if m.startswith("tick:")] == [f"tick:{n}" for n in range(1, 61)]
    assert ws.resumes == 2
    await async_wait_until(lambda: app_saw(records, 6)[-1:] == ["closed 1000"], 10, "the app to see the close")
    assert app_saw(records, 6) == ["open", *(f"m{i}" for i in range(100)), "closed 1000"]
