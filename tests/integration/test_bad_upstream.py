"""An upstream that breaks the protocol: the client gets 1014 (bad gateway), counted on the upstream leg."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from gateway.core.codec import Opcode
from gateway.core.handshake import accept_key
from tests.support import HOST, GatewayProcess, Upstream, client_frame, free_port, scaled


async def fake_upstream(answer: Callable[[str], bytes]) -> tuple[asyncio.Server, int]:
    """A TCP server that reads the upgrade request and writes ``answer(key)``, then stays open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        writer.write(answer(key))
        await reader.read()
        writer.close()

    port = free_port()
    return await asyncio.start_server(handle, HOST, port), port


def accept(key: str) -> bytes:
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode()


async def test_masked_frame_from_upstream_gives_client_1014(make_gateway: Callable[..., GatewayProcess]) -> None:
    """A masked frame from the app (servers must not mask) closes the client with 1014 and counts a protocol error."""
    server, port = await fake_upstream(lambda key: accept(key) + client_frame(Opcode.TEXT, b"masked!"))
    try:
        gw = make_gateway(f"ws://{HOST}:{port}", {"client": {"close_timeout": "500ms"}})
        async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
            msg = await ws.receive(timeout=scaled(10))
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1014)
        assert "masked frame from server" in msg.extra
        line = (await gw.wait_session_log(1))[0]
        assert (line["upstream_code"], line["cause"], line["initiator"]) == (1002, "protocol_error", "gateway")
        assert await gw.metric("ws_gateway_protocol_errors_total", leg="upstream") == 1
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (lambda key: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: wrong\r\n\r\n", 502),
        (lambda key: b"nonsense\r\n\r\n", 502),
    ],
    ids=["bad-accept", "garbage"],
)
async def test_invalid_upstream_handshake_is_502(
    make_gateway: Callable[..., GatewayProcess], answer: Callable[[str], bytes], status: int
) -> None:
    """An upstream answering the upgrade with a bad accept key or garbage gives 502, counted as invalid."""
    server, port = await fake_upstream(answer)
    try:
        gw = make_gateway(f"ws://{HOST}:{port}", {"upstream": {"connect_timeout": "1s"}})
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(gw.url + "/ws/echo")
        assert info.value.status == status
        assert await gw.metric("ws_gateway_upstream_connects_total", result="invalid") >= 1
    finally:
        server.close()


async def test_dependency_failure_500_passed_through(gateway: GatewayProcess, upstream: Upstream) -> None:
    """A FastAPI dependency that raises before accept() gives HTTP 500, as uvicorn answered it."""
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gateway.url + "/ws/broken")
    assert info.value.status == 500


@pytest.mark.parametrize("upstream_status", [200, 302])
async def test_an_upstream_answer_that_is_no_refusal_is_502(
    make_gateway: Callable[..., GatewayProcess], upstream_status: int
) -> None:
    """An app answering the upgrade with a 2xx or 3xx (not 101) refused nothing a client can act on: 502,
    counted under 502, never the app's status copied into a refusal with a body."""
    server, port = await fake_upstream(
        lambda key: b"HTTP/1.1 %d Whatever\r\nContent-Length: 0\r\n\r\n" % upstream_status)
    try:
        gw = make_gateway(f"ws://{HOST}:{port}")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(gw.url + "/ws/echo")
        assert info.value.status == 502
        assert await gw.metric("ws_gateway_handshake_failures_total", status="502") == 1
    finally:
        server.close()
