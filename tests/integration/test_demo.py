"""Point 11: `make demo` runs the app and the gateway, serves the page, and Ctrl-C stops both."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp

from tests.support import Upstream, async_wait_until, port_open, scaled, start_demo


async def test_demo_serves_page_relays_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The demo prints its URLs, serves the page and /demo/stats, relays through the gateway; SIGINT stops all."""
    demo, app_port, gateway_port, admin_port = start_demo(tmp_path)
    try:
        await async_wait_until(lambda: "Press Ctrl-C" in demo.output() or not demo.alive(), 30, "the demo banner")
        assert f"http://127.0.0.1:{app_port}/" in demo.output()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{app_port}/") as response:
                page = await response.text()
                assert response.status == 200 and "new WebSocket(" in page
            async with http.ws_connect(f"http://127.0.0.1:{gateway_port}/ws/echo", protocols=["chat.v1"]) as ws:
                await ws.send_str("demo")
                assert (await ws.receive(timeout=scaled(5))).data == "demo"
            async with http.get(f"http://127.0.0.1:{app_port}/demo/stats") as response:
                stats = await response.json()
                assert response.status == 200 and stats["metrics_url"] == f"http://127.0.0.1:{admin_port}/metrics"
                assert set(stats["ping"]) == {"client", "upstream"} and isinstance(stats["closes"], list), stats
                assert stats["counters"]["oversize_refusals_client"] == 0, stats
            async with http.post(f"http://127.0.0.1:{app_port}/demo/restart") as response:
                assert response.status == 400  # no X-Demo-Control header: what a cross-origin form would send
        demo.signal(signal.SIGINT)
        await async_wait_until(lambda: not demo.alive(), 20, "the demo to stop")
        assert demo.process.returncode == 0
        assert not port_open(app_port) and not port_open(gateway_port)
    finally:
        demo.stop()


async def test_restart_route_is_refused_outside_the_launcher(upstream: Upstream) -> None:
    """The app under plain uvicorn (as every other test runs it) answers 404 to /demo/restart and keeps running."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{upstream.port}/demo/restart",
                             headers={"X-Demo-Control": "restart"}) as response:
            assert response.status == 404
        async with http.get(f"http://127.0.0.1:{upstream.port}/") as response:
            assert response.status == 200
    assert upstream.alive()
