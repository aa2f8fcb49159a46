"""Issue 3: clients stay connected while the upstream is killed, restarted or crash-loops (real uvicorn, loopback)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.support import (
    GatewayProcess,
    Upstream,
    async_wait_until,
    free_port,
    port_open,
    read_request_info,
    request_headers,
    scaled,
)


class SequencedClient:
    """Sends numbered messages at a steady pace and records what comes back and when it closed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, index: int) -> None:
        self.ws = ws
        self.index = index
        self.sent: list[tuple[int, float]] = []
        self.echoed: list[int] = []
        self.closed: aiohttp.WSMessage | None = None
        self.closed_by_gateway: aiohttp.WSMessage | None = None
        """A close that arrived before the test closed the client itself."""

    async def send(self, count: int, interval: float) -> None:
        for seq in range(count):
            if self.closed is not None:
                return
            self.sent.append((seq, time.monotonic()))
            await self.ws.send_str(f"{self.index}:{seq}")
            await asyncio.sleep(interval)

    async def receive(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.closed = msg
                return
            index, seq = msg.data.split(":")
            assert int(index) == self.index
            self.echoed.append(int(seq))


async def run_outage(
    gateway: GatewayProcess, clients: int, count: int, interval: float, outage: Callable[[], object]
) -> list[SequencedClient]:
    """Clients send while ``outage()`` runs concurrently; returns them after the last echoes (or closes)."""
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(gateway.url + "/ws/echo") for _ in range(clients)]
        runners = [SequencedClient(ws, i) for i, ws in enumerate(sockets)]
        receivers = [asyncio.ensure_future(r.receive()) for r in runners]
        await asyncio.gather(*(r.send(count, interval) for r in runners), asyncio.to_thread(outage))
        await async_wait_until(
            lambda: all(r.closed is not None or (r.echoed and r.echoed[-1] == count - 1) for r in runners),
            20, "the last echoes")
        for runner in runners:
            runner.closed_by_gateway = runner.closed
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*receivers, return_exceptions=True)
    return runners


def kill_and_restart(
    app: Upstream, make_upstream: Callable[..., Upstream], signum: int, down_for: float
) -> Callable[[], Upstream]:
    """An outage function: signal the upstream, keep it down ``down_for`` s, restart it on the same port."""

    def outage() -> Upstream:
        time.sleep(0.5)  # let traffic flow first (this runs in a thread, not on the test's loop)
        app.signal(signum)
        app.process.wait(timeout=scaled(20))
        time.sleep(down_for)
        return make_upstream(port=app.port)

    return outage


async def test_fifty_clients_survive_upstream_kill_and_restart(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """SIGKILL the app, restart it 1.5 s later: no client disconnects; echoes stay in order, once each."""
    app = make_upstream()
    outage = kill_and_restart(app, make_upstream, signal.SIGKILL, 1.5)
    gw = make_gateway(app.url)
    runners = await run_outage(gw, clients=50, count=150, interval=0.03, outage=outage)
    for runner in runners:
        assert runner.closed_by_gateway is None, runner.closed_by_gateway
        assert runner.echoed == sorted(set(runner.echoed)), "in order, each at most once"
        missing = set(range(150)) - set(runner.echoed)
        # Only messages in flight on the old connection at the kill may be lost (at-most-once).
        assert len(missing) <= 5, (runner.index, sorted(missing))
    assert await gw.metric("ws_gateway_sessions_resumed_total") == 50
    assert await gw.metric("ws_gateway_upstream_reconnects_total", result="ok") == 50
    lines = await gw.wait_session_log(50)
    assert all(line["reconnects"] == 1 and line["outage_seconds"] > 1.0 for line in lines)
    assert all(line["client_code"] == 1000 for line in lines), "clients closed normally, by themselves"


async def test_sigterm_1012_is_reconnected(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """uvicorn's SIGTERM sends 1012 to every socket: the gateway reconnects instead of relaying it."""
    app = make_upstream()
    outage = kill_and_restart(app, make_upstream, signal.SIGTERM, 0.5)
    gw = make_gateway(app.url)
    runners = await run_outage(gw, clients=10, count=80, interval=0.03, outage=outage)
    for runner in runners:
        assert runner.closed_by_gateway is None, runner.closed_by_gateway
        assert runner.echoed == sorted(set(runner.echoed))
        assert runner.echoed[-1] == 79
    assert await gw.metric("ws_gateway_sessions_resumed_total") == 10
    assert await gw.metric("ws_gateway_closes_total", leg="client", code="1012", initiator="upstream",
                           cause="shutdown") == 0, "1012 was not passed to the clients"


async def test_reconnect_handshake_carries_session_id_and_attempt(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """The app sees the same X-Gateway-Session-Id on the first and the reconnect handshake, plus the attempt."""
    app = make_upstream()
    gw = make_gateway(app.url)
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/request?room=1") as ws:
        first = request_headers(await read_request_info(ws))
        app.signal(signal.SIGKILL)
        app.process.wait(timeout=scaled(20))
        make_upstream(port=app.port)
        again = await read_request_info(ws, 15)
    second = request_headers(again)
    assert again["query"] == "room=1"
    assert first["x-gateway-session-id"] == second["x-gateway-session-id"]
    assert "x-gateway-reconnect" not in first
    assert int(second["x-gateway-reconnect"]) >= 1


async def test_upstream_that_never_returns_closes_client_with_1013(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """With give_up_after 2 s and no upstream, the client gets 1013 within the deadline plus slack."""
    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {"give_up_after": "2s"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        await ws.send_str("hello")
        await ws.receive(timeout=scaled(5))
        app.signal(signal.SIGKILL)
        lost_at = time.monotonic()
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)
    assert "upstream unavailable" in msg.extra
    assert time.monotonic() - lost_at < 2 + scaled(2)
    line = (await gw.wait_session_log(1))[0]
    assert (line["client_code"], line["cause"], line["initiator"]) == (1013, "upstream_unavailable", "gateway")
    assert await gw.metric("ws_gateway_upstream_reconnects_total", result="refused") >= 1
    assert await gw.metric("ws_gateway_closes_total", leg="client", code="1013", initiator="gateway",
                           cause="upstream_unavailable") == 1


async def test_poison_message_trips_the_breaker(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """A payload that crashes the handler on every replay closes that client with 1011; others continue."""
    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {"max_reconnects": 2, "breaker_window": "60s"}})
    async with aiohttp.ClientSession() as http:
        healthy = await http.ws_connect(gw.url + "/ws/echo")
        poisoned = await http.ws_connect(gw.url + "/ws/crash")
        closing = asyncio.ensure_future(poisoned.receive(timeout=scaled(20)))
        for _ in range(20):
            if closing.done():
                break
            await poisoned.send_str("poison")
            await asyncio.sleep(0.2)
        msg = await closing
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
        assert "circuit breaker" in msg.extra
        await healthy.send_str("still fine")
        assert (await healthy.receive(timeout=scaled(5))).data == "still fine"
        await healthy.close()
    assert await gw.metric("ws_gateway_reconnect_breaker_trips_total") == 1


async def test_buffer_overflow_closes_with_1013(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """During an outage, more than buffer_messages messages close the client with 1013 (policy close), counted."""
    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {"buffer_messages": 5, "give_up_after": "20s"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        app.signal(signal.SIGKILL)
        app.process.wait(timeout=scaled(20))
        await async_wait_until(lambda: not port_open(app.port), 5, "the upstream to be gone")
        await gw_reconnecting(gw)
        for i in range(10):
            await ws.send_str(f"held {i}")
        msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1013)
    assert "replay buffer full" in msg.extra
    assert await gw.metric("ws_gateway_replay_overflows_total", policy="close") == 1


async def test_buffer_overflow_drop_oldest_replays_newest(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """With overflow: drop_oldest, the newest messages are replayed in order after the restart; drops counted."""
    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {"buffer_messages": 5, "overflow": "drop_oldest"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        app.signal(signal.SIGKILL)
        app.process.wait(timeout=scaled(20))
        await gw_reconnecting(gw)
        for i in range(10):
            await ws.send_str(f"held {i}")
        await async_wait_until_metric(gw, "ws_gateway_replay_buffered_messages", 5)
        make_upstream(port=app.port)
        echoes = [(await ws.receive(timeout=scaled(15))).data for _ in range(5)]
    assert echoes == [f"held {i}" for i in range(5, 10)]
    assert await gw.metric("ws_gateway_replay_dropped_messages_total", reason="overflow") == 5
    assert await gw.metric("ws_gateway_replayed_messages_total") == 5


async def gw_reconnecting(gw: GatewayProcess) -> None:
    """Wait until the gateway reports a session in RECONNECTING."""
    await async_wait_until_metric(gw, "ws_gateway_sessions_reconnecting", 1)


async def async_wait_until_metric(
    gw: GatewayProcess, name: str, value: float, timeout: float = 10, labels: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if await gw.metric(name, **(labels or {})) == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never reached {value}")


async def test_frozen_upstream_is_reconnected_after_ping_timeout(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """An app that blocks its loop misses pings; the gateway reconnects once it is back; the client stays."""
    app = make_upstream()
    fast = {"ping_interval": "300ms", "ping_timeout": "600ms", "ping_jitter": "100ms"}
    gw = make_gateway(app.url, {"upstream": fast, "reconnect": {"give_up_after": "15s"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/stall?seconds=3") as ws:
        closing = asyncio.ensure_future(ws.receive())
        await ws.send_str("freeze now")
        await async_wait_until_metric(gw, "ws_gateway_sessions_resumed_total", 1, timeout=15)
        assert not closing.done(), "the client was not disconnected"
        closing.cancel()
    assert await gw.metric("ws_gateway_ping_timeouts_total", leg="upstream") >= 1


async def test_no_reconnect_while_draining(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """After SIGTERM the gateway does not reconnect: an upstream loss then closes the client at once (1011)."""
    app = make_upstream()
    gw = make_gateway(app.url, {"drain": {"listener_delay": "3s", "spread": "1s", "timeout": "8s"}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        gw.signal(signal.SIGTERM)
        status, deadline = 200, time.monotonic() + 2  # the signal arrives asynchronously; 3 s listener delay
        while status != 503 and time.monotonic() < deadline:
            async with http.get(gw.admin + "/readyz") as response:
                status = response.status
        assert status == 503, "the gateway is draining"
        app.signal(signal.SIGKILL)
        msg = await asyncio.wait_for(ws.receive(), scaled(2))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)


async def test_different_subprotocol_after_reconnect_closes_client(
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """If the reconnected upstream picks another subprotocol, the client is closed with 1011 saying so."""
    from gateway.core.handshake import accept_key

    answers = iter(["chat.v1", "chat.v2"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        protocol = next(answers, "chat.v2")
        writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n")
                     .encode())
        if protocol == "chat.v1":
            writer.transport.abort()  # the first upstream "crashes" at once
            return
        await reader.read()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        gw = make_gateway(f"ws://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http, http.ws_connect(
            gw.url + "/ws/echo", protocols=("chat.v1", "chat.v2")
        ) as ws:
            assert ws.protocol == "chat.v1"
            msg = await asyncio.wait_for(ws.receive(), scaled(10))
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
        assert "subprotocol" in msg.extra
        assert await gw.metric("ws_gateway_upstream_reconnects_total", result="subprotocol") == 1
    finally:
        server.close()


async def test_opt_in_notices_on_loss_and_resume(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """With notify templates set, the client reads the loss notice, then the resume notice, then echoes again."""
    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {
        "notify_loss": "upstream lost",
        "notify_resume": '{{"type": "resumed", "outage_ms": {outage_ms}, "replayed": {replayed}}}'}})
    async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
        app.signal(signal.SIGKILL)
        assert (await asyncio.wait_for(ws.receive(), scaled(10))).data == "upstream lost"
        await ws.send_str("held while down")
        make_upstream(port=app.port)
        resumed = json.loads((await asyncio.wait_for(ws.receive(), scaled(15))).data)
        assert resumed["type"] == "resumed" and resumed["replayed"] == 1 and resumed["outage_ms"] > 0
        assert (await asyncio.wait_for(ws.receive(), scaled(10))).data == "held while down"


async def test_gunicorn_worker_recycling_under_load(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """gunicorn + UvicornWorker recycling workers every 3 HTTP requests: WebSocket clients survive every recycle.

    uvicorn counts plain HTTP requests (not WebSocket handshakes) toward max_requests, so the test
    sends page requests to the app directly while the WebSocket clients talk through the gateway.
    """
    import sys

    from tests.support import ManagedProcess, wait_until

    port = free_port()
    app = ManagedProcess(
        [sys.executable, "-m", "gunicorn", "examples.app:app", "-k", "uvicorn.workers.UvicornWorker", "-w", "2",
         "--max-requests", "3", "--max-requests-jitter", "0", "--graceful-timeout", "5", "-b", f"127.0.0.1:{port}"],
        tmp_path / "gunicorn.log")
    try:
        wait_until(lambda: port_open(port) or not app.alive(), 30, "gunicorn to listen")
        # Recycling this fast would trip the default breaker (5 losses in 60 s): raise it, as an
        # operator with aggressive max_requests would.
        gw = make_gateway(f"ws://127.0.0.1:{port}", {"reconnect": {"max_reconnects": 30}})
        async with aiohttp.ClientSession() as http:
            runners = []
            for i in range(10):
                runners.append(SequencedClient(await http.ws_connect(gw.url + "/ws/echo"), i))
            receivers = [asyncio.ensure_future(r.receive()) for r in runners]

            async def page_traffic() -> None:
                for _ in range(12):  # bounded: about 4 worker recycles
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/") as response:
                            await response.read()
                    except aiohttp.ClientError:
                        pass  # a worker on its way out
                    await asyncio.sleep(0.1)

            await asyncio.gather(page_traffic(), *(r.send(60, 0.05) for r in runners))
            await async_wait_until(lambda: all(r.closed is not None or (r.echoed and r.echoed[-1] == 59)
                                               for r in runners), 30, "the last echoes")
            closed_early = [r.closed for r in runners if r.closed is not None]
            for r in runners:
                await r.ws.close()
            await asyncio.gather(*receivers, return_exceptions=True)
        assert not closed_early, closed_early
        for runner in runners:
            assert runner.echoed == sorted(set(runner.echoed)) and runner.echoed[-1] == 59
        assert await gw.metric("ws_gateway_sessions_resumed_total") >= 1, "workers really were recycled"
    finally:
        app.stop()


async def test_fragmented_message_cut_by_the_outage_is_resent_whole(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """First fragment before the kill, last fragment during the outage: the new upstream gets the whole message."""
    from gateway.core.codec import Opcode
    from tests.support import RawClient, client_frame

    app = make_upstream()
    gw = make_gateway(app.url)
    client = await RawClient.connect(gw.port, "/ws/echo")
    client.send(client_frame(Opcode.TEXT, b"before the kill | ", fin=False))
    # The loss must come after the first fragment was relayed: wait until the gateway counted it.
    await async_wait_until_metric(
        gw, "ws_gateway_payload_bytes_total", 18, labels={"direction": "client_to_upstream"})
    app.signal(signal.SIGKILL)
    app.process.wait(timeout=scaled(20))
    await gw_reconnecting(gw)
    client.send(client_frame(Opcode.CONTINUATION, b"after the kill"))
    make_upstream(port=app.port)
    fin, opcode, payload = await client.read_frame(timeout=15)
    assert (fin, opcode, payload) == (True, Opcode.TEXT, b"before the kill | after the kill")
    for reason in ("unconfirmed", "cut", "overflow", "too_large"):
        assert await gw.metric("ws_gateway_replay_dropped_messages_total", reason=reason) == 0, reason
    client.close()


async def test_retention_recovers_after_a_message_too_large_to_keep(
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream]
) -> None:
    """A fragmented message larger than buffer_bytes is not kept, but the next cut message is re-sent whole."""
    from gateway.core.codec import Opcode
    from tests.support import RawClient, client_frame

    app = make_upstream()
    gw = make_gateway(app.url, {"reconnect": {"buffer_bytes": "2KiB"}})
    client = await RawClient.connect(gw.port, "/ws/echo")
    client.send(client_frame(Opcode.BINARY, b"x" * 3000, fin=False))  # outgrows the 2 KiB retention
    client.send(client_frame(Opcode.CONTINUATION, b"y" * 100))
    assert len((await client.read_message())[1]) == 3100
    client.send(client_frame(Opcode.TEXT, b"before | ", fin=False))
    await async_wait_until_metric(
        gw, "ws_gateway_payload_bytes_total", 3109, labels={"direction": "client_to_upstream"})
    app.signal(signal.SIGKILL)
    app.process.wait(timeout=scaled(20))
    await gw_reconnecting(gw)
    client.send(client_frame(Opcode.CONTINUATION, b"after"))
    make_upstream(port=app.port)
    assert (await client.read_frame(timeout=15))[2] == b"before | after"
    client.close()
