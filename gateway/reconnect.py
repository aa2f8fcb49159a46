"""Keeping the client connected while the upstream leg is replaced (upstream restart or crash).

One :class:`UpstreamRecovery` per session. When the upstream goes away with a
retryable code (or with no close frame), the session enters ``RECONNECTING``:
the client leg stays open, the client's messages go into a bounded
:class:`~gateway.replay.MessageBuffer`, and a task reconnects with jittered
backoff until ``reconnect.give_up_after``. On success the buffered messages are
written to the new upstream first, in order, then relaying resumes.

What is guaranteed, and what not, is written in docs/reconnection.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from gateway.backoff import full_jitter_backoff, retryable_close
from gateway.closecodes import Cause, CloseCode
from gateway.config import ReconnectConfig
from gateway.replay import MessageBuffer, Overflow, OverflowPolicy
from gateway.upstream import UpstreamConnection, UpstreamRefused, UpstreamUnavailable

if TYPE_CHECKING:
    from gateway.session import Session

__all__ = ["Reopen", "UpstreamRecovery"]

logger = logging.getLogger("gateway.reconnect")

Reopen = Callable[[int], Awaitable[UpstreamConnection]]
"""Opens a new upstream connection; the argument is the attempt number (1, 2, ...)."""


class UpstreamRecovery:
    """Outage handling for one session: breaker, buffer, reconnect loop, resume.

    Args:
        session: the session whose upstream leg is replaced.
        config: reconnect settings.
        reopen: opens a new upstream connection with the original request.
        subprotocol: the subprotocol the first upstream chose; a new one must choose the same.
    """

    __slots__ = (
        "_losses",
        "_outage_started",
        "_ready",
        "_task",
        "allowed",
        "buffer",
        "config",
        "outage_total",
        "reconnects",
        "reopen",
        "session",
        "subprotocol",
    )

    def __init__(self, session: Session, config: ReconnectConfig, reopen: Reopen, subprotocol: str | None) -> None:
        self.session = session
        self.config = config
        self.reopen = reopen
        self.subprotocol = subprotocol
        self.allowed = True
        """False while draining: an upstream loss then closes the client as before."""
        self.buffer: MessageBuffer | None = None
        self.reconnects = 0
        self.outage_total = 0.0
        self._outage_started = 0.0
        self._losses: deque[float] = deque()
        self._task: asyncio.Task[None] | None = None
        self._ready: UpstreamConnection | None = None

    def should_retry(self, code: int | None) -> bool:
        """Whether an upstream loss with ``code`` (None: no close frame) starts a reconnect."""
        codes = self.config.codes
        if code is None and CloseCode.ABNORMAL not in codes:
            return False
        return self.allowed and retryable_close(code, codes)

    def begin(self, code: int | None) -> None:
        """The upstream is gone: hold the client, buffer its messages, start reconnecting."""
        session = self.session
        now = time.monotonic()
        window_start = now - self.config.breaker_window
        while self._losses and self._losses[0] < window_start:
            self._losses.popleft()
        self._losses.append(now)
        if len(self._losses) > self.config.max_reconnects:
            session.metrics.breaker_tripped()
            session.close_client_after_loss(
                CloseCode.INTERNAL_ERROR,
                f"circuit breaker: upstream lost {len(self._losses)} times in "
                f"{self.config.breaker_window:g}s",
                Cause.INTERNAL,
            )
            return
        if session.upstream.scanner.mid_frame or session.upstream.scanner.in_message:
            session.close_client_after_loss(
                CloseCode.INTERNAL_ERROR, "upstream lost in the middle of a message to the client", Cause.ABNORMAL
            )
            return
        policy = OverflowPolicy(self.config.overflow)
        earlier = None if session.client.recent_too_large else session.client.recent
        if earlier is not None:
            # The start of a message still in progress was kept: it will be re-sent whole.
            self.buffer = MessageBuffer(self.config.buffer_messages, self.config.buffer_bytes, policy)
            self.buffer.prime(bytes(earlier))
        else:
            skip_bytes, skip_message = session.client.scanner.cut_point()
            self.buffer = MessageBuffer(
                self.config.buffer_messages,
                self.config.buffer_bytes,
                policy,
                skip_bytes=skip_bytes,
                skip_message=skip_message,
            )
        self._outage_started = now
        session.enter_outage(self.buffer)
        if self.config.notify_loss:
            session.tell_client(self.config.notify_loss.format(session_id=session.session_id))
        logger.info(
            "session %s: upstream lost (%s); reconnecting",
            session.session_id,
            "no close frame" if code is None else f"close {code}",
        )
        self._task = asyncio.get_running_loop().create_task(self._reconnect())

    def hold(self, data: bytes) -> None:
        """Client bytes during an outage go to the buffer (the client leg's forward path)."""
        buffer = self.buffer
        assert buffer is not None
        try:
            buffer.feed(data)
        except Overflow as exc:
            self.session.close_client_after_loss(CloseCode.TRY_AGAIN_LATER, str(exc), Cause.UPSTREAM_UNAVAILABLE)
            return
        if self._ready is not None and not buffer.skipping:
            self._resume()

    async def _reconnect(self) -> None:
        metrics = self.session.metrics
        deadline = self._outage_started + self.config.give_up_after
        attempt = 0
        for delay in full_jitter_backoff(self.config.initial_backoff, self.config.max_backoff):
            if time.monotonic() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            attempt += 1
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    connection = await self.reopen(attempt)
            except TimeoutError:
                metrics.reconnect_attempt("timeout")
                break
            except UpstreamUnavailable as exc:
                metrics.reconnect_attempt(exc.result)
                continue
            except UpstreamRefused:
                metrics.reconnect_attempt("rejected")
                continue
            if connection.subprotocol != self.subprotocol:
                connection.transport.abort()
                metrics.reconnect_attempt("subprotocol")
                self._task = None  # ending on its own: cancel() must not cancel this task
                self.session.close_client_after_loss(
                    CloseCode.INTERNAL_ERROR,
                    f"reconnected upstream chose subprotocol {connection.subprotocol!r}, "
                    f"not {self.subprotocol!r}",
                    Cause.PROTOCOL_ERROR,
                )
                return
            metrics.reconnect_attempt("ok")
            self._ready = connection
            assert self.buffer is not None
            if not self.buffer.skipping:
                self._resume()
            return
        self._task = None  # ending on its own: cancel() must not cancel this task
        self.session.close_client_after_loss(
            CloseCode.TRY_AGAIN_LATER,
            f"upstream unavailable for {time.monotonic() - self._outage_started:.1f}s",
            Cause.UPSTREAM_UNAVAILABLE,
        )

    def _resume(self) -> None:
        connection, buffer = self._ready, self.buffer
        assert connection is not None and buffer is not None
        self._ready = None
        self.buffer = None
        self._task = None
        replayed = len(buffer.messages)
        outage = time.monotonic() - self._outage_started
        self.reconnects += 1
        self.outage_total += outage
        self._report_losses(buffer)
        self.session.metrics.session_resumed(outage, replayed)
        if self.config.notify_resume:
            self.session.tell_client(
                self.config.notify_resume.format(
                    session_id=self.session.session_id, outage_ms=round(outage * 1000), replayed=replayed
                )
            )
        self.session.resume(connection, buffer.drain())
        logger.info(
            "session %s: upstream back after %.3fs; %d messages replayed", self.session.session_id, outage, replayed
        )

    def _account_losses(self) -> None:
        """Count what the buffer lost and the outage time, once, when the outage ends without resuming."""
        if self.buffer is not None:
            self._report_losses(self.buffer)
            self.outage_total += time.monotonic() - self._outage_started

    def _report_losses(self, buffer: MessageBuffer) -> None:
        self.session.metrics.replay_lost(buffer.dropped_messages, buffer.overflows > 0, buffer.policy.value)

    def cancel(self) -> None:
        """The session is closing: stop reconnecting and drop a connection not yet in use."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._ready is not None:
            self._ready.transport.abort()
            self._ready = None
        if self.buffer is not None:
            self._account_losses()
            self.buffer = None

    def state(self) -> tuple[int, int, bool]:
        """(messages held, bytes held, reconnecting) for the collector."""
        buffer = self.buffer
        if buffer is None:
            return 0, 0, False
        return len(buffer.messages), buffer.bytes, True
