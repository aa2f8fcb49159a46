"""Replacing a session's lost upstream: one :class:`Outage` per session, from the loss to the replay.

The session owns the legs and their wiring; the outage owns everything between "the upstream is
gone" and "a new one has the client's messages": the judgement of the loss (a refusal or poison
message closes the client instead, :mod:`gateway.core.outage`), the breaker, the
:class:`OutageHold` that keeps the client's data, the reconnect task (:func:`gateway.reconnect.reconnect`),
the confirmation hand-off and what every outage cost (:class:`RecoveryStats`). The session calls
:meth:`Outage.begin` at a retryable loss, hears :meth:`OutageHost.upstream_back` when a new upstream
is connected and the held data is at a message boundary, takes :meth:`Outage.replay`'s bytes for
the new leg, and calls :meth:`Outage.end` if it closes meanwhile.

What is guaranteed, and what not, is written in docs/reconnection.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.core.backoff import Breaker, Delays, worth_retrying
from gateway.core.closerules import Event
from gateway.core.config import ReconnectConfig
from gateway.core.delivery import Loss
from gateway.core.outage import LossCause, judge_outage, outage_buffer
from gateway.core.replay import MessageBuffer, Overflow
from gateway.delivery import Confirmations
from gateway.metrics import GatewayMetrics
from gateway.reconnect import GaveUp, Reconnected, Reopen, reconnect
from gateway.sessionlog import session_fields
from gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from gateway.leg import Leg

__all__ = ["Outage", "OutageHold", "OutageHost", "RecoveryPlan", "RecoveryStats", "Replay"]

logger = logging.getLogger("gateway.session")


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """How a session replaces its upstream, fixed when it opens (reconnection enabled)."""

    config: ReconnectConfig
    reopen: Reopen
    subprotocol: str | None
    """The first upstream's choice: a new upstream must make the same."""
    delays: Delays
    breaker: Breaker


@dataclass(slots=True)
class RecoveryStats:
    """What a session's outages cost (its log line's fields)."""

    reconnects: int = 0
    outage_seconds: float = 0.0
    lost_messages: int = 0
    possible_duplicates: int = 0


@dataclass(frozen=True, slots=True)
class Replay:
    """An outage that ended with a new upstream: the connection, and what to write to it first."""

    connection: UpstreamConnection
    data: bytes
    whole: int
    """Bytes of ``data`` that are whole messages; the rest is the start of one still in progress."""


class OutageHost(Protocol):
    """What an outage asks of its session."""

    def close_client(self, event: Event, reason: str, code: int = 0) -> None:
        """Give up on the upstream: close the client as the close table says for ``event``."""

    def upstream_waiting(self) -> None:
        """A new upstream is connected, but the client is in the middle of a message the outage cut."""

    def upstream_back(self) -> None:
        """A new upstream is connected and the held client data is at a message boundary."""


class OutageHold:
    """The client leg's data destination while its upstream is replaced.

    Args:
        buffer: where whole client messages are kept for replay.
        on_overflow: called with the reason when the buffer is full under the ``close`` policy.
        on_ready: called when a new upstream is waiting and the buffer is at a message boundary.
    """

    __slots__ = ("buffer", "on_overflow", "on_ready", "upstream_ready")

    def __init__(self, buffer: MessageBuffer, on_overflow: Callable[[str], None], on_ready: Callable[[], None]) -> None:
        self.buffer = buffer
        self.on_overflow = on_overflow
        self.on_ready = on_ready
        self.upstream_ready = False
        """A new upstream is connected; replay starts once the cut message has ended."""

    def write(self, data: bytes) -> None:
        """Client bytes (whole frames) during the outage."""
        try:
            self.buffer.feed(data)
        except Overflow as exc:
            self.on_overflow(str(exc))
            return
        if self.upstream_ready and not self.buffer.skipping:
            self.on_ready()

    def writelines(self, parts: Iterable[bytes]) -> None:
        """A re-headed client frame during the outage."""
        self.write(b"".join(parts))

    def get_write_buffer_size(self) -> int:
        """Nothing waits on a socket: no backpressure while holding (the buffer has its own limits)."""
        return 0


class Outage:
    """One session's upstream replacement, for the session's whole life (the poison rule compares
    each loss with the one before).

    Args:
        plan: how to reconnect.
        confirmations: the session's confirmation pings and delivery ledger.
        host: the session.
        metrics: where counts go.
        session_id: for log lines.
    """

    __slots__ = ("_host", "_lost_now", "_ready", "_started", "_task", "allowed", "announced", "confirmations",
                 "hold", "last_loss", "metrics", "plan", "session_id", "stats")

    def __init__(self, plan: RecoveryPlan, confirmations: Confirmations, host: OutageHost, metrics: GatewayMetrics,
                 session_id: str) -> None:
        self.plan = plan
        self.confirmations = confirmations
        self._host = host
        self.metrics = metrics
        self.session_id = session_id
        self.stats = RecoveryStats()
        self.allowed = True
        """False while draining: an upstream loss then closes the client."""
        self.last_loss: Loss | None = None
        """The previous upstream loss, for the poison-message rule."""
        self.hold: OutageHold | None = None
        """Set while an outage is under way."""
        self.announced = 0
        """Messages the current outage re-sends that may be duplicates (``X-Gateway-Possible-Duplicates``)."""
        self._ready: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._lost_now = 0

    def may_retry(self, code: int | None) -> bool:
        """Whether a loss with this close code (None: no close frame) is ridden out."""
        return self.allowed and worth_retrying(code, self.plan.config.codes)

    def begin(self, code: int | None, cause: LossCause, client: Leg, upstream_in_message: bool) -> OutageHold | None:
        """The upstream is gone (``code``: its close code, None without one): judge the loss and start
        reconnecting. Returns the hold for the client's data, or None when the client was closed
        instead (refusal, poison message, breaker, the upstream lost in the middle of a message to
        the client, kept messages overflowing the buffer)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        config, ledger, positions = self.plan.config, self.confirmations.ledger, client.positions
        self.confirmations.stop()
        unconfirmed = ledger.lost(positions.complete_messages, positions.in_message)
        read = max(ledger.highest_confirmed, ledger.confirmed)
        verdict, self.last_loss = judge_outage(unconfirmed, positions, read, self.last_loss, cause,
                                               config.buffer_bytes)
        # Closing instead of reconnecting: the window's and the unconfirmed messages are all lost.
        closing_loss = {"unhandled": unconfirmed.window, "unconfirmed": unconfirmed.messages}
        if verdict.code:
            closing_loss["unconfirmed"] -= 1 if verdict.message <= positions.complete_messages else 0
            self._count_lost({"refused": 1, **closing_loss})
            logger.info("closing the client with %d: %s", verdict.code, verdict.reason,
                        extra=session_fields(self.session_id))
            self._host.close_client(Event.MESSAGE_REFUSED, verdict.reason, verdict.code)
            return None
        breaker = self.plan.breaker
        if breaker.record_loss(now):
            self.metrics.breaker_tripped()
            self._count_lost(closing_loss)
            self._host.close_client(Event.BREAKER_TRIPPED, f"circuit breaker: upstream lost {breaker.losses} times "
                                                           f"in {breaker.window:g}s")
            return None
        if upstream_in_message:
            self._count_lost(closing_loss)
            self._host.close_client(Event.LOST_MID_MESSAGE, "")
            return None
        self._lost_now = 0
        start = outage_buffer(config, unconfirmed, positions.in_message, client.recent, client.recent_too_large)
        self._count_lost(start.lost)
        if start.overflow:
            self._host.close_client(Event.REPLAY_OVERFLOW, start.overflow)
            return None
        self.announced = unconfirmed.resend_messages
        self.stats.possible_duplicates += unconfirmed.resend_messages
        self.hold = OutageHold(start.buffer, self._overflowed, self._host.upstream_back)
        self._started = now
        if config.notify_loss:
            client.write_text(config.notify_loss.format(session_id=self.session_id))
        logger.info(
            "upstream lost (%s); reconnecting; %d messages to re-send, %d possibly lost%s",
            "no close frame" if code is None else f"close {code}", self.announced, self._lost_now,
            f", from message #{unconfirmed.assumed_handled + 1}" if self.announced or self._lost_now else "",
            extra=session_fields(self.session_id),
        )
        self._task = loop.create_task(self._reconnect())
        return self.hold

    async def _reconnect(self) -> None:
        plan = self.plan
        result = await reconnect(plan.reopen, plan.delays, self._started + plan.config.give_up_after,
                                 plan.subprotocol, self.metrics.reconnect_attempt)
        self._task = None  # ending on its own: the outage's end must not cancel this task
        hold = self.hold
        if hold is None:  # the session closed meanwhile
            if isinstance(result, Reconnected):
                result.connection.transport.abort()
            return
        if isinstance(result, GaveUp):
            self._host.close_client(result.event, result.reason)
            return
        self._ready = result.connection
        hold.upstream_ready = True
        if hold.buffer.skipping:
            self._host.upstream_waiting()  # the hold calls upstream_back when the cut message ends
        else:
            self._host.upstream_back()

    def _overflowed(self, reason: str) -> None:
        self._host.close_client(Event.REPLAY_OVERFLOW, reason)

    def replay(self, client: Leg) -> Replay:
        """The outage is over (after :meth:`OutageHost.upstream_back`): count it, tell the client when
        configured, and hand over the new upstream with the held messages to write to it first."""
        hold, connection = self.hold, self._ready
        assert hold is not None and connection is not None
        self.hold = self._ready = None
        buffer = hold.buffer
        replayed, whole = len(buffer.messages), buffer.bytes
        seconds = asyncio.get_running_loop().time() - self._started
        self.stats.reconnects += 1
        self.stats.outage_seconds += seconds
        self._count_lost(buffer.dropped, buffer.overflows > 0)
        self.metrics.session_resumed(seconds, replayed)
        config = self.plan.config
        if config.notify_resume:
            client.write_text(config.notify_resume.format(session_id=self.session_id, outage_ms=round(seconds * 1000),
                                                          replayed=replayed, lost=self._lost_now))
        data = buffer.drain()
        self.confirmations.ledger.resent(data, whole, client.positions.complete_messages, replayed)
        logger.info("upstream back after %.3fs; %d messages replayed, %d lost", seconds, replayed, self._lost_now,
                    extra=session_fields(self.session_id))
        return Replay(connection, data, whole)

    def end(self) -> None:
        """The session closes during the outage: stop reconnecting, count what the buffer lost."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._ready is not None:
            self._ready.transport.abort()
            self._ready = None
        if self.hold is not None:
            buffer = self.hold.buffer
            self._count_lost(buffer.dropped, buffer.overflows > 0)
            self.stats.outage_seconds += asyncio.get_running_loop().time() - self._started
            self.hold = None

    def buffered(self) -> tuple[int, int, bool]:
        """Replay buffer use for the collector: messages, bytes, and whether an outage is under way."""
        if self.hold is None:
            return 0, 0, False
        return len(self.hold.buffer.messages), self.hold.buffer.bytes, True

    def _count_lost(self, lost: dict[str, int], overflowed: bool = False) -> None:
        """Count client messages lost at an outage, by reason: metrics, this outage, the session."""
        self.metrics.replay_lost(lost, overflowed, self.plan.config.overflow.value)
        total = sum(lost.values())
        self._lost_now += total
        self.stats.lost_messages += total

