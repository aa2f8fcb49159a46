"""Point 4: close codes and reasons relayed both ways; the client never sees a bare 1006."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from gateway.core.codec import Opcode, build_close_payload
from tests.support import GatewayProcess, RawClient, Upstream, client_frame, scaled


async def test_upstream_close_code_and_reason_reach_client(gateway: GatewayProcess) -> None:
    """An app close with 4003 "nope" reaches the client as 4003 "nope"; counted and logged."""
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/close/4003?reason=nope") as ws:
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4003, "nope")
    line = (await gateway.wait_session_log(1))[0]
    assert (line["client_code"], line["upstream_code"], line["initiator"], line["cause"]) == \
        (4003, 4003, "upstream", "normal")
    assert line["path"] == "/ws/close/4003" and "reason" not in line["path"]
    assert await gateway.metric("ws_gateway_closes_total", leg="client", code="4xxx", initiator="upstream",
                                cause="normal") == 1


async def test_client_close_code_reaches_upstream_and_is_echoed(gateway: GatewayProcess) -> None:
    """The client's 4001 goes to the app (uvicorn echoes it) and the client reads 4001 back, not 1000."""
    client = await RawClient.connect(gateway.port, "/ws/echo")
    client.send(client_frame(Opcode.CLOSE, build_close_payload(4001, "bye")))
    code, reason, _ = await client.read_until_close()
    assert (code, reason) == (4001, "bye")
    assert await client.at_eof(), "the gateway (server side) closes TCP after the closing handshake"
    line = (await gateway.wait_session_log(1))[0]
    assert (line["upstream_code"], line["initiator"]) == (4001, "client")


async def test_upstream_crash_gives_client_1011(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Reconnection off: a handler that raises after accept (no close frame, 1006) gives the client a real 1011."""
    gateway = make_gateway(upstream.url, {"reconnect": {"enabled": False}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/crash") as ws:
        await ws.send_str("boom")
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
    assert "without a close frame" in msg.extra
    line = (await gateway.wait_session_log(1))[0]
    assert (line["client_code"], line["upstream_code"], line["cause"]) == (1011, 1006, "abnormal")
    assert await gateway.metric("ws_gateway_closes_total", leg="upstream", code="1006", initiator="upstream",
                                cause="abnormal") == 1


async def test_empty_close_frame_is_not_relayed_as_1005(gateway: GatewayProcess) -> None:
    """A close with no code is carried as a close with no code (1005 never goes on the wire)."""
    client = await RawClient.connect(gateway.port, "/ws/echo")
    client.send(client_frame(Opcode.CLOSE, b""))
    code, _, _ = await client.read_until_close()
    assert code == 1005  # an empty close frame back, read as "no status"
    line = (await gateway.wait_session_log(1))[0]
    assert line["upstream_code"] in (1000, 1005), line


async def test_client_vanishing_closes_upstream_with_1001(gateway: GatewayProcess) -> None:
    """A client that drops TCP without a close frame is logged as 1006 and the app gets 1001."""
    client = await RawClient.connect(gateway.port, "/ws/echo")
    client.send(client_frame(Opcode.TEXT, b"hi"))
    await client.read_frame()
    client.writer.transport.abort()
    line = (await gateway.wait_session_log(1))[0]
    assert (line["client_code"], line["upstream_code"], line["initiator"], line["cause"]) == \
        (1006, 1001, "client", "abnormal")
