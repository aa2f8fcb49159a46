"""Point 10: admin endpoints, the metric names and labels (golden file), live counters at scrape time."""

from __future__ import annotations

import aiohttp

from tests.support import GatewayProcess, scaled


async def test_admin_endpoints(gateway: GatewayProcess) -> None:
    """/healthz and /readyz answer 200 with a reachable upstream; /metrics is Prometheus text."""
    async with aiohttp.ClientSession() as http:
        for path, expected in (("/healthz", "ok"), ("/readyz", "ready")):
            async with http.get(gateway.admin + path) as response:
                assert response.status == 200
                assert (await response.text()).strip() == expected
        async with http.get(gateway.admin + "/metrics") as response:
            assert response.status == 200
            assert "ws_gateway_closes_total" in await response.text()


async def test_traffic_counters_visible_while_session_is_open(gateway: GatewayProcess) -> None:
    """Messages and bytes of an open session show at scrape time (read from the session, not per message)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/echo") as ws:
        for _ in range(10):
            await ws.send_bytes(b"0123456789")
            await ws.receive(timeout=scaled(5))
        samples = await gateway.metrics()
        assert samples[("ws_gateway_messages_total", (("direction", "client_to_upstream"),))] == 10
        assert samples[("ws_gateway_messages_total", (("direction", "upstream_to_client"),))] == 10
        assert samples[("ws_gateway_payload_bytes_total", (("direction", "client_to_upstream"),))] == 100
        assert samples[("ws_gateway_sessions_open", ())] == 1
    await gateway.wait_session_log(1)
    samples = await gateway.metrics()
    assert samples[("ws_gateway_sessions_open", ())] == 0
    assert samples[("ws_gateway_messages_total", (("direction", "client_to_upstream"),))] == 10, "folded at close"
    assert samples[("ws_gateway_sessions_total", ())] == 1


async def test_session_log_line_fields(gateway: GatewayProcess) -> None:
    """The closing log line is JSON with every field an operator needs."""
    async with aiohttp.ClientSession() as http, http.ws_connect(gateway.url + "/ws/echo?secret=1") as ws:
        await ws.send_str("abc")
        await ws.receive(timeout=scaled(5))
        await ws.close(code=1000, message=b"done")
    line = (await gateway.wait_session_log(1))[0]
    assert set(line) >= {"ts", "level", "session_id", "client_ip", "path", "client_code", "client_reason",
                         "upstream_code", "upstream_reason", "initiator", "cause", "duration", "messages_in",
                         "bytes_in", "messages_out", "bytes_out"}
    assert line["path"] == "/ws/echo", "no query string in logs"
    assert (line["client_code"], line["client_reason"], line["cause"]) == (1000, "done", "normal")
    assert (line["messages_in"], line["bytes_in"], line["messages_out"], line["bytes_out"]) == (1, 3, 1, 3)
