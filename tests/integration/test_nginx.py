"""Real NGINX in front: gateway pings keep an idle client past proxy_read_timeout; without them it drops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.support import GatewayProcess, NginxProcess, Upstream, scaled

READ_TIMEOUT = 2.0


async def idle_outcome(url: str, idle_seconds: float) -> aiohttp.WSMessage | None:
    """Stay idle (answering pings) for ``idle_seconds``; None if nothing ended the connection."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws/echo") as ws:
        try:
            return await asyncio.wait_for(ws.receive(), idle_seconds)
        except TimeoutError:
            await ws.send_str("after the idle period")
            reply = await ws.receive(timeout=scaled(5))
            assert reply.data == "after the idle period"
            return None


async def test_gateway_pings_keep_idle_client_behind_nginx(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream, tmp_path: Path
) -> None:
    """With client pings every 0.5 s, an idle client survives 3x NGINX's 2 s proxy_read_timeout."""
    gw = make_gateway(upstream.url, {"client": {"ping_interval": "500ms", "ping_jitter": "100ms",
                                                "ping_timeout": "1s"},
                                     "proxy": {"idle_timeout": f"{READ_TIMEOUT:g}s"}})
    nginx = NginxProcess(tmp_path, gw.port, read_timeout=f"{READ_TIMEOUT:g}s")
    try:
        assert await idle_outcome(nginx.url, 3 * READ_TIMEOUT + 0.5) is None
    finally:
        nginx.stop()


async def test_without_pings_nginx_drops_the_idle_client(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream, tmp_path: Path
) -> None:
    """Control: with pings off on both legs, NGINX closes the same idle client near its 2 s timeout."""
    gw = make_gateway(upstream.url, {"client": {"ping_interval": 0}, "upstream": {"ping_interval": 0}})
    nginx = NginxProcess(tmp_path, gw.port, read_timeout=f"{READ_TIMEOUT:g}s")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await idle_outcome(nginx.url, 3 * READ_TIMEOUT + 0.5)
        assert outcome is not None, "the connection should have been dropped by NGINX"
        assert outcome.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert loop.time() - started < 3 * READ_TIMEOUT
        line = (await gw.wait_session_log(1))[0]
        assert (line["client_code"], line["cause"]) == (1006, "abnormal")
    finally:
        nginx.stop()
