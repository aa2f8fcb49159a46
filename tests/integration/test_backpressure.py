"""Point 7: a client that stops reading holds bounded memory and is closed as a slow consumer."""

from __future__ import annotations

from collections.abc import Callable

from tests.integration.test_sizes import peak_rss_kib
from tests.support import GatewayProcess, RawClient, Upstream, async_wait_until, client_frame


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


async def test_stalled_clients_receive_their_1008_close_frame(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Ten clients stop reading while the app floods them; each later finds a 1008 close frame, not a bare EOF."""
    gw = make_gateway(upstream.url, {"client": {"max_buffered": "256KiB", "slow_consumer_timeout": "500ms",
                                                "close_timeout": "20s"}})
    clients = [await RawClient.connect(gw.port, "/ws/flood?count=2000&size=65536") for _ in range(10)]
    await async_wait_until(lambda: gw.output().count("with its buffer full; closing") >= len(clients), 20,
                           "the gateway to give up on every stalled client")
    for client in clients:
        code, reason, _ = await client.read_until_close(timeout=20)
        assert (code, reason) == (1008, "slow consumer: client is not reading")
        client.send(client_frame(0x8, code.to_bytes(2, "big")))
        assert await client.at_eof(), "the gateway closes TCP once the close handshake is done"
    lines = await gw.wait_session_log(len(clients), timeout=20)
    assert {(line["client_code"], line["cause"]) for line in lines} == {(1008, "slow_consumer")}
    assert all(line["client_close"].startswith("sent 1008 (policy violation) slow consumer") for line in lines)
