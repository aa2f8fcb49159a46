"""Point 11: `make demo` runs the app and the gateway, serves the page, and Ctrl-C stops both."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import aiohttp

from tests.support import ManagedProcess, async_wait_until, free_port, port_open, scaled


async def test_demo_serves_page_relays_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The demo prints its URLs, the page loads, a WebSocket relays through the gateway, SIGINT stops all."""
    app_port, gateway_port, admin_port = free_port(), free_port(), free_port()
    demo = ManagedProcess(
        [sys.executable, "-m", "examples.demo"], tmp_path / "demo.log",
        env={"DEMO_APP_PORT": str(app_port), "DEMO_GATEWAY_PORT": str(gateway_port),
             "DEMO_ADMIN_PORT": str(admin_port)},
    )
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
        demo.signal(signal.SIGINT)
        await async_wait_until(lambda: not demo.alive(), 20, "the demo to stop")
        assert demo.process.returncode == 0
        assert not port_open(app_port) and not port_open(gateway_port)
    finally:
        demo.stop()
