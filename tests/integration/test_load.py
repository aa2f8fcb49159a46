"""Many clients at once, sequenced messages both ways: nothing lost, nothing reordered, nothing leaked.

The default run is short; the soak variant (opt-in: ``pytest -m soak``) runs the same scenario longer.
Bounded in count and time, loopback only.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.support import GatewayProcess, async_wait_until, scaled


async def sequenced_clients(gateway: GatewayProcess, clients: int, messages: int) -> None:
    """Each client sends numbered messages with up to 8 in flight and checks the echoes come back in order."""

    async def one(index: int) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/echo") as ws:
            expected = 0
            sent = 0
            while expected < messages:
                while sent < messages and sent - expected < 8:
                    await ws.send_str(f"{index}:{sent}:" + "p" * (sent % 300))
                    sent += 1
                msg = await ws.receive(timeout=scaled(30))
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                assert msg.data.split(":")[:2] == [str(index), str(expected)], (msg.data[:40], expected)
                expected += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    samples = await gateway.metrics()
    total = clients * messages
    assert samples[("ws_gateway_messages_total", (("direction", "client_to_upstream"),))] == total
    assert samples[("ws_gateway_messages_total", (("direction", "upstream_to_client"),))] == total
    await async_wait_until(lambda: len(gateway.session_logs()) == clients, 20, "every session to be logged")
    assert (await gateway.metrics())[("ws_gateway_sessions_open", ())] == 0, "no session leaked"
    assert {line["client_code"] for line in gateway.session_logs()} == {1000}


async def test_fifty_clients_sequenced(gateway: GatewayProcess) -> None:
    """50 concurrent clients x 200 messages: all echoed once, in order; every session closed and logged."""
    await sequenced_clients(gateway, clients=50, messages=200)


@pytest.mark.soak
async def test_soak_many_clients_sequenced(gateway: GatewayProcess) -> None:
    """Soak (opt-in): 200 clients x WS_GATEWAY_SOAK_MESSAGES messages each (default 5,000)."""
    await sequenced_clients(gateway, clients=200, messages=int(os.environ.get("WS_GATEWAY_SOAK_MESSAGES", "5000")))
