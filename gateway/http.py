"""The traffic port's HTTP layer: one raw protocol per client connection, from request head to relay.

A client connection serves exactly one request, a WebSocket upgrade, and
then carries frames; so the gateway reads the request head itself with
llhttp (through httptools, Node.js's parser) instead of keeping a
general-purpose HTTP server's request machinery for the connection's life.
:class:`ClientConnection` is the connection's protocol:

* a new connection is refused at once (503) when the connections still
  sending their request head, plus the open sessions and upgrades under way,
  reach the gateway's limit (:class:`TrafficPort`);
* the request head must be complete within ``client.handshake_timeout`` of
  the connection's opening, else 408 (counted as
  ``handshake_failures_total{status="408"}``);
* a head over ``client.max_header_size`` (request line and headers) gets
  431, one the parser rejects gets 400, one whose version is not HTTP/1.x
  (``GET / HTTP/2.0``: an upgrade is an HTTP/1.1 mechanism) gets 505, each as one bounded, sanitised warning
  line with no traceback, rate-limited with a count of what was suppressed
  (:class:`BadRequestLog`), and counted by status;
* a complete head goes to the gateway's handler as a :class:`RequestHead`.
  Reading stops until the handler either refuses (:meth:`ClientConnection.refuse`)
  or answers 101 and hands every later read to a session
  (:meth:`ClientConnection.relay`).

A refusal is written, the sending side is shut (FIN), and what the client
still sends is read and dropped for at most :data:`LINGER_SECONDS` before
the connection closes: closing with unread input would make the kernel send
a reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, cast

import httptools

from gateway.core.handshake import first_header
from gateway.flow import FlowControlledProtocol

__all__ = ["LINGER_SECONDS", "MAX_HEADERS", "MAX_LINGERING", "BadRequestLog", "ClientConnection", "RequestHead",
           "TrafficPort", "sanitise"]

logger = logging.getLogger("gateway.http")

LINGER_SECONDS: Final = 2.0
"""How long a refused connection's further input is read and dropped before it closes."""
MAX_LINGERING: Final = 1024
"""Most refused connections lingering at once; past it a refusal closes at once (a flood at the
limit must not hold file descriptors for LINGER_SECONDS each)."""
MAX_HEADERS: Final = 128
"""Most header fields in a request head (aiohttp's default, which the traffic port had before)."""
_LOGGED_BYTES: Final = 80
"""Most characters of a client-supplied value that a log line shows."""


def sanitise(text: object) -> str:
    """A client-supplied value made safe for one log line: printable ASCII, cut to 80 characters."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return cleaned[:_LOGGED_BYTES] + ("..." if len(cleaned) > _LOGGED_BYTES else "")


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def refusal_bytes(status: int, text: str, headers: Mapping[str, str] | None = None) -> bytes:
    """An HTTP/1.1 answer that refuses the upgrade: ``text`` as a plain-text body, then the
    connection closes (a ``Connection`` header given in ``headers`` gets ``close`` added)."""
    body = (text + "\n").encode("utf-8")
    connection = "close"
    lines = [f"HTTP/1.1 {status} {_reason_phrase(status)}"]
    for name, value in (headers or {}).items():
        if name.lower() == "connection":
            connection = f"{value}, close"
        else:
            lines.append(f"{name}: {value}")
    lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
              f"Connection: {connection}", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def switching_protocols_bytes(accept: str, subprotocol: str | None, extensions: str | None) -> bytes:
    """The 101 answer to an upgrade (RFC 6455 4.2.2)."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept}"]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines += ["", ""]
    return "\r\n".join(lines).encode("latin-1")


class BadRequestLog:
    """At most one warning line per ``interval`` for malformed requests; the rest are counted and said later.

    Args:
        interval: seconds between two lines.
        clock: monotonic time source (tests pass their own).
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = 0.0
        self.suppressed = 0

    def report(self, status: int, peer: str, problem: str) -> bool:
        """Log one malformed request, unless a line was written less than ``interval`` ago; True if logged."""
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        suppressed, self.suppressed = self.suppressed, 0
        logger.warning(
            "malformed request from %s answered %d: %s%s",
            sanitise(peer),
            status,
            sanitise(problem),
            f" ({suppressed} more since the last such line)" if suppressed else "",
        )
        return True


@dataclass(slots=True)
class RequestHead:
    """A client's request head as read: what the upgrade checks and header forwarding need."""

    method: str
    version: tuple[int, int]
    target: str
    """The request target exactly as sent."""
    headers: list[tuple[str, str]]
    """In order, duplicates kept, names as sent (latin-1)."""
    peer_ip: str

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        return first_header(self.headers, name)


Handler = Callable[["ClientConnection", RequestHead], Coroutine[object, object, None]]


class TrafficPort:
    """What every client connection of the traffic port shares: its limits, its counts and the handler.

    Args:
        handler: runs the upgrade for a complete request head (the gateway's).
        head_timeout: seconds a connection has to send its whole request head.
        max_head: most bytes of a request head (request line and headers).
        has_room: tells whether one more connection fits (the gateway adds its sessions and upgrades).
        on_failure: called with the HTTP status of every refusal made here (408, 503, 400, 431, 505).
        bad_requests: where malformed requests are logged.
        full: the 503's text when ``has_room`` says no (the gateway's one wording for being full).
    """

    def __init__(
        self,
        handler: Handler,
        head_timeout: float,
        max_head: int,
        has_room: Callable[[int], bool],
        on_failure: Callable[[int], None],
        bad_requests: BadRequestLog,
        full: str,
    ) -> None:
        self.handler = handler
        self.full = full
        self.head_timeout = head_timeout
        self.max_head = max_head
        self.has_room = has_room
        self.on_failure = on_failure
        self.bad_requests = bad_requests
        self.waiting = 0
        """Connections whose request head has not been read yet."""
        self.lingering = 0
        """Refused connections reading and dropping input before they close (at most MAX_LINGERING)."""
        self.unsettled: set[ClientConnection] = set()
        """Connections not relaying yet (reading a head, upgrading, lingering): closed with the port."""
        self._tasks: set[asyncio.Task[None]] = set()

    def connection(self) -> ClientConnection:
        """The protocol factory for ``loop.create_server``."""
        return ClientConnection(self)

    def run_handler(self, connection: ClientConnection, head: RequestHead) -> None:
        """Run the upgrade in a task of its own; it ends once the connection relays or is refused."""
        task = asyncio.get_running_loop().create_task(self.handler(connection, head))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._handler_done, connection))

    def _handler_done(self, connection: ClientConnection, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            connection.abort()
            return
        error = task.exception()
        if error is not None:
            # Not something a client can cause by sending bytes: our own fault, with its traceback.
            logger.error("internal error while handling a request from %s", sanitise(connection.peer()),
                         exc_info=error)
            self.on_failure(500)
            connection.refuse(500, "internal error in the gateway")

    def close(self) -> None:
        """Stop every upgrade under way and close every connection that does not relay yet."""
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.unsettled):
            connection.abort()


class _Phase(enum.Enum):
    HEAD = "head"
    """Reading the request head."""
    UPGRADING = "upgrading"
    """The head is read; the handler runs and reading is paused."""
    SWITCHED = "switched"
    """The 101 is written; the session is being set up and reading stays paused."""
    RELAYING = "relaying"
    """Every read goes to the session."""
    REFUSED = "refused"
    """Answered with an HTTP error; further input is dropped until the connection closes."""


class ClientConnection(FlowControlledProtocol):
    """One client TCP connection on the traffic port: its request head, then its frames."""

    __slots__ = ("_deadline", "_feed", "_head_size", "_headers", "_lingering", "_on_lost", "_parser", "_phase",
                 "_port", "_rest", "_url", "transport")
    _peer_name = "client"

    def __init__(self, port: TrafficPort) -> None:
        super().__init__()
        self._port = port
        self.transport: asyncio.Transport | None = None
        self._phase = _Phase.HEAD
        self._parser: httptools.HttpRequestParser | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._rest = b""
        """Bytes that came after the request head in the same read."""
        self._lingering = False
        self._feed: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[], None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport; it has the same API.
        self.transport = cast(asyncio.Transport, transport)
        port = self._port
        port.unsettled.add(self)
        if not port.has_room(port.waiting):
            port.on_failure(503)
            self._answer(refusal_bytes(503, port.full))
            return
        port.waiting += 1
        self._parser = httptools.HttpRequestParser(self)
        self._deadline = asyncio.get_running_loop().call_later(port.head_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        feed = self._feed
        if feed is not None:
            feed(data)
        elif self._phase is _Phase.HEAD:
            self._read_head(data)
        # UPGRADING and SWITCHED read nothing (paused); REFUSED input is dropped.

    def eof_received(self) -> bool:
        return False  # close: a client that stops sending is done (the session has its close frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_gone()
        self._end_head_wait()
        self._port.unsettled.discard(self)
        if self._lingering:
            self._lingering = False
            self._port.lingering -= 1
        on_lost = self._on_lost
        # The session's callbacks hold its leg, which holds the transport, which holds this protocol:
        # drop them so that cycle does not outlive the connection.
        self._feed = self._on_lost = None
        self.transport = None
        if on_lost is not None:
            on_lost()

    # --- httptools callbacks --------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        if self._phase is _Phase.HEAD:
            self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp strips the whitespace before a value but not after it (RFC 9110 5.5: neither is part of it).
        # Past MAX_HEADERS nothing more is kept; _read_head refuses the head.
        if self._phase is _Phase.HEAD and len(self._headers) <= MAX_HEADERS:
            self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self._phase is _Phase.HEAD:
            self._phase = _Phase.UPGRADING

    # --- reading the head -------------------------------------------------------------------
    def _read_head(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        read_before = self._head_size
        self._head_size += len(data)
        head_size: int | None = None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            end_of_head = int(upgrade.args[0])
            self._rest = data[end_of_head:]
            head_size = read_before + end_of_head  # the head's bytes exactly as they came
        except httptools.HttpParserError as error:
            if self._phase is _Phase.HEAD:  # an error after a complete head (in a body) is the checks' to refuse
                self._refuse_malformed(400, str(error) or type(error).__name__)
                return
        if len(self._headers) > MAX_HEADERS:
            self._refuse_malformed(431, f"more than {MAX_HEADERS} header fields")
            return
        if self._phase is _Phase.HEAD:
            if self._head_size > self._port.max_head:
                self._refuse_malformed(431, f"request head over {self._port.max_head} bytes")
            return
        if head_size is None:
            # Not an upgrade (the checks refuse it): its size as sent with one space after each colon,
            # "METHOD url HTTP/1.1\r\n", "name: value\r\n"..., "\r\n" (llhttp does not say where it ended).
            head_size = (len(parser.get_method()) + len(self._url) + 14
                         + sum(len(k) + len(v) + 4 for k, v in self._headers))
        if head_size > self._port.max_head:
            self._refuse_malformed(431, f"request head of {head_size} bytes exceeds {self._port.max_head}")
            return
        self._head_complete(parser)

    def _head_complete(self, parser: httptools.HttpRequestParser) -> None:
        major, _, minor = parser.get_http_version().partition(".")
        if major != "1":
            self._refuse_malformed(505, f"HTTP/{major}.{minor} is not supported: a WebSocket upgrade uses HTTP/1.1")
            return
        self._end_head_wait()
        assert self.transport is not None
        self.transport.pause_reading()
        head = RequestHead(
            parser.get_method().decode("latin-1"),
            (int(major or 0), int(minor or 0)),
            self._url.decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers],
            self.peer(),
        )
        self._parser = None
        self._url = b""
        self._headers = []
        self._port.run_handler(self, head)

    def _end_head_wait(self) -> None:
        """The head is read, refused or abandoned: its deadline and its place in the count go."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._port.waiting -= 1

    def _head_timed_out(self) -> None:
        self._deadline = None
        self._port.waiting -= 1
        if self._phase is _Phase.HEAD:
            self._port.on_failure(408)
            self._answer(refusal_bytes(408, "the request head did not arrive in time"))

    def _refuse_malformed(self, status: int, problem: str) -> None:
        self._end_head_wait()
        self._port.on_failure(status)
        self._port.bad_requests.report(status, self.peer(), problem)
        self._answer(refusal_bytes(status, "malformed request" if status == 400 else problem))

    # --- what the gateway's handler calls -------------------------------------------------------
    def peer(self) -> str:
        """The client's address as the socket has it."""
        peername = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peername[0]) if peername else "unknown"

    @property
    def gone(self) -> bool:
        """The connection is closed or closing (the client left during the upgrade, or it was refused)."""
        return self.transport is None or self.transport.is_closing() or self._phase is _Phase.REFUSED

    def refuse(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        """Answer with an HTTP error instead of the upgrade, then close."""
        self._answer(refusal_bytes(status, text, headers))

    def switch_protocols(self, accept: str, subprotocol: str | None, extensions: str | None = None) -> None:
        """Write the 101 answer; frames may follow it at once."""
        if self.transport is not None:
            self._phase = _Phase.SWITCHED
            self.transport.write(switching_protocols_bytes(accept, subprotocol, extensions))

    def close_after(self, frame: bytes) -> None:
        """Write a last frame (a close) after the 101 and close: an upgrade that ends at once."""
        self._phase = _Phase.REFUSED
        self._port.unsettled.discard(self)
        if self.transport is not None:
            self.transport.write(frame)
            self.transport.close()

    def relay(self, feed: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """Hand every read to ``feed`` from now on (those that came with the head first), and tell
        ``on_lost`` when the connection is gone."""
        self._phase = _Phase.RELAYING
        self._port.unsettled.discard(self)
        self._on_lost = on_lost
        rest, self._rest = self._rest, b""
        if self.transport is None:  # lost while the session was set up
            if rest:
                feed(rest)
            on_lost()
            self._on_lost = None
            return
        self._feed = feed
        # Resume first: feeding may pause reading again (backpressure), and that pause must hold.
        # Reads only arrive from the next loop iteration, so the bytes that came with the head go first.
        self.transport.resume_reading()
        if rest:
            feed(rest)

    def abort(self) -> None:
        """Drop the connection at once (the gateway is closing, or the upgrade was cancelled)."""
        if self.transport is not None:
            self.transport.abort()

    def _answer(self, answer: bytes) -> None:
        """Write an HTTP answer, shut the sending side, drop further input, close by LINGER_SECONDS."""
        transport = self.transport
        if self._phase is _Phase.REFUSED:
            return  # answered already
        if self._phase in (_Phase.SWITCHED, _Phase.RELAYING):
            if transport is not None:
                transport.abort()  # after a 101 there is no HTTP answer left to give
            return
        self._phase = _Phase.REFUSED
        self._parser = None
        self._url, self._headers, self._rest = b"", [], b""
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if self._port.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()  # a flood of refusals: close at once (unread input may reset the answer)
            return
        transport.write_eof()
        transport.resume_reading()
        self._lingering = True
        self._port.lingering += 1
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)
