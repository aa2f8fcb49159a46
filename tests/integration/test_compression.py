"""Issue 14: permessage-deflate terminated at the gateway, with real clients and a real uvicorn app.

Python ``websockets`` (which offers permessage-deflate by default), a raw client that reads the
reserved bits the gateway puts on the wire, an upstream SIGKILL and restart mid-stream, and the
loss/resume notices on a compressed session. Chromium and Node ``ws`` are in
``test_compression_clients.py``. The app always sees plain frames: the gateway never forwards
``Sec-WebSocket-Extensions`` (the /ws/request route shows what the app received).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import GatewayProcess, RawClient, Upstream, async_wait_until, client_frame, scaled

COMPRESSION = {"compression": {"enabled": True}}
AGREED = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
"""What the gateway answers the websockets client's default offer (client_max_window_bits, no value)."""


def chat_text(index: int) -> str:
    """A chat-like JSON message: compresses well, as the traffic compression is for."""
    return json.dumps({"type": "chat", "id": index, "room": "general", "user": f"user{index % 7}",
                       "text": f"message number {index}, the quick brown fox jumps over the lazy dog"})


async def open_compressed(gw: GatewayProcess, path: str = "/ws/echo", **kwargs: Any) -> ClientConnection:
    """A websockets client through the gateway, offering permessage-deflate (its default)."""
    return await connect(gw.url.replace("http", "ws") + path, open_timeout=scaled(10), ping_interval=None,
                         max_size=None, **kwargs)


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), scaled(10))


async def test_websockets_client_negotiates_and_exchanges_text_and_binary_byte_exact(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """The websockets client gets the agreement, and text, binary, empty and large messages come back exact."""
    gw = make_gateway(upstream.url, {"client": {**COMPRESSION, "max_frame_size": "16KiB"},
                                     "upstream": {"max_frame_size": "16KiB"}})
    rng = random.Random(14)
    messages: list[str | bytes] = [chat_text(i) for i in range(20)]
    messages += [b"", "", "é🙂 naïve", bytes(range(256)) * 8, rng.randbytes(1000)]
    # Larger than both legs' max_frame_size, compressed and plain: re-headed as fragments each way.
    messages += [rng.randbytes(200_000), "".join(chat_text(i) for i in range(3000))]
    ws = await open_compressed(gw)
    try:
        assert ws.response is not None and ws.response.headers["Sec-WebSocket-Extensions"] == AGREED
        for message in messages:
            await ws.send(message)
            echo = await recv(ws)
            assert type(echo) is type(message) and echo == message, (type(message), len(message))
    finally:
        await ws.close()
    assert await gw.metric("ws_gateway_compression_negotiations_total", result="negotiated") == 1
    # websockets compresses every message it sends, and so does the gateway (min_size 0).
    for direction in ("client_to_upstream", "upstream_to_client"):
        assert await gw.metric("ws_gateway_compressed_messages_total", direction=direction) == len(messages)
    wire = await gw.metric("ws_gateway_compressed_payload_bytes_total", direction="upstream_to_client", form="wire")
    plain = await gw.metric("ws_gateway_compressed_payload_bytes_total", direction="upstream_to_client",
                            form="plain")
    assert plain == sum(len(m.encode() if isinstance(m, str) else m) for m in messages)
    assert wire < plain * 0.9, (wire, plain)  # the random 200 kB does not shrink; the chat text does


async def test_app_sees_no_extension_header_and_clients_without_an_offer_run_plain(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """The offer stops at the gateway; a client that offers nothing gets no extension and plain frames."""
    gw = make_gateway(upstream.url, {"client": COMPRESSION})
    ws = await open_compressed(gw, "/ws/request")
    try:
        info = json.loads(await recv(ws))
        names = {name.lower() for name, _ in info["headers"]}
        assert "sec-websocket-extensions" not in names, info["headers"]
    finally:
        await ws.close()
    plain = await open_compressed(gw, compression=None)
    try:
        assert plain.response is not None and "Sec-WebSocket-Extensions" not in plain.response.headers
        await plain.send("uncompressed")
        assert await recv(plain) == "uncompressed"
    finally:
        await plain.close()
    assert await gw.metric("ws_gateway_compression_negotiations_total", result="negotiated") == 1
    assert await gw.metric("ws_gateway_compression_negotiations_total", result="not_offered") == 1


async def test_on_by_default_and_declined_when_switched_off(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A gateway with no compression settings agrees; with client.compression.enabled false it declines."""
    for settings, agreed in (({}, AGREED), ({"client": {"compression": {"enabled": False}}}, None)):
        gw = make_gateway(upstream.url, settings)
        ws = await open_compressed(gw)
        try:
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") == agreed, settings
            await ws.send(chat_text(1))
            assert await recv(ws) == chat_text(1)
        finally:
            await ws.close()
        result = "negotiated" if agreed else "declined"
        assert await gw.metric("ws_gateway_compression_negotiations_total", result=result) == 1, settings
        compressed = await gw.metric("ws_gateway_compressed_messages_total", direction="upstream_to_client")
        assert compressed == (1 if agreed else 0), settings


async def test_fragmented_compressed_message_from_the_client(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """A message the client compresses and sends as fragments (RSV1 on the first only) reaches the app whole."""
    gw = make_gateway(upstream.url, {"client": COMPRESSION})
    ws = await open_compressed(gw)
    try:
        parts = [chat_text(i) for i in range(50)]
        await ws.send(iter(parts))  # websockets: one frame per part, one compressed message
        assert await recv(ws) == "".join(parts)
        binary_parts = [bytes([i]) * 3000 for i in range(10)]
        await ws.send(iter(binary_parts))
        assert await recv(ws) == b"".join(binary_parts)
    finally:
        await ws.close()
    assert await gw.metric("ws_gateway_compressed_messages_total", direction="client_to_upstream") == 2


# --- the wire, read raw ------------------------------------------------------------------------


async def read_raw_frame(client: RawClient, timeout: float = 10) -> tuple[int, int, bytes]:
    """(first header byte, opcode, payload) of the next frame: unlike RawClient.read_frame, keeps RSV1."""
    b0, payload = await client.read_raw(timeout)
    return b0, b0 & 0x0F, payload


async def test_large_message_to_the_client_is_fragmented_as_rfc_7692_says(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """The app's large message goes out as fragments with RSV1 on the first frame only, and inflates back."""
    gw = make_gateway(upstream.url, {"client": {**COMPRESSION, "max_frame_size": "4KiB"}})
    client = await RawClient.connect(gw.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    try:
        assert client.status == 101 and "permessage-deflate; server_max_window_bits=12" in client.head, client.head
        payload = random.Random(7).randbytes(30_000)  # incompressible: the deflated message stays ~30 kB
        client.send(client_frame(0x2, payload))  # uncompressed from the client (allowed per message)
        frames = []
        while not frames or not frames[-1][0] & 0x80:
            frames.append(await read_raw_frame(client))
        assert len(frames) >= 7, len(frames)
        assert frames[0][0] & 0x40 and frames[0][1] == 0x2, "RSV1 and the opcode on the first frame"
        assert all(b0 & 0x70 == 0 and opcode == 0 for b0, opcode, _ in frames[1:]), "continuations: no RSV bits"
        assert all(len(data) <= 4096 for _, _, data in frames)
        inflater = zlib.decompressobj(-12)
        assert inflater.decompress(b"".join(data for _, _, data in frames) + b"\x00\x00\xff\xff") == payload
    finally:
        client.close()


async def test_bad_compressed_data_closes_with_1007_and_other_sessions_continue(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Data that does not inflate gets 1007 and is counted; a compressed session beside it goes on."""
    gw = make_gateway(upstream.url, {"client": COMPRESSION})
    bystander = await open_compressed(gw)
    client = await RawClient.connect(gw.port, headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    try:
        client.send(client_frame(0x1, b"\xff\xfe not deflate data", rsv=0x4))
        code, reason, _ = await client.read_until_close()
        assert code == 1007, (code, reason)
        await bystander.send("still here")
        assert await recv(bystander) == "still here"
    finally:
        client.close()
        await bystander.close()
    await async_wait_until(lambda: any(line.get("client_code") == 1007 for line in gw.session_logs()), 10,
                           "the 1007 session's log line")


async def test_messages_that_inflate_a_thousandfold_reach_the_app_whole_under_backpressure(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Four clients at once each send 16 kB that inflates to just under 16 MiB: inflating waits for the
    app to read (backpressure, gateway/core/inflate.py), and the app still gets every byte."""
    from bench.deflate_bomb import compressed_frame

    size = (16 << 20) - 1024
    frame = compressed_frame(size)
    gw = make_gateway(upstream.url, {"client": COMPRESSION})

    async def one() -> str:
        client = await RawClient.connect(gw.port, "/ws/big?size=1",
                                         headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
        try:
            client.send(frame)
            inflate = zlib.decompressobj(-15)
            answers = []
            while len(answers) < 2:  # the app's greeting, then the size it received
                b0, _, payload = await read_raw_frame(client, timeout=60)
                answers.append(inflate.decompress(payload + b"\x00\x00\xff\xff") if b0 & 0x40 else payload)
            return answers[1].decode()
        finally:
            client.close()

    assert len(frame) < 20_000
    assert await asyncio.gather(*(one() for _ in range(4))) == [str(size)] * 4
    assert await gw.metric("ws_gateway_compressed_payload_bytes_total", direction="client_to_upstream",
                           form="plain") == 4 * size


# --- an upstream kill mid-stream --------------------------------------------------------------


class CompressedSequencer:
    """Sends numbered chat messages at a steady pace over a compressed session; records the echoes."""

    def __init__(self, ws: ClientConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        self.echoed: list[int] = []
        self.notices: list[str] = []
        self.closed: ConnectionClosed | None = None

    def text(self, seq: int) -> str:
        return json.dumps({"client": self.index, "seq": seq, "body": chat_text(seq)})

    async def send(self, count: int, interval: float) -> None:
        for seq in range(count):
            if self.closed is not None:
                return
            await self.ws.send(self.text(seq))
            await asyncio.sleep(interval)

    async def receive(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)
                if message.startswith("{"):
                    data = json.loads(message)
                    if "seq" in data:
                        assert data["client"] == self.index and message == self.text(data["seq"]), message
                        self.echoed.append(int(data["seq"]))
                        continue
                self.notices.append(message)
        except ConnectionClosed as closed:
            self.closed = closed


@pytest.mark.timeout(int(scaled(120)))
async def test_upstream_sigkill_and_restart_mid_stream_keeps_every_later_message_decodable(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """SIGKILL the app while 10 compressed sessions stream, restart it: no client closes, every message
    after the restart inflates (context takeover carries on across the new upstream), the loss and
    resume notices arrive as valid frames between compressed ones, echoes stay in order."""
    app = make_upstream()
    gw = make_gateway(app.url, {"client": COMPRESSION, "reconnect": {
        "notify_loss": "upstream lost", "notify_resume": '{{"type": "resumed", "replayed": {replayed}}}'}})
    count, interval = 120, 0.03
    runners = [CompressedSequencer(await open_compressed(gw), i) for i in range(10)]
    receivers = [asyncio.ensure_future(runner.receive()) for runner in runners]
    try:

        def outage() -> None:
            import time

            time.sleep(0.8)  # traffic flows first (this runs in a thread)
            app.signal(signal.SIGKILL)
            app.process.wait(timeout=scaled(20))
            time.sleep(1.0)
            make_upstream(port=app.port)

        await asyncio.gather(*(runner.send(count, interval) for runner in runners), asyncio.to_thread(outage))
        await async_wait_until(lambda: all(r.closed is not None or (r.echoed and r.echoed[-1] == count - 1)
                                           for r in runners), 20, "the last echoes")
        for runner in runners:
            assert runner.closed is None, (runner.index, runner.closed)
            assert runner.echoed == sorted(set(runner.echoed)), "in order, each at most once"
            missing = set(range(count)) - set(runner.echoed)
            assert len(missing) <= 5 and max(missing, default=0) < count - 20, (runner.index, sorted(missing))
            assert runner.notices[0] == "upstream lost", runner.notices
            assert json.loads(runner.notices[-1])["type"] == "resumed", runner.notices
    finally:
        for runner in runners:
            await runner.ws.close()
        await asyncio.gather(*receivers, return_exceptions=True)
    assert await gw.metric("ws_gateway_sessions_resumed_total") == 10
    lines = await gw.wait_session_log(10)
    assert all(line["client_code"] == 1000 and line["reconnects"] == 1 for line in lines), lines
    assert all(line["compressed"] for line in lines), lines

