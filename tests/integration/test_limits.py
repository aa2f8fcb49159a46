"""Point 8: session limit, origin allowlist, header size, handshake timeout and malformed frames."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from gateway.core.codec import Opcode
from tests.support import HOST, GatewayProcess, RawClient, Upstream, client_frame, free_port, scaled


async def handshake_status(url: str, headers: dict[str, str] | None = None) -> int:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(url, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def test_session_limit_gives_503(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    """With max_sessions 2, a third client gets 503 until a slot frees."""
    gw = make_gateway(upstream.url, {"max_sessions": 2})
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(gw.url + "/ws/echo")
        second = await http.ws_connect(gw.url + "/ws/echo")
        assert await handshake_status(gw.url + "/ws/echo") == 503
        await first.close()
        await gw.wait_session_log(1)
        assert await handshake_status(gw.url + "/ws/echo") == 101
        await second.close()
    assert await gw.metric("ws_gateway_handshake_failures_total", status="503") == 1


async def test_origin_allowlist(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    """Listed origins pass, others get 403; a request with no Origin (non-browser) passes."""
    gw = make_gateway(upstream.url, {"client": {"allowed_origins": ["https://app.example.com"]}})
    assert await handshake_status(gw.url + "/ws/echo", {"Origin": "https://app.example.com"}) == 101
    assert await handshake_status(gw.url + "/ws/echo", {"Origin": "https://evil.example.net"}) == 403
    assert await handshake_status(gw.url + "/ws/echo") == 101


async def test_header_size_limit(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    """Headers over client.max_header_size are refused before anything is sent upstream."""
    gw = make_gateway(upstream.url, {"client": {"max_header_size": "4KiB"}})
    many = {f"X-Pad-{i}": "v" * 100 for i in range(50)}
    assert await handshake_status(gw.url + "/ws/echo", many) == 431
    assert await handshake_status(gw.url + "/ws/echo", {"X-Huge": "v" * 5000}) in (400, 431)
    assert await gw.metric("ws_gateway_upstream_connects_total", result="ok") == 0


async def test_silent_upstream_times_out_with_504(make_gateway: Callable[..., GatewayProcess]) -> None:
    """An upstream that accepts TCP and never answers the upgrade gives 504 within the timeout."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    port = free_port()
    server = await asyncio.start_server(never_answer, HOST, port)
    try:
        gw = make_gateway(f"ws://{HOST}:{port}", {"upstream": {"connect_timeout": "500ms"}})
        started = asyncio.get_running_loop().time()
        assert await handshake_status(gw.url + "/ws/echo") == 504
        assert asyncio.get_running_loop().time() - started < scaled(5)
        assert await gw.metric("ws_gateway_upstream_connects_total", result="timeout") == 1
    finally:
        server.close()
        for writer in held:
            writer.close()


@pytest.mark.parametrize(
    "bad_frame",
    [
        client_frame(Opcode.TEXT, b"unmasked", masked=False),
        client_frame(Opcode.TEXT, b"rsv", rsv=2),
        client_frame(0x5, b"opcode"),
        client_frame(Opcode.PING, b"p" * 126),
        client_frame(Opcode.CLOSE, b"\x03\xed"),
    ],
    ids=["unmasked", "rsv", "opcode", "long-ping", "close-1005"],
)
async def test_malformed_client_frame_closes_only_that_session(
    gateway: GatewayProcess, bad_frame: bytes
) -> None:
    """A malformed frame gets that client 1002 (counted); another client on the same gateway keeps working."""
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/echo") as healthy:
        bad = await RawClient.connect(gateway.port, "/ws/echo")
        bad.send(bad_frame)
        code, _, _ = await bad.read_until_close()
        assert code == 1002
        await healthy.send_str("unaffected")
        assert (await healthy.receive(timeout=scaled(5))).data == "unaffected"
        bad.close()
    lines = await gateway.wait_session_log(2)
    line = next(entry for entry in lines if entry["client_code"] != 1000)
    assert (line["client_code"], line["cause"], line["upstream_code"]) == (1002, "protocol_error", 1001)
    assert await gateway.metric("ws_gateway_protocol_errors_total", leg="client") == 1
