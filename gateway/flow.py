"""Flow control between the two legs: pause reading one side while the other cannot keep up.

Each leg's transport has a write-buffer high-water mark (the leg's
``max_buffered``). When a write leaves the destination over it, the session
asks :class:`Backpressure` to pause reading the source until the destination
drains below its low mark; a client that stays behind past
``client.slow_consumer_timeout`` is reported (the session closes it with 1008).
Most sessions never need this, so the waits are created on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Backpressure", "FlowControlledProtocol", "Pausable", "WriteFlow"]


class WriteFlow:
    """Write-side flow control of one transport, whoever owns its protocol.

    Args:
        is_paused: tells whether the transport's buffer is over its high-water mark.
        wait_resumed: waits until it is below the low-water mark again (raises ConnectionError if lost).
    """

    __slots__ = ("is_paused", "wait_resumed")

    def __init__(self, is_paused: Callable[[], bool], wait_resumed: Callable[[], Awaitable[None]]) -> None:
        self.is_paused = is_paused
        self.wait_resumed = wait_resumed


class FlowControlledProtocol(asyncio.Protocol):
    """A raw connection protocol that keeps its transport's write-side state for a :class:`WriteFlow`.

    The transport calls ``pause_writing``/``resume_writing`` around its high-water mark; a relay
    asks :meth:`is_paused` per write and awaits :meth:`wait_resumed` only when it must hold. The
    waiter is created on first use and fails with ConnectionResetError once the connection is lost.
    """

    __slots__ = ("_drain_waiter", "_lost", "paused")
    _peer_name = "peer"
    """Names the connection in the error a lost connection's waiter raises."""

    def __init__(self) -> None:
        self.paused = False
        self._lost = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    def is_paused(self) -> bool:
        """True while the transport's write buffer is over its high-water mark."""
        return self.paused

    async def wait_resumed(self) -> None:
        """Wait until the transport's write buffer drains below its low-water mark."""
        if self._lost:
            raise ConnectionResetError(f"{self._peer_name} connection lost")
        if not self.paused:
            return
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that is cancelled (a timeout) must not cancel the future others share.
        await asyncio.shield(self._drain_waiter)

    def write_flow(self) -> WriteFlow:
        """This connection's write-side flow control, as a leg holds it."""
        return WriteFlow(self.is_paused, self.wait_resumed)

    def _connection_gone(self) -> None:
        """Called from ``connection_lost``: a relay waiting for a drain learns the connection is gone."""
        self._lost = True
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError(f"{self._peer_name} connection lost"))
        self._drain_waiter = None


class Pausable(Protocol):
    """A leg as backpressure sees it."""

    flow: WriteFlow

    def pause_reading(self) -> None:
        """Stop reading this leg's peer."""

    def resume_reading(self) -> None:
        """Read this leg's peer again."""


class Backpressure:
    """The waits under way for one session's destinations to drain.

    Args:
        on_stuck: called with the destination that stayed full past its timeout.
    """

    __slots__ = ("_on_stuck", "_tasks")

    def __init__(self, on_stuck: Callable[[Pausable], None]) -> None:
        self._on_stuck = on_stuck
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, source: Pausable, destination: Pausable, timeout: float | None) -> None:
        """Stop reading ``source`` until ``destination`` drains, at most ``timeout`` seconds (None: no limit)."""
        source.pause_reading()
        task = asyncio.get_running_loop().create_task(self._wait_drained(source, destination, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_drained(self, source: Pausable, destination: Pausable, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(destination.flow.wait_resumed(), timeout)
        except TimeoutError:
            self._on_stuck(destination)
            return
        except ConnectionError:
            # The destination is gone: the session learns it from its transport; reading the
            # source again lets its close (or the replay buffer, during an outage) take over.
            source.resume_reading()
            return
        source.resume_reading()

    def cancel(self) -> None:
        """The session ended: stop every wait."""
        for task in list(self._tasks):
            task.cancel()
