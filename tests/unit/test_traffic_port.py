"""The traffic port's connection protocol on a real loopback socket: head, refusals, handing over to a session.

Real sockets, so these tests run on a real event loop (``real_loop``), not on virtual time; they wait on
conditions, each wait bounded by a scaled timeout (WS_GATEWAY_TEST_SCALE), and never sleep a fixed time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import pytest

from gateway.http import MAX_HEADERS, MAX_LINGERING, BadRequestLog, ClientConnection, RequestHead, TrafficPort
from tests.support import scaled

pytestmark = pytest.mark.real_loop  # real loopback sockets: asyncio's own loop, waits bounded by scaled()

UPGRADE_HEAD = (
    b"GET /ws/echo?x=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"X-Twice: one\r\nX-Twice: two\r\n\r\n"
)

FULL = "the gateway holds its limit of 1 sessions (with request heads still arriving)"
"""The 503's text the port is given (the gateway's wording at max_sessions 1)."""


@dataclass
class Recorder:
    """What the port told the test: heads handed over, refusal statuses, bytes relayed, losses."""

    heads: list[RequestHead] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    relayed: bytearray = field(default_factory=bytearray)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    handed_over: asyncio.Event = field(default_factory=asyncio.Event)


Behaviour = Callable[[ClientConnection, RequestHead, Recorder], Awaitable[None]]


async def relay_everything(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
    """A stand-in session: answer 101 and keep every later byte."""
    connection.switch_protocols("accept-value", None)
    connection.relay(seen.relayed.extend, seen.lost.set)
    seen.handed_over.set()


@asynccontextmanager
async def traffic_port(
    behaviour: Behaviour = relay_everything, *, head_timeout: float = 10.0, max_head: int = 1024,
    room: bool = True,
) -> AsyncIterator[tuple[TrafficPort, Recorder, int]]:
    """A TrafficPort listening on 127.0.0.1 (an ephemeral port), closed when the block ends."""
    seen = Recorder()

    async def handler(connection: ClientConnection, head: RequestHead) -> None:
        seen.heads.append(head)
        await behaviour(connection, head, seen)

    port = TrafficPort(handler, head_timeout, max_head, lambda waiting: room, seen.failures.append,
                       BadRequestLog(), FULL)
    server = await asyncio.get_running_loop().create_server(port.connection, "127.0.0.1", 0)
    try:
        yield port, seen, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        port.close()
        await server.wait_closed()


async def exchange(port_number: int, *writes: bytes) -> bytes:
    """Write each chunk (draining in between), then read until the gateway closes its side."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_number)
    try:
        for chunk in writes:
            writer.write(chunk)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), scaled(5))
    finally:
        writer.close()


async def test_a_head_dribbled_byte_by_byte_is_read_whole_in_order() -> None:
    """A head sent one byte per write is parsed whole (repeated headers in order), answered 101 and handed over."""
    async with traffic_port() as (port, seen, number):
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        for byte in UPGRADE_HEAD:
            writer.write(bytes([byte]))
            await writer.drain()
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        head = seen.heads[0]
        assert (head.method, head.target, head.version) == ("GET", "/ws/echo?x=1", (1, 1))
        assert [v for k, v in head.headers if k == "X-Twice"] == ["one", "two"]
        assert head.header("upgrade") == "websocket" and head.peer_ip == "127.0.0.1"
        assert port.waiting == 0 and not port.unsettled
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        writer.close()
        await asyncio.wait_for(seen.lost.wait(), scaled(5))


async def test_bytes_sent_with_the_head_reach_the_session_before_later_ones() -> None:
    """Frames that arrive in the same read as the head reach the session first, then later bytes."""
    async with traffic_port() as (_, seen, number):
        _reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(UPGRADE_HEAD + b"first frame")
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        writer.write(b", second")
        await writer.drain()
        await asyncio.wait_for(_until(lambda: bytes(seen.relayed) == b"first frame, second"), scaled(5))
        writer.close()


async def test_a_head_that_never_ends_is_cut_at_the_bound_with_431() -> None:
    """A head growing past max_head without ending is answered 431 and closed; the handler never runs."""
    async with traffic_port(max_head=1024) as (port, seen, number):
        answer = await exchange(number, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 2048)
        assert answer.startswith(b"HTTP/1.1 431 ") and b"Connection: close\r\n" in answer
        assert seen.failures == [431] and not seen.heads and port.waiting == 0


async def test_a_complete_head_one_byte_over_the_bound_is_431_and_never_reaches_the_handler() -> None:
    """A whole head one byte longer than max_head is refused with 431 and not handed over."""
    async with traffic_port(max_head=len(UPGRADE_HEAD) - 1) as (_, seen, number):
        answer = await exchange(number, UPGRADE_HEAD)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert seen.failures == [431] and not seen.heads


async def test_a_head_of_exactly_the_bound_is_handed_over() -> None:
    """A head exactly max_head bytes long is accepted: the bound is inclusive."""
    async with traffic_port(max_head=len(UPGRADE_HEAD)) as (_, seen, number):
        _, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(UPGRADE_HEAD)
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        assert seen.failures == [] and len(seen.heads) == 1
        writer.close()


async def test_a_malformed_head_is_400_in_one_line_and_later_input_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unparsable input: 400 with a short body, one warning line without a traceback, the rest ignored."""
    async with traffic_port() as (_, seen, number):
        with caplog.at_level(logging.WARNING, logger="gateway.http"):
            answer = await exchange(number, b"NOT HTTP AT ALL\r\n\r\n", b"more input " * 100)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and answer.endswith(b"malformed request\n")
        assert seen.failures == [400] and not seen.heads
        lines = [r for r in caplog.records if r.name == "gateway.http"]
        assert len(lines) == 1 and lines[0].exc_info is None and "answered 400" in lines[0].getMessage()


async def test_an_upgrade_over_another_http_version_is_505_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """``GET / HTTP/2.0`` with every upgrade header is not relayed: 505, counted, one warning, no traceback."""
    upgrade = (b"Host: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    async with traffic_port() as (_, seen, number):
        with caplog.at_level(logging.WARNING, logger="gateway.http"):
            answer = await exchange(number, b"GET / HTTP/2.0\r\n" + upgrade)
        assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer
        assert seen.failures == [505] and not seen.heads
        [line] = [r for r in caplog.records if r.name == "gateway.http"]
        assert line.exc_info is None and "answered 505: HTTP/2.0 is not supported" in line.getMessage()


async def test_a_slow_head_gets_408_at_the_deadline() -> None:
    """A head still incomplete at head_timeout is answered 408 and the connection is no longer waiting."""
    async with traffic_port(head_timeout=scaled(0.3)) as (port, seen, number):
        answer = await exchange(number, b"GET / HTTP/1.1\r\nHost: exa")
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert seen.failures == [408] and port.waiting == 0


async def test_no_room_is_503_before_a_byte_is_read() -> None:
    """With no room for another connection the client gets 503 without sending anything."""
    async with traffic_port(room=False) as (port, seen, number):
        answer = await exchange(number)
        assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(FULL.encode() + b"\n"), answer
        assert seen.failures == [503] and port.waiting == 0


async def test_a_refusal_keeps_the_handlers_headers_and_closes() -> None:
    """A handler's refusal keeps its own headers, adds close to Connection, and sends its reason as body."""
    async def refuse(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
        connection.refuse(426, "upgrade required", {"Upgrade": "websocket", "Connection": "Upgrade"})

    async with traffic_port(refuse) as (_, _seen, number):
        answer = await exchange(number, UPGRADE_HEAD)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
        assert b"\r\nUpgrade: websocket\r\n" in head and b"\r\nConnection: Upgrade, close" in head
        assert body == b"upgrade required\n"


async def test_a_failing_handler_is_500_with_its_traceback_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that raises before answering: 500 to the client and one error line with the traceback."""
    async def fail(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
        raise RuntimeError("a bug of ours")

    async with traffic_port(fail) as (_, seen, number):
        with caplog.at_level(logging.ERROR, logger="gateway.http"):
            answer = await exchange(number, UPGRADE_HEAD)
        assert answer.startswith(b"HTTP/1.1 500 ") and seen.failures == [500]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None


async def test_a_handler_failing_after_its_101_drops_the_connection_without_an_http_answer() -> None:
    """A handler that raises after its 101 gets the connection dropped: no HTTP 500 after a 101."""
    async def fail_late(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
        connection.switch_protocols("accept-value", None)
        raise RuntimeError("a bug of ours, after the 101")

    async with traffic_port(fail_late) as (_, _seen, number):
        try:
            answer = await exchange(number, UPGRADE_HEAD)
        except ConnectionResetError:  # the abort may reach the client as a reset
            answer = b""
        assert b"500" not in answer and (answer == b"" or answer.startswith(b"HTTP/1.1 101 "))


async def test_closing_the_port_drops_connections_still_sending_their_head() -> None:
    """Closing the port ends connections still sending their head, and forgets them."""
    async with traffic_port() as (port, _seen, number):
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(b"GET / HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.wait_for(_until(lambda: port.waiting == 1), scaled(5))
        port.close()
        with suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), scaled(5)) == b""
        await asyncio.wait_for(_until(lambda: not port.unsettled and port.waiting == 0), scaled(5))
        writer.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Return once ``condition`` holds (callers bound the wait)."""
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_pause_made_while_feeding_the_bytes_sent_with_the_head_holds() -> None:
    """Backpressure at the session's first bytes: a feed that pauses reading (the app's leg is full) must
    find reading still paused after the hand-over, or the client would be read without limit."""
    transports: list[asyncio.Transport] = []

    async def pausing_relay(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
        assert connection.transport is not None
        transport = connection.transport

        def feed(data: bytes) -> None:
            seen.relayed.extend(data)
            transport.pause_reading()

        connection.switch_protocols("accept-value", None)
        connection.relay(feed, seen.lost.set)
        transports.append(transport)
        seen.handed_over.set()

    async with traffic_port(pausing_relay) as (_, seen, number):
        _, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(UPGRADE_HEAD + b"first frame")
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        assert bytes(seen.relayed) == b"first frame"
        assert not transports[0].is_reading()
        writer.close()


async def test_header_values_lose_the_whitespace_after_them() -> None:
    """Spaces and tabs around a header value are not part of it."""
    async with traffic_port() as (_, seen, number):
        _, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(UPGRADE_HEAD.replace(b"X-Twice: one\r\n", b"X-Twice:  one \t\r\n"))
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        assert [v for k, v in seen.heads[0].headers if k == "X-Twice"] == ["one", "two"]
        writer.close()


@pytest.mark.parametrize(("fields", "refused"), [(MAX_HEADERS, False), (MAX_HEADERS + 1, True)])
async def test_more_header_fields_than_the_limit_are_431(fields: int, refused: bool) -> None:
    """MAX_HEADERS fields are accepted; one more is answered 431."""
    head = b"GET /ws HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(fields)) + b"\r\n"
    async with traffic_port(max_head=65536) as (_, seen, number):
        if refused:
            answer = await exchange(number, head)
            assert answer.startswith(b"HTTP/1.1 431 ") and seen.failures == [431] and not seen.heads
        else:
            _, writer = await asyncio.open_connection("127.0.0.1", number)
            writer.write(head)
            await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
            assert len(seen.heads[0].headers) == fields
            writer.close()


@pytest.mark.parametrize("split", [None, 40, len(UPGRADE_HEAD) - 3])
async def test_the_431_bound_does_not_depend_on_how_the_head_is_split(split: int | None) -> None:
    """The head limit counts bytes on the wire (spaces the parser drops included), however the head is split."""
    padded = UPGRADE_HEAD.replace(b"X-Twice: one", b"X-Twice:      one")  # spaces the parser drops
    writes = [padded] if split is None else [padded[:split], padded[split:]]
    async with traffic_port(max_head=len(padded) - 1) as (_, seen, number):
        answer = await exchange(number, *writes)
        assert answer.startswith(b"HTTP/1.1 431 ") and seen.failures == [431]
    async with traffic_port(max_head=len(padded)) as (_, seen, number):
        _, writer = await asyncio.open_connection("127.0.0.1", number)
        for chunk in writes:
            writer.write(chunk)
            await writer.drain()
        await asyncio.wait_for(seen.handed_over.wait(), scaled(5))
        assert seen.failures == []
        writer.close()


async def test_a_handler_failing_while_it_hands_over_drops_the_connection_without_an_http_answer() -> None:
    """A session whose first feed raises: the connection is dropped, with no HTTP 500 after the 101."""
    async def fail_in_relay(connection: ClientConnection, head: RequestHead, seen: Recorder) -> None:
        def feed(data: bytes) -> None:
            raise RuntimeError("a bug of ours, in the session's first feed")

        connection.switch_protocols("accept-value", None)
        connection.relay(feed, seen.lost.set)

    async with traffic_port(fail_in_relay) as (_, _seen, number):
        try:
            answer = await exchange(number, UPGRADE_HEAD + b"first frame")
        except ConnectionResetError:
            answer = b""
        assert b"HTTP/1.1 500" not in answer


async def test_refusals_past_the_lingering_limit_close_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of refusals holds at most MAX_LINGERING connections for the linger; here the limit is 2."""
    import gateway.http

    monkeypatch.setattr(gateway.http, "MAX_LINGERING", 2)
    async with traffic_port(room=False) as (port, seen, number):
        held = [await asyncio.open_connection("127.0.0.1", number) for _ in range(2)]
        await asyncio.wait_for(_until(lambda: port.lingering == 2), scaled(5))
        answer = await exchange(number)  # the third is answered and closed, not kept
        assert answer.startswith(b"HTTP/1.1 503 ") and port.lingering == 2
        for _, writer in held:
            writer.close()
        await asyncio.wait_for(_until(lambda: port.lingering == 0), scaled(5))
        assert seen.failures == [503, 503, 503] and MAX_LINGERING > 2
