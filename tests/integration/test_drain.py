"""Point 9: SIGTERM drains: readiness fails at once, clients get 1012 spread out, exit before the timeout."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp

from tests.support import GatewayProcess, Upstream, async_wait_until, port_open, scaled


async def test_sigterm_drains_sessions_with_1012(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Five clients get 1012 spread over the window; new upgrades get 503; the process exits 0 in time."""
    gw = make_gateway(upstream.url, {"drain": {"listener_delay": "1s", "spread": "1s", "timeout": "4s"}})
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.admin + "/readyz") as response:
            assert response.status == 200
        sockets = [await http.ws_connect(gw.url + "/ws/echo") for _ in range(5)]
        receivers = [asyncio.ensure_future(ws.receive(timeout=scaled(10))) for ws in sockets]
        sent_at = time.monotonic()
        gw.signal(signal.SIGTERM)
        # "At once": well before the 1 s listener delay ends (the signal itself arrives asynchronously).
        status = 200
        while status != 503 and time.monotonic() - sent_at < 0.8:
            async with http.get(gw.admin + "/readyz") as response:
                status = response.status
        assert status == 503, "readiness fails at once"
        try:
            async with http.ws_connect(gw.url + "/ws/echo"):
                raise AssertionError("a new session was accepted while draining")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503
        closes = await asyncio.gather(*receivers)
        closed_at = time.monotonic()
        for ws in sockets:
            await ws.close()
    assert all((m.type, m.data) == (aiohttp.WSMsgType.CLOSE, 1012) for m in closes), closes
    assert closed_at - sent_at >= 1.0, "closes wait for the listener delay"
    await async_wait_until(lambda: not gw.alive(), 6, "the gateway to exit")
    assert time.monotonic() - sent_at < scaled(4) + 1.0
    assert gw.process.returncode == 0
    assert not port_open(gw.port)
    lines = gw.session_logs()
    assert len(lines) == 5
    assert {(e["client_code"], e["upstream_code"], e["initiator"], e["cause"]) for e in lines} == \
        {(1012, 1001, "gateway", "shutdown")}
    started = [line for line in gw.output().splitlines() if "drain started" in line]
    assert len(started) == 1 and "the listener stays open 1s more" in started[0] and "5 open sessions" in started[0]
