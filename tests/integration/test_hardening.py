"""Hostile clients (issue 9): spoofed headers, slow request heads, log floods, lax upgrades, a noisy address."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from tests.support import HOST, GatewayProcess, Upstream, async_wait_until, read_request_info, scaled

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def raw_status(port: int, request: bytes, timeout: float = 10) -> tuple[int, str]:
    """Send ``request`` as it is; return the status and the head of the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(timeout))
        text = head.decode("latin-1")
        return int(text.split(" ", 2)[1]), text
    finally:
        writer.close()


def upgrade(path: str = "/ws/echo", extra: str = "", version: str = "HTTP/1.1") -> bytes:
    return (f"GET {path} {version}\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


async def test_spoofed_gateway_headers_never_reach_the_app(gateway: GatewayProcess) -> None:
    """A client's X-Gateway-Session-Id / X-Gateway-Reconnect / X-Forwarded-For are dropped; the app sees one of each."""
    spoof = {"X-Gateway-Session-Id": "victim", "X-Gateway-Reconnect": "1", "X-Forwarded-For": "6.6.6.6",
             "X-Real-IP": "6.6.6.6"}
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/request", headers=spoof) as ws:
        info = await read_request_info(ws)
    names = [name.lower() for name, _ in info["headers"]]
    values = {name.lower(): value for name, value in info["headers"]}
    assert names.count("x-gateway-session-id") == 1 and values["x-gateway-session-id"] != "victim"
    assert "x-gateway-reconnect" not in names
    assert names.count("x-forwarded-for") == 1 and values["x-forwarded-for"] == "127.0.0.1"
    assert "x-real-ip" not in names


async def test_slow_request_heads_are_cut_at_the_deadline_and_bounded(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Connections trickling their request head get 408 at handshake_timeout; past max_sessions new ones get 503."""
    gw = make_gateway(upstream.url, {"max_sessions": 30, "client": {"handshake_timeout": "1s"}})
    streams = [await asyncio.open_connection(HOST, gw.port) for _ in range(20)]
    started = time.monotonic()
    for _, writer in streams:
        writer.write(b"GET /ws/echo HTTP/1.1\r\nHo")  # and never more

    async def answer(reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.read(), scaled(10))

    # 20 heads wait: 10 more fit under max_sessions 30, the 11th does not.
    extra = [await asyncio.open_connection(HOST, gw.port) for _ in range(11)]
    refused = await answer(extra[-1][0])
    assert refused.startswith(b"HTTP/1.1 503"), refused
    answers = await asyncio.gather(*(answer(reader) for reader, _ in streams))
    elapsed = time.monotonic() - started
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
    assert elapsed < scaled(1) + scaled(3), f"cut after {elapsed:.1f}s"
    for _, writer in streams + extra:
        writer.close()
    await async_wait_until_async(lambda: gw.metric("ws_gateway_handshake_failures_total", status="408"), 20)
    assert await gw.metric("ws_gateway_handshake_failures_total", status="503") >= 1
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        await ws.send_str("still serving")
        assert (await asyncio.wait_for(ws.receive(), scaled(10))).data == "still serving"


async def async_wait_until_async(read: Callable[[], object], expected: float, timeout: float = 10) -> None:
    """Poll an async metric read until it reaches ``expected``."""
    deadline = time.monotonic() + scaled(timeout)
    value = 0.0
    while time.monotonic() < deadline:
        value = await read()  # type: ignore[misc]
        if value >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"metric stayed at {value}, expected {expected}")


async def test_malformed_requests_make_one_quiet_line_and_are_counted(gateway: GatewayProcess) -> None:
    """200 malformed requests: no traceback, at most a couple of rate-limited warning lines, all counted by status."""
    before = await gateway.metric("ws_gateway_handshake_failures_total", status="400")
    for index in range(200):
        status, _ = await raw_status(gateway.port, f"GARBAGE\x01 {index} \r\n\r\n".encode())
        assert status == 400
    await async_wait_until_async(lambda: gateway.metric("ws_gateway_handshake_failures_total", status="400"),
                                 before + 200)
    log = gateway.output()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "malformed request from" in line]
    assert 1 <= len(lines) <= 3, lines
    assert "\\u0001" not in "".join(lines), "client bytes are sanitised before they are logged"


async def test_lax_upgrades_are_refused_with_the_right_status(gateway: GatewayProcess) -> None:
    """HTTP/1.0, two keys, two versions, a chunked body: 400; version 8: 426 naming 13 (RFC 6455 4.2.1)."""
    cases = [
        (upgrade(version="HTTP/1.0"), 400),
        (upgrade(extra="Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), 400),
        (upgrade(extra="Sec-WebSocket-Version: 8\r\n"), 400),
        (upgrade(extra="Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 400),
        (upgrade().replace(b"Version: 13", b"Version: 8"), 426),
    ]
    for request, expected in cases:
        status, head = await raw_status(gateway.port, request)
        assert status == expected, (request, head)
        if expected == 426:
            assert "Sec-WebSocket-Version: 13" in head


async def test_absolute_form_target_reaches_the_app_as_a_path(gateway: GatewayProcess) -> None:
    """GET http://evil.example/ws/request?x: upgraded, and the app sees /ws/request?x with its own Host."""
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    try:
        writer.write(upgrade("http://evil.example/ws/request?x=1"))
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))).decode("latin-1")
        assert head.startswith("HTTP/1.1 101"), head
        first = await asyncio.wait_for(reader.readexactly(2), scaled(10))
        length = first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        body = (await reader.readexactly(length)).decode()
    finally:
        writer.close()
    assert '"path":"/ws/request"' in body.replace(" ", "") and '"query":"x=1"' in body.replace(" ", "")
    assert "evil.example" not in body


async def test_one_noisy_address_is_limited(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    """With max_sessions_per_client 2, a third session from the same address gets 429; a freed slot is reusable."""
    gw = make_gateway(upstream.url, {"client": {"max_sessions_per_client": 2}})
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(gw.url + "/ws/echo")
        second = await http.ws_connect(gw.url + "/ws/echo")
        status, _ = await raw_status(gw.port, upgrade())
        assert status == 429
        await first.close()
        await async_wait_until(lambda: len(gw.session_logs()) >= 1, 10, "the first session to end")
        third = await http.ws_connect(gw.url + "/ws/echo")
        await third.send_str("ok")
        assert (await asyncio.wait_for(third.receive(), scaled(10))).data == "ok"
        await second.close()
        await third.close()
    assert await gw.metric("ws_gateway_handshake_failures_total", status="429") == 1
