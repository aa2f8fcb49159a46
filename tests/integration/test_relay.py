"""Point 2 of the core issue: what is relayed, byte-exact, and how handshakes are refused."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp
import pytest

from tests.support import GatewayProcess, Upstream, async_wait_until, free_port, request_headers, scaled


async def test_text_and_binary_relayed_byte_exact_in_order(gateway: GatewayProcess) -> None:
    """Text and binary messages come back unchanged and in the order they were sent."""
    messages: list[str | bytes] = []
    for i in range(200):
        messages.append(f"text {i} ünïcödé" if i % 2 else bytes(range(i % 256)) * (i % 7 + 1))
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/echo") as ws:
        for message in messages:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_bytes(message)
        received = []
        for _ in messages:
            msg = await ws.receive(timeout=scaled(10))
            received.append(msg.data)
    assert received == messages


async def test_path_query_and_headers_forwarded(gateway: GatewayProcess) -> None:
    """Path and query reach the upstream; app headers pass, hop-by-hop ones do not; X-Forwarded-* are set."""
    headers = {"Cookie": "session=abc", "Authorization": "Bearer t0k", "X-Custom": "yes",
               "Keep-Alive": "timeout=5", "X-Forwarded-For": "6.6.6.6", "X-Request-ID": "spoofed-id"}
    async with aiohttp.ClientSession() as http, http.ws_connect(
        gateway.url + "/ws/request?room=7&user=%C3%A9", headers=headers
    ) as ws:
        info = json.loads((await ws.receive(timeout=scaled(10))).data)
    seen = request_headers(info)
    assert info["path"] == "/ws/request"
    assert info["query"] == "room=7&user=%C3%A9"
    assert seen["cookie"] == "session=abc"
    assert seen["authorization"] == "Bearer t0k"
    assert seen["x-custom"] == "yes"
    assert "keep-alive" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1", "an untrusted peer's X-Forwarded-For must be replaced"
    assert seen["x-request-id"] != "spoofed-id" and len(seen["x-request-id"]) == 32
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert "permessage-deflate" not in seen.get("sec-websocket-extensions", "")


async def test_trusted_proxy_headers_kept(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> None:
    """From a trusted proxy, X-Forwarded-For is appended to and X-Request-ID kept; the log has the client IP."""
    gw = make_gateway(upstream.url, {"proxy": {"trusted_proxies": ["127.0.0.0/8"]}})
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "req-42", "X-Forwarded-Proto": "https"}
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/request", headers=headers) as ws:
        info = json.loads((await ws.receive(timeout=scaled(10))).data)
    seen = request_headers(info)
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-request-id"] == "req-42"
    assert seen["x-forwarded-proto"] == "https"
    assert (await gw.wait_session_log(1))[0]["client_ip"] == "203.0.113.9"


async def test_subprotocol_offer_and_choice(gateway: GatewayProcess) -> None:
    """The client's offer goes upstream and the upstream's choice comes back."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gateway.url + "/ws/echo", protocols=("x.unknown", "chat.v1")) as ws:
            assert ws.protocol == "chat.v1"
        async with http.ws_connect(gateway.url + "/ws/echo") as ws:
            assert ws.protocol is None


async def test_upstream_refusal_status_passed_through(gateway: GatewayProcess) -> None:
    """A 403 from a FastAPI dependency reaches the client as 403, counted by status."""
    before = await gateway.metric("ws_gateway_handshake_failures_total", status="403")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gateway.url + "/ws/forbidden")
        assert info.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gateway.url + "/ws/no-such-route")
        assert info.value.status == 403  # Starlette refuses unknown WebSocket routes with 403
    assert await gateway.metric("ws_gateway_handshake_failures_total", status="403") == before + 2
    assert await gateway.metric("ws_gateway_upstream_connects_total", result="rejected") >= 2


async def test_refusal_close_mode_sends_4000_plus_status(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """With refusal: close, the upgrade succeeds and the client reads close 4403 with a reason."""
    gw = make_gateway(upstream.url, {"client": {"refusal": "close"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/forbidden") as ws:
        msg = await ws.receive(timeout=scaled(10))
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 4403
    assert "403" in msg.extra


async def test_upstream_unreachable_is_502(make_gateway: Callable[..., GatewayProcess]) -> None:
    """Nothing listening upstream: the client waits connect_timeout, then gets 502; the failures are counted."""
    gw = make_gateway(f"ws://127.0.0.1:{free_port()}", {"upstream": {"connect_timeout": "1s"}})
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(gw.url + "/ws/echo")
        assert info.value.status == 502
        async with http.get(gw.admin + "/readyz") as response:
            assert response.status == 503
    assert await gw.metric("ws_gateway_upstream_connects_total", result="refused") >= 2, "retried meanwhile"
    assert await gw.metric("ws_gateway_handshake_failures_total", status="502") == 1


async def test_plain_http_gets_426(gateway: GatewayProcess) -> None:
    """A plain HTTP request on the traffic port gets a clear 426, not a relay attempt."""
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/anything") as response:
        assert response.status == 426
        assert "WebSocket" in await response.text()


async def test_subprotocol_offer_the_app_ignores_is_logged(gateway: GatewayProcess) -> None:
    """Client offers chat.v1, the app picks none: relayed as is (RFC 6455 allows it), one line says browsers fail."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gateway.url + "/ws/request", protocols=("chat.v1",))
        assert ws.protocol is None
        await ws.close()
    await async_wait_until(lambda: "chose none; browsers drop such a connection" in gateway.output(), 10,
                           "the subprotocol line")
    assert gateway.output().count("chose none") == 1
