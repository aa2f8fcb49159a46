"""Point 7: a client that stops reading holds bounded memory and is closed as a slow consumer."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.test_sizes import peak_rss_kib
from tests.support import GatewayProcess, RawClient, Upstream


async def test_client_that_stops_reading_is_bounded_then_closed(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """The app floods 128 MiB at a client that reads nothing: RSS stays flat, then close 1008 slow_consumer."""
    gw = make_gateway(upstream.url, {"client": {"max_buffered": "256KiB", "slow_consumer_timeout": "1s",
                                                "close_timeout": "500ms"}})
    before = peak_rss_kib(gw.pid)
    client = await RawClient.connect(gw.port, "/ws/flood?count=2000&size=65536")
    line = (await gw.wait_session_log(1, timeout=20))[0]
    growth_mib = (peak_rss_kib(gw.pid) - before) / 1024
    print(f"gateway peak RSS growth with a stalled client and a 128 MiB flood: {growth_mib:.1f} MiB")
    assert growth_mib < 16
    assert (line["client_code"], line["initiator"], line["cause"]) == (1008, "gateway", "slow_consumer")
    assert line["upstream_code"] == 1001
    assert line["bytes_out"] < 32 * 1024 * 1024, "the upstream was not read while the client was behind"
    assert await gw.metric("ws_gateway_closes_total", leg="client", code="1008", initiator="gateway",
                           cause="slow_consumer") == 1
    client.close()


async def test_slow_but_reading_client_gets_everything(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A client that reads, if slowly, is paced by backpressure and receives every message in order."""
    gw = make_gateway(upstream.url, {"client": {"max_buffered": "64KiB", "slow_consumer_timeout": "5s"}})
    client = await RawClient.connect(gw.port, "/ws/flood?count=300&size=20000")
    received = 0
    while received < 300:
        opcode, payload = await client.read_message()
        assert (opcode, len(payload)) == (2, 20000)
        received += 1
    client.close()
    line = (await gw.wait_session_log(1))[0]
    assert line["messages_out"] == 300
