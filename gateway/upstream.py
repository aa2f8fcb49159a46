"""The upstream leg's connection: a raw asyncio protocol and the upgrade over it.

:func:`connect_upstream` opens TCP to the app, writes the upgrade request,
reads the response head and checks it. On success the connection's protocol
keeps the transport raw: after :meth:`UpstreamProtocol.attach`, every read
goes straight to the session leg's frame scanner.

Exceptions::

    UpstreamError
    ├── UpstreamUnavailable   no usable connection (refused, timeout, bad answer)
    └── UpstreamRefused       the app answered the upgrade with an HTTP status
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from gateway.core.handshake import (
    MAX_RESPONSE_HEAD,
    HandshakeError,
    UpgradeResponse,
    build_upgrade_request,
    check_accept,
    new_key,
    parse_upgrade_response,
)
from gateway.core.labels import ConnectResult
from gateway.core.targets import Target, TargetPool
from gateway.flow import FlowControlledProtocol

__all__ = [
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamProtocol",
    "UpstreamRefused",
    "UpstreamUnavailable",
    "connect_any",
    "connect_upstream",
]

_HEAD_END: Final = b"\r\n\r\n"


class UpstreamError(Exception):
    """The upstream leg could not be opened."""


class UpstreamUnavailable(UpstreamError):
    """No WebSocket could be opened upstream; ``result`` is the metric label."""

    def __init__(self, result: ConnectResult, message: str) -> None:
        super().__init__(message)
        self.result = result


class UpstreamRefused(UpstreamError):
    """The upstream answered the upgrade with HTTP ``status`` instead of 101."""

    def __init__(self, response: UpgradeResponse) -> None:
        super().__init__(f"upstream refused the upgrade with HTTP {response.status}")
        self.status = response.status
        self.response = response


def _mark_retrieved(future: asyncio.Future[tuple[bytes, bytes]]) -> None:
    if not future.cancelled():
        future.exception()


class UpstreamProtocol(FlowControlledProtocol):
    """Raw protocol for the upstream TCP connection (handshake, then frames)."""

    _peer_name = "upstream"

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[tuple[bytes, bytes]] | None = asyncio.get_running_loop().create_future()
        """Resolves with (response head, bytes after it); None once a session is attached."""
        # A connection lost after a handshake timeout fails a future nobody awaits any more:
        # mark its exception as seen so asyncio does not log it as never retrieved.
        self.head.add_done_callback(_mark_retrieved)
        self._buffer = bytearray()
        self._feed: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[bool], None] | None = None
        self._early: list[bytes] = []
        self._reset = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport; it has the same API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        feed = self._feed
        if feed is not None:
            feed(data)
            return
        if self.head is None or self.head.done():  # handshake read, session not attached yet
            self._early.append(data)
            return
        self._buffer += data
        end = self._buffer.find(_HEAD_END)
        if end >= 0:
            head, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + 4 :])
            self._buffer.clear()
            self.head.set_result((head, rest))
        elif len(self._buffer) > MAX_RESPONSE_HEAD:
            self.head.set_exception(UpstreamUnavailable(ConnectResult.INVALID, "upstream response head is too large"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_gone()
        self._reset = exc is not None  # a reset or a failed write, not the app's orderly close
        if self.head is not None and not self.head.done():
            self.head.set_exception(
                UpstreamUnavailable(ConnectResult.ERROR, "upstream closed the connection during the handshake")
            )
        if self._on_lost is not None:
            self._on_lost(self._reset)
        # The session's callbacks hold its leg, which holds the transport, which holds this protocol:
        # drop them so that cycle does not outlive the connection.
        self._feed = self._on_lost = None
        self.transport = None

    def attach(self, feed: Callable[[bytes], None], on_lost: Callable[[bool], None], first: bytes) -> None:
        """Hand reads to ``feed`` from now on, starting with bytes that came with the handshake."""
        self.head = None  # drop the response head: idle sessions should hold nothing more
        if first:
            feed(first)
        for chunk in self._early:
            feed(chunk)
        self._early.clear()
        self._feed = feed
        self._on_lost = on_lost
        if self._lost:
            on_lost(self._reset)


@dataclass(slots=True)
class UpstreamConnection:
    """An upgraded upstream connection, not yet attached to a session."""

    transport: asyncio.Transport
    protocol: UpstreamProtocol
    subprotocol: str | None
    first_bytes: bytes
    """Frames that arrived in the same read as the response head."""


async def connect_upstream(
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    offered_protocols: list[str],
    timeout: float,
) -> UpstreamConnection:
    """Open and upgrade a connection to one target within ``timeout`` seconds.

    Args:
        target: the upstream process.
        path: path and query of the client's request.
        headers: forwarded request headers.
        offered_protocols: the client's subprotocol offer, passed on as it is.
        timeout: seconds for TCP connect plus handshake.

    Raises:
        UpstreamUnavailable: refused, timed out, or an invalid answer.
        UpstreamRefused: the app answered with an HTTP status (e.g. 403).
    """
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                transport, protocol = await loop.create_connection(UpstreamProtocol, target.host, target.port)
            except ConnectionRefusedError:
                raise UpstreamUnavailable(
                    ConnectResult.REFUSED, f"upstream {target.address} refused the connection"
                ) from None
            except OSError as exc:
                raise UpstreamUnavailable(
                    ConnectResult.ERROR, f"cannot connect to upstream: {exc.strerror or exc}"
                ) from None
            key = new_key()
            extra = list(headers)
            if offered_protocols:
                extra.append(("Sec-WebSocket-Protocol", ", ".join(offered_protocols)))
            transport.write(build_upgrade_request(target.address, target.base_path + path, key, extra))
            assert protocol.head is not None
            head, rest = await protocol.head
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise UpstreamUnavailable(
            ConnectResult.TIMEOUT, f"upstream {target.address} did not complete the handshake within {timeout:.3g}s"
        ) from None
    except BaseException:
        if transport is not None:
            transport.abort()
        raise
    try:
        response = parse_upgrade_response(head)
        if response.status != 101:
            transport.close()
            raise UpstreamRefused(response)
        subprotocol = check_accept(response, key, offered_protocols)
    except HandshakeError as exc:
        transport.abort()
        raise UpstreamUnavailable(ConnectResult.INVALID, f"invalid upstream handshake: {exc}") from None
    return UpstreamConnection(transport, protocol, subprotocol, rest)


_RETRY_PAUSE: Final = 0.1
"""Pause between rounds over the targets while none is reachable."""


async def connect_any(
    pool: TargetPool,
    connect_timeout: float,
    path: str,
    headers: list[tuple[str, str]],
    offered_protocols: list[str],
    report: Callable[[str], None],
    *,
    wait: bool = True,
) -> tuple[UpstreamConnection, Target]:
    """Connect to the first target that answers, trying them in the pool's order.

    With ``wait`` (new clients), while no target is reachable it keeps trying until
    ``connect_timeout`` has passed, so a client arriving during an app restart waits
    instead of failing at once. Without it (reconnects, which pace themselves with
    backoff), one round over the targets. Every attempt's result goes to ``report``.

    Raises:
        UpstreamUnavailable: no target answered within ``connect_timeout``.
        UpstreamRefused: a target answered the upgrade with an HTTP status (not retried).
    """
    deadline = time.monotonic() + connect_timeout
    last: UpstreamUnavailable | None = None
    while True:
        for target in pool.candidates():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                connection = await connect_upstream(target, path, headers, offered_protocols, remaining)
            except UpstreamUnavailable as exc:
                report(exc.result.value)
                pool.failed(target)
                # Keep the most telling failure: an attempt cut short by our own deadline says
                # less than an earlier refusal or bad answer (502 rather than 504).
                if last is None or exc.result is not ConnectResult.TIMEOUT:
                    last = exc.with_traceback(None)  # its traceback holds this frame: no cycle through it
                continue
            except UpstreamRefused:
                report(ConnectResult.REJECTED.value)
                pool.succeeded(target)
                raise
            report(ConnectResult.OK.value)
            pool.succeeded(target)
            return connection, target
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not wait:
            error = last or UpstreamUnavailable(
                ConnectResult.TIMEOUT, f"no upstream answered within {connect_timeout:g}s"
            )
            last = None
            try:
                raise error
            finally:
                # The raised error's traceback holds this frame: a local still holding the error would
                # be a reference cycle keeping the caller's frames (and the session in them) alive.
                del error
        await asyncio.sleep(min(_RETRY_PAUSE, remaining))
