"""The traffic port's HTTP layer: aiohttp's request handler with a request-head deadline and quiet errors.

aiohttp reads a client's request head with no time limit and logs every
malformed request with a traceback. :class:`TrafficServer` makes aiohttp's
per-connection :class:`~aiohttp.web_protocol.RequestHandler` a
:class:`GuardedRequestHandler`, which:

* refuses a new connection at once (503) when the connections still sending
  their request head, plus the open sessions and upgrades under way, reach the
  gateway's limit (:class:`HeadGuard`);
* closes a connection whose request head is not complete within
  ``client.handshake_timeout`` of its opening, with 408 (counted as
  ``handshake_failures_total{status="408"}``);
* turns aiohttp's report of a malformed request (bad request line, header too
  long, bad URL...) into one bounded, sanitised warning line with no
  traceback, rate-limited with a count of what was suppressed, and counts it
  by status.

This uses aiohttp internals (``RequestHandler``, ``web.Server``), like
``set_parser`` in :mod:`gateway.server`: the version range is pinned in
pyproject.toml and the tests cover both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = ["BadRequestLog", "GuardedRequestHandler", "HeadGuard", "TrafficServer", "sanitise"]

logger = logging.getLogger("gateway.http")

_TIMEOUT_ANSWER: Final = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_FULL_ANSWER: Final = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_LOGGED_BYTES: Final = 80
"""Most characters of a client-supplied value that a log line shows."""


def sanitise(text: object) -> str:
    """A client-supplied value made safe for one log line: printable ASCII, cut to 80 characters."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return cleaned[:_LOGGED_BYTES] + ("..." if len(cleaned) > _LOGGED_BYTES else "")


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


class HeadGuard:
    """Connections still sending their request head: counted against the gateway's limit, and timed.

    Args:
        timeout: seconds a connection has to send its whole request head.
        has_room: tells whether one more connection fits (the gateway adds its sessions and upgrades).
        on_failure: called with the HTTP status of every refusal made here (408, 503, 400, 431...).
        bad_requests: where malformed requests are logged.
    """

    def __init__(
        self,
        timeout: float,
        has_room: Callable[[int], bool],
        on_failure: Callable[[int], None],
        bad_requests: BadRequestLog,
    ) -> None:
        self.timeout = timeout
        self.has_room = has_room
        self.on_failure = on_failure
        self.bad_requests = bad_requests
        self.waiting = 0
        """Connections whose request head has not been read yet."""


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection handler with a request-head deadline and quiet error reports."""

    __slots__ = ("_guard", "_head_deadline", "_waiting")

    def __init__(self, manager: TrafficServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager.guard
        self._head_deadline: asyncio.TimerHandle | None = None
        self._waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self._guard
        if not guard.has_room(guard.waiting):
            guard.on_failure(503)
            self._answer_and_close(_FULL_ANSWER)
            return
        guard.waiting += 1
        self._waiting = True
        self._head_deadline = asyncio.get_running_loop().call_later(guard.timeout, self._head_timed_out)

    def head_read(self) -> None:
        """The request head is complete (the gateway's handler runs): the deadline no longer applies.

        aiohttp's keep-alive timer goes too: the connection serves one request (an upgrade, or a
        refusal that closes it), and a pending timer per idle session costs 700 bytes.
        """
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._waiting:
            self._waiting = False
            self._guard.waiting -= 1

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._waiting:
            self._guard.on_failure(408)
            self._answer_and_close(_TIMEOUT_ANSWER)

    def _answer_and_close(self, answer: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(answer)
        self.force_close()
        if transport is not None:
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.head_read()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed request: one quiet line (rate-limited), a count by status, then aiohttp's answer."""
        self.head_read()
        self._guard.on_failure(status)
        peer = request.remote or "unknown"
        if status == 500:
            # Not something a client can cause by sending bytes: our own fault, with its traceback.
            logger.error("internal error while handling a request from %s", sanitise(peer), exc_info=exc)
        else:
            self._guard.bad_requests.report(status, peer, str(exc) if exc is not None else (message or ""))
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines: handle_error has already counted and logged the request."""
        if args and str(args[0]).startswith("Error handling request"):
            return
        super().log_exception(*args, **kw)


class TrafficServer(web.Server):
    """aiohttp's low-level server, making :class:`GuardedRequestHandler` connections."""

    def __init__(self, handler: Any, guard: HeadGuard, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
