"""Issue 11: client resume through a TCP proxy that cuts the client's connection mid-stream.

Real parts: the gateway, uvicorn with ``tests/recording_app.py`` (which writes ``open``, every
message it receives and ``closed <code>`` to a file per client, so the test sees what the app saw),
the Python helper ``clients/python/resumable_websocket.py``, and a proxy in this process that
relays the client's TCP connections to the gateway and, on ``cut()``, aborts them (no close frame,
as when a phone changes networks), optionally refusing new ones for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from clients.python.resumable_websocket import MARKER, RESUME_REFUSED, ResumableWebSocket, ResumeReset
from tests.support import HOST, GatewayProcess, RawClient, Upstream, async_wait_until, client_frame, scaled

RESUME = {"resume": {"grace": "3s", "confirm_interval": "100ms"}}


class CuttingProxy:
    """A loopback TCP relay whose connections can be cut at once (aborted, no FIN exchange)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        """Where new connections go (a test may point it at another gateway)."""
        self.port = 0
        self.accepted = 0
        self.refusing = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def cut(self) -> None:
        """Abort every relayed connection, both sides."""
        for client, server in list(self._pairs):
            client.transport.abort()
            server.transport.abort()
        self._pairs.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.accepted += 1
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(HOST, self.target_port)
        pair = (client_writer, server_writer)
        self._pairs.add(pair)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        try:
            await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
        finally:
            self._pairs.discard(pair)


@contextlib.asynccontextmanager
async def proxied(gw: GatewayProcess) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy(gw.port) as proxy:
        yield proxy


async def exchange(ws: ResumableWebSocket, count: int, ticks: int, proxy: CuttingProxy, cuts: list[float],
                   interval: float = 0.01) -> list[str]:
    """Send ``count`` numbered messages while reading everything; cut the connection at the given
    fractions of the sending; return what arrived (echoes and ticks) once all is in."""
    received: list[str] = []

    async def reader() -> None:
        while True:
            message = await ws.recv()
            assert isinstance(message, str)
            received.append(message)
            if sum(m.startswith("echo:") for m in received) == count and \
                    sum(m.startswith("tick:") for m in received) == ticks:
                return

    reading = asyncio.ensure_future(reader())
    cut_at = {int(count * fraction) for fraction in cuts}
    for seq in range(count):
        if seq in cut_at:
            proxy.cut()
        await ws.send(f"m{seq}")
        await asyncio.sleep(interval)
    await asyncio.wait_for(reading, scaled(30))
    return received


def app_saw(records: Path, client: int) -> list[str]:
    path = records / f"{client}.txt"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.timeout(int(scaled(90)))
async def test_cuts_mid_stream_are_resumed_exactly_once_in_order_and_the_app_sees_one_connection(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """Three cuts while both sides send: every message once, in order, both ways; one app connection."""
    app, records = record_app
    gw = make_gateway(app.url, RESUME)
    count, ticks = 200, 150
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=1&ticks={ticks}&interval_ms=15")
        await ws.connect()
        received = await exchange(ws, count, ticks, proxy, cuts=[0.2, 0.5, 0.8])
        await ws.close()
    echoes = [m for m in received if m.startswith("echo:")]
    assert echoes == [f"echo:m{seq}" for seq in range(count)]
    assert [m for m in received if m.startswith("tick:")] == [f"tick:{n}" for n in range(1, ticks + 1)]
    assert ws.resumes == 3 and proxy.accepted == 4
    await async_wait_until(lambda: app_saw(records, 1)[-1:] == ["closed 1000"], 10, "the app to see the close")
    assert app_saw(records, 1) == ["open", *(f"m{seq}" for seq in range(count)), "closed 1000"]
    assert await gw.metric("ws_gateway_client_resumes_total", result="resumed") == 3
    assert await gw.metric("ws_gateway_client_gap_seconds_count") == 3
    lines = await gw.wait_session_log(1)
    assert lines[0]["client_code"] == 1000 and lines[0]["messages_in"] == count and lines[0]["client_resumes"] == 3


@pytest.mark.timeout(int(scaled(60)))
async def test_confirmations_keep_the_replay_log_small_so_a_long_session_still_resumes(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """Ten times resume.buffer_bytes of echoes before the cut: confirmation pings trimmed the log, so it resumes."""
    app, records = record_app
    gw = make_gateway(app.url, {"resume": {"grace": "3s", "buffer_bytes": "32KiB", "confirm_interval": "50ms"}})
    payload = "x" * 1000
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=4")
        await ws.connect()
        for seq in range(320):  # 320 kB echoed, over about 1.6 s
            await ws.send(f"{seq}:{payload}")
            assert await ws.recv() == f"echo:{seq}:{payload}"
            await asyncio.sleep(0.005)
        proxy.cut()
        await ws.send("after the cut")
        assert await ws.recv() == "echo:after the cut"
        assert ws.resumes == 1
        await ws.close()
    assert await gw.metric("ws_gateway_client_resumes_total", result="resumed") == 1
    await async_wait_until(lambda: app_saw(records, 4)[-1:] == ["closed 1000"], 10, "the close")
    assert app_saw(records, 4).count("open") == 1


@pytest.mark.timeout(int(scaled(60)))
async def test_a_cut_longer_than_the_grace_period_resets_and_the_app_hears_a_client_loss(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    app, records = record_app
    gw = make_gateway(app.url, {"resume": {"grace": "1s"}})
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=2")
        await ws.connect()
        await ws.send("before")
        assert await ws.recv() == "echo:before"
        proxy.refusing = True
        proxy.cut()
        await async_wait_until(lambda: "closed 1001" in app_saw(records, 2), 10, "the app to hear the client loss")
        proxy.refusing = False
        with pytest.raises(ResumeReset):
            await asyncio.wait_for(ws.recv(), scaled(10))
    assert app_saw(records, 2) == ["open", "before", "closed 1001"]
    assert await gw.metric("ws_gateway_client_resumes_total", result="expired") == 1
    lines = await gw.wait_session_log(1)
    # the same close as a plain client that drops: 1001 to the app, cause abnormal (docs/metrics.md)
    assert lines[0]["upstream_code"] == 1001 and lines[0]["cause"] == "abnormal", lines[0]


@pytest.mark.timeout(int(scaled(60)))
async def test_the_app_sending_past_the_buffer_while_the_client_is_away_ends_the_session_at_once(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """resume.buffer_bytes bounds what an absent client costs: past it the app's leg is closed (1001) before
    the grace period ends, counted as overflow, and the late resume gets 4410."""
    app, records = record_app
    gw = make_gateway(app.url, {"resume": {"grace": "20s", "buffer_bytes": "16KiB", "confirm_interval": "50ms"}})
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=10&ticks=400&interval_ms=5&pad=500")
        await ws.connect()
        assert str(await ws.recv()).startswith("tick:1|")
        proxy.refusing = True
        proxy.cut()
        # 400 ticks of ~510 bytes take about 2 s: far sooner than the 20 s grace.
        await async_wait_until(lambda: "closed 1001" in app_saw(records, 10), 10, "the app's leg to be closed")
        assert await gw.metric("ws_gateway_client_resumes_total", result="overflow") == 1
        proxy.refusing = False
        with pytest.raises(ResumeReset):
            while True:
                await asyncio.wait_for(ws.recv(), scaled(10))
    assert await gw.metric("ws_gateway_client_resumes_total", result="refused") == 1


@pytest.mark.timeout(int(scaled(60)))
async def test_a_resume_that_reaches_another_gateway_is_refused_and_the_first_session_expires(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """Without affinity the resume lands on another pod: 4410 there (same as an unknown token), and the
    session on the first pod ends after its grace period as a client loss."""
    app, records = record_app
    first = make_gateway(app.url, {"resume": {"grace": "2s"}})
    other = make_gateway(app.url, {"resume": {"grace": "2s"}})
    async with proxied(first) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=11")
        await ws.connect()
        await ws.send("one")
        assert await ws.recv() == "echo:one"
        proxy.target_port = other.port
        proxy.cut()
        with pytest.raises(ResumeReset, match="resume refused"):
            await asyncio.wait_for(ws.recv(), scaled(10))
    assert await other.metric("ws_gateway_client_resumes_total", result="refused") == 1
    await async_wait_until(lambda: "closed 1001" in app_saw(records, 11), 15, "the first session to expire")
    assert await first.metric("ws_gateway_client_resumes_total", result="expired") == 1
    assert app_saw(records, 11) == ["open", "one", "closed 1001"]


async def resume_with(gw: GatewayProcess, token: str, received: int = 0) -> tuple[int, str]:
    client = await RawClient.connect(gw.port, "/ws/stream?client=9", headers={
        "Sec-WebSocket-Protocol": f"{MARKER}, ws-gateway.resume.{token}.{received}"})
    try:
        assert client.status == 101, client.head
        code, reason, _ = await client.read_until_close()
        return code, reason
    finally:
        client.close()


async def test_forged_malformed_and_reused_tokens_are_refused_alike(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    app, records = record_app
    gw = make_gateway(app.url, RESUME)
    refused = (RESUME_REFUSED, "session cannot be resumed")
    assert await resume_with(gw, "A" * 32) == refused  # forged
    assert await resume_with(gw, "short") == refused  # malformed
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=3")
        await ws.connect()
        first_token = ws._token
        await ws.send("one")
        assert await ws.recv() == "echo:one"
        proxy.cut()
        await ws.send("two")
        assert await ws.recv() == "echo:two"
        assert ws.resumes == 1 and ws._token != first_token
        assert await resume_with(gw, first_token, 1) == refused  # used once: replaced at the resume
        await ws.send("three")  # the session is unharmed by the refused attempts
        assert await ws.recv() == "echo:three"
        await ws.close()
    assert await gw.metric("ws_gateway_client_resumes_total", result="refused") == 3
    assert app_saw(records, 9) == [], "a refused resume never reaches the app"
    await async_wait_until(lambda: app_saw(records, 3)[-1:] == ["closed 1000"], 10, "the close")
    assert app_saw(records, 3) == ["open", "one", "two", "three", "closed 1000"]


async def test_plain_clients_and_the_app_never_see_the_gateways_subprotocol_entries(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """The marker is taken out of the offer; the app's own choice is kept; plain clients get no hello."""
    gw = make_gateway(upstream.url, RESUME)
    ws = ResumableWebSocket(f"ws://{HOST}:{gw.port}/ws/request")
    await ws.connect()
    info = json.loads(await ws.recv())
    assert info["subprotocols"] == [] and ws.subprotocol is None
    await ws.close()
    chat = ResumableWebSocket(f"ws://{HOST}:{gw.port}/ws/echo", ["chat.v1"])
    await chat.connect()
    assert chat.subprotocol == "chat.v1"
    await chat.send("hi")
    assert await chat.recv() == "hi"
    await chat.close()
    plain = await RawClient.connect(gw.port, "/ws/echo")
    plain.send(client_frame(0x1, b"plain"))
    assert await plain.read_message() == (0x1, b"plain")  # no hello first
    plain.close()


async def test_a_resume_passes_the_same_origin_check_as_a_new_session(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """client.allowed_origins applies to resumes: a resume from another origin gets 403, not a session."""
    app, _ = record_app
    gw = make_gateway(app.url, {**RESUME, "client": {"allowed_origins": ["https://app.example.com"]}})
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=8", origin="https://app.example.com")
        await ws.connect()
        token = ws._token
        await ws.send("one")
        assert await ws.recv() == "echo:one"
        client = await RawClient.connect(gw.port, "/ws/stream?client=8", headers={
            "Origin": "https://evil.example.com", "Sec-WebSocket-Protocol": f"{MARKER}, ws-gateway.resume.{token}.1"})
        assert client.status == 403, client.head
        client.close()
        await ws.send("two")  # the session is untouched
        assert await ws.recv() == "echo:two"
        await ws.close()
    assert await gw.metric("ws_gateway_handshake_failures_total", status="403") == 1


async def test_a_resume_lost_before_the_client_read_its_new_token_can_be_made_again_with_the_old_one(
    make_gateway: Callable[..., GatewayProcess], record_app: tuple[Upstream, Path]
) -> None:
    """The old token stays valid until the client answers the ping after the message with the new one: a
    connection that drops in between does not strand the client. Then the old token stops working."""
    app, records = record_app
    gw = make_gateway(app.url, RESUME)
    async with proxied(gw) as proxy:
        ws = ResumableWebSocket(f"{proxy.url}/ws/stream?client=13")
        await ws.connect()
        await ws.send("one")
        assert await ws.recv() == "echo:one"
        old_token = ws._token
        proxy.refusing = True
        proxy.cut()  # the helper cannot get back through the proxy for now
        # Another connection resumes with the token and dies without reading anything (no pong).
        lost = await RawClient.connect(gw.port, "/ws/stream?client=13", headers={
            "Sec-WebSocket-Protocol": f"{MARKER}, ws-gateway.resume.{old_token}.1"})
        assert lost.status == 101, lost.head
        lost.writer.transport.abort()
        await async_wait_until_metric_at_least(gw, "ws_gateway_client_resumes_total", 1, result="resumed")
        proxy.refusing = False
        await ws.send("two")  # the helper resumes with the old token: still good
        assert await ws.recv() == "echo:two"
        assert ws.resumes == 1 and ws._token != old_token
        await ws.send("three")
        assert await ws.recv() == "echo:three"
        assert await resume_with(gw, old_token, 3) == (RESUME_REFUSED, "session cannot be resumed")
        await ws.close()
    await async_wait_until(lambda: app_saw(records, 13)[-1:] == ["closed 1000"], 10, "the close")
    assert app_saw(records, 13) == ["open", "one", "two", "three", "closed 1000"]


async def async_wait_until_metric_at_least(gw: GatewayProcess, name: str, value: float, **labels: str) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(10)
    while await gw.metric(name, **labels) < value:
        assert asyncio.get_running_loop().time() < deadline, f"{name}{labels} stayed under {value}"
        await asyncio.sleep(0.05)
