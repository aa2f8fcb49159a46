"""Point 5: pings on both legs, pongs answered at the gateway, dead peers detected and counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from gateway.core.codec import Opcode
from tests.support import GatewayProcess, RawClient, Upstream, client_frame, scaled

FAST_PINGS = {"ping_interval": "300ms", "ping_timeout": "600ms", "ping_jitter": "100ms"}


async def test_responsive_client_stays_and_rtt_is_measured(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A client that answers pings stays connected across many intervals; RTTs are observed."""
    gw = make_gateway(upstream.url, {"client": FAST_PINGS, "upstream": FAST_PINGS})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        # aiohttp answers pings only while receive() runs: keep one pending, as a real client does.
        reader = asyncio.ensure_future(ws.receive(timeout=scaled(30)))
        samples: dict[str, float] = {}

        async def refresh() -> None:
            nonlocal samples
            metrics = await gw.metrics()
            samples = {leg: metrics.get(("ws_gateway_ping_rtt_seconds_count", (("leg", leg),)), 0.0)
                       for leg in ("client", "upstream")}

        deadline = asyncio.get_running_loop().time() + scaled(15)
        while asyncio.get_running_loop().time() < deadline:
            await refresh()
            if samples["client"] >= 5 and samples["upstream"] >= 5:
                break
            await asyncio.sleep(0.1)
        assert samples["client"] >= 5 and samples["upstream"] >= 5, samples
        await ws.send_str("still here")
        assert (await reader).data == "still here"
    assert await gw.metric("ws_gateway_ping_timeouts_total", leg="client") == 0


async def test_silent_client_closed_with_1011_keepalive_timeout(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A client that never answers pings gets 1011 "keepalive ping timeout"; counted and logged."""
    gw = make_gateway(upstream.url, {"client": FAST_PINGS})
    client = await RawClient.connect(gw.port, "/ws/echo")
    code, reason, frames = await client.read_until_close(timeout=10)
    assert (code, reason) == (1011, "keepalive ping timeout")
    assert any(opcode == Opcode.PING for _, opcode, _ in frames), "the gateway pinged before giving up"
    line = (await gw.wait_session_log(1))[0]
    assert (line["client_code"], line["upstream_code"], line["initiator"], line["cause"]) == \
        (1011, 1001, "gateway", "ping_timeout")
    assert await gw.metric("ws_gateway_ping_timeouts_total", leg="client") == 1
    assert await gw.metric("ws_gateway_closes_total", leg="client", code="1011", initiator="gateway",
                           cause="ping_timeout") == 1


async def test_gateway_answers_client_ping_while_app_is_frozen(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """With the app's event loop blocked, the client's ping is still answered (by the gateway)."""
    gw = make_gateway(upstream.url)
    client = await RawClient.connect(gw.port, "/ws/stall?seconds=3")
    client.send(client_frame(Opcode.TEXT, b"freeze now"))
    client.send(client_frame(Opcode.PING, b"are you there"))
    _fin, opcode, payload = await client.read_frame(timeout=2)
    assert (opcode, payload) == (Opcode.PONG, b"are you there")
    client.close()


async def test_frozen_upstream_detected_by_pings(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Reconnection off: an app that blocks its loop misses the gateway's pings; the client gets 1011, counted."""
    gw = make_gateway(upstream.url, {"upstream": FAST_PINGS, "reconnect": {"enabled": False}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/stall?seconds=4") as ws:
        await ws.send_str("freeze now")
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "upstream keepalive ping timeout")
    assert await gw.metric("ws_gateway_ping_timeouts_total", leg="upstream") == 1
    line = (await gw.wait_session_log(1))[0]
    assert (line["cause"], line["initiator"]) == ("ping_timeout", "gateway")
