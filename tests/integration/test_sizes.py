"""Point 6: message limits (1009), fragmentation both ways, and 64 MiB messages streamed in bounded memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.core.codec import Opcode
from tests.support import GatewayProcess, RawClient, Upstream, client_frame, scaled


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_client_message_over_limit_gets_1009(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A client message over upstream.max_message_size: client 1009 with a reason, app a clean 1001."""
    gw = make_gateway(upstream.url, {"upstream": {"max_message_size": "64KiB"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        await ws.send_bytes(b"x" * (64 * 1024))
        assert len((await ws.receive(timeout=scaled(10))).data) == 64 * 1024, "exactly the limit passes"
        await ws.send_bytes(b"x" * (64 * 1024 + 1))
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    assert "over the limit of 65536" in msg.extra
    line = (await gw.wait_session_log(1))[0]
    assert (line["client_code"], line["upstream_code"], line["cause"], line["initiator"]) == \
        (1009, 1001, "message_too_big", "gateway")
    assert await gw.metric("ws_gateway_oversize_refusals_total", leg="client") == 1
    assert await gw.metric("ws_gateway_closes_total", leg="client", code="1009", initiator="gateway",
                           cause="message_too_big") == 1


async def test_upstream_message_over_limit_closes_upstream_with_1009(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """An app message over client.max_message_size: the upstream leg gets 1009, the client a clean 1001."""
    gw = make_gateway(upstream.url, {"client": {"max_message_size": "100KiB"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/big?size=200000") as ws:
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert "over the limit" in msg.extra
    line = (await gw.wait_session_log(1))[0]
    assert (line["upstream_code"], line["client_code"], line["cause"]) == (1009, 1001, "message_too_big")
    assert await gw.metric("ws_gateway_oversize_refusals_total", leg="upstream") == 1


async def test_large_message_reaches_client_as_fragments(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """With client.max_frame_size 16KiB, a 50,000-byte app message arrives as fragments of at most 16 KiB."""
    gw = make_gateway(upstream.url, {"client": {"max_frame_size": "16KiB"}})
    client = await RawClient.connect(gw.port, "/ws/big?size=50000")
    frames = []
    while not frames or not frames[-1][0]:
        frames.append(await client.read_frame())
    # Fragments end at 16 KiB or earlier, where a read from the app ended (every write is whole frames).
    assert len(frames) >= 4 and all(len(p) <= 16384 for _, _, p in frames)
    assert frames[0][1] == Opcode.BINARY and all(op == Opcode.CONTINUATION for _, op, _ in frames[1:])
    assert [fin for fin, _, _ in frames].count(True) == 1
    assert b"".join(p for _, _, p in frames) == b"b" * 50000
    client.close()
    assert await gw.metric("ws_gateway_fragmented_messages_total", direction="upstream_to_client") == 1


async def test_fragments_to_upstream_and_interleaved_control_frames(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """uvicorn reassembles the gateway's fragments; a client's own fragments with a ping between pass too."""
    gw = make_gateway(upstream.url, {"upstream": {"max_frame_size": "16KiB"}})
    client = await RawClient.connect(gw.port, "/ws/big?size=1")
    await client.read_message()
    payload = os.urandom(100_000)
    client.send(client_frame(Opcode.BINARY, payload))
    assert (await client.read_message())[1] == b"100000"
    client.send(client_frame(Opcode.BINARY, payload[:70_000], fin=False))
    client.send(client_frame(Opcode.PING, b"mid-message"))
    client.send(client_frame(Opcode.CONTINUATION, payload[70_000:], fin=True))
    answers = [await client.read_frame(), await client.read_frame()]
    assert (True, Opcode.PONG, b"mid-message") in answers
    assert (True, Opcode.TEXT, b"100000") in answers
    client.close()
    assert await gw.metric("ws_gateway_fragmented_messages_total", direction="client_to_upstream") == 2


async def test_64_mib_messages_stream_in_bounded_memory(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """64 MiB each way passes intact while the gateway's peak RSS grows by far less than 64 MiB."""
    size = 64 * 1024 * 1024
    big_upstream = Upstream(tmp_path, extra=["--ws-max-size", str(size + 1024)])
    try:
        gw = make_gateway(big_upstream.url, {"client": {"max_message_size": "80MiB"},
                                             "upstream": {"max_message_size": "80MiB"}})
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(gw.url + "/ws/big?size=10") as ws:  # warm-up
                await ws.receive(timeout=scaled(10))
            before = peak_rss_kib(gw.pid)
            async with http.ws_connect(gw.url + f"/ws/big?size={size}", max_msg_size=0) as ws:
                down = await ws.receive(timeout=scaled(60))
                assert len(down.data) == size and down.data[:1] == b"b"
                del down
                await ws.send_bytes(b"u" * size)
                assert (await ws.receive(timeout=scaled(60))).data == str(size)
        growth_mib = (peak_rss_kib(gw.pid) - before) / 1024
        print(f"gateway peak RSS growth relaying 64 MiB each way: {growth_mib:.1f} MiB")
        assert growth_mib < 16, f"peak RSS grew {growth_mib:.1f} MiB"
    finally:
        big_upstream.stop()
