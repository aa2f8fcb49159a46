"""Issue 3 point 5: several upstream targets: selection, cool-down, readiness, moving a hung session."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.support import GatewayProcess, Upstream, free_port, read_request_info, request_headers


async def first_host(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws/request") as ws:
        return request_headers(await read_request_info(ws))["host"]


async def test_sessions_spread_round_robin(make_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """Two uvicorn processes: four sessions land two on each."""
    first, second = Upstream(tmp_path), Upstream(tmp_path)
    try:
        gw = make_gateway(first.url, {"upstream": {"url": [first.url, second.url]}})
        hosts = [await first_host(gw.url) for _ in range(4)]
        assert sorted(hosts) == sorted([f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"] * 2)
    finally:
        first.stop()
        second.stop()


async def test_dead_target_skipped_for_cooldown_and_readiness(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """A dead target is tried once, then skipped during its cool-down; /readyz stays ready while one target is up."""
    alive = Upstream(tmp_path)
    dead = f"ws://127.0.0.1:{free_port()}"
    try:
        gw = make_gateway(alive.url, {"upstream": {"url": [dead, alive.url], "cooldown": "60s"}})
        hosts = [await first_host(gw.url) for _ in range(4)]
        assert set(hosts) == {f"127.0.0.1:{alive.port}"}
        assert await gw.metric("ws_gateway_upstream_connects_total", result="refused") == 1
        async with aiohttp.ClientSession() as http, http.get(gw.admin + "/readyz") as response:
            assert response.status == 200
        alive.stop()
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.admin + "/readyz") as response:
                if response.status == 200:  # the readiness cache lasts one second
                    await asyncio.sleep(1.1)
            async with http.get(gw.admin + "/readyz") as response:
                assert response.status == 503
    finally:
        alive.stop()


async def test_hung_target_session_moves_to_the_other(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """SIGSTOP the session's target: pings detect it and the session reconnects to the second target."""
    first, second = Upstream(tmp_path), Upstream(tmp_path)
    stopped = False
    try:
        fast = {"ping_interval": "300ms", "ping_timeout": "600ms", "ping_jitter": "100ms",
                "connect_timeout": "1s", "url": [first.url, second.url]}
        gw = make_gateway(first.url, {"upstream": fast})
        async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/request") as ws:
            before = request_headers(await read_request_info(ws))
            hung = first if before["host"] == f"127.0.0.1:{first.port}" else second
            other = second if hung is first else first
            hung.signal(signal.SIGSTOP)
            stopped = True
            after = request_headers(await read_request_info(ws, 15))
        assert after["host"] == f"127.0.0.1:{other.port}"
        assert after["x-gateway-session-id"] == before["x-gateway-session-id"]
        assert await gw.metric("ws_gateway_ping_timeouts_total", leg="upstream") >= 1
        assert await gw.metric("ws_gateway_sessions_resumed_total") == 1
    finally:
        if stopped:
            for server in (first, second):
                server.signal(signal.SIGCONT)
        first.stop()
        second.stop()
