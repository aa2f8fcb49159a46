"""Replacing a lost upstream leg: the reconnect loop and the hold for the client's data meanwhile.

This module knows nothing of the session. :func:`reconnect` is a coroutine
that returns a new connection (:class:`Reconnected`) or why there is none
(:class:`GaveUp`); the session applies the result. :class:`OutageHold` is the
client leg's data destination during the outage: it feeds the bounded
:class:`~gateway.core.replay.MessageBuffer` and tells its owner when the
buffer overflows and when replay may start.

What is guaranteed, and what not, is written in docs/reconnection.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gateway.core.backoff import Breaker, Delays
from gateway.core.closerules import Event
from gateway.core.config import ReconnectConfig
from gateway.core.delivery import (
    DeliveryMode,
    Loss,
    Unconfirmed,
    Verdict,
    first_message_is_invalid_text,
    judge_loss,
)
from gateway.core.labels import RECONNECT_SUBPROTOCOL, ConnectResult
from gateway.core.replay import MessageBuffer, Overflow
from gateway.core.scanner import MessagePositions
from gateway.delivery import Confirmations
from gateway.upstream import UpstreamConnection, UpstreamRefused, UpstreamUnavailable

__all__ = ["GaveUp", "OutageHold", "Reconnected", "Recovery", "Reopen", "judge_outage", "outage_buffer", "reconnect"]

Reopen = Callable[[int], Awaitable[UpstreamConnection]]
"""Opens a new upstream connection; the argument is the attempt number (1, 2, ...)."""



@dataclass(frozen=True, slots=True)
class Reconnected:
    """A new upstream connection, upgraded with the same subprotocol."""

    connection: UpstreamConnection
    attempts: int


@dataclass(frozen=True, slots=True)
class GaveUp:
    """No new upstream: the client is closed as the rule for ``event`` says, with ``reason``."""

    event: Event
    reason: str


async def reconnect(
    reopen: Reopen,
    delays: Delays,
    deadline: float,
    subprotocol: str | None,
    report: Callable[[str], None],
) -> Reconnected | GaveUp:
    """Try to open a new upstream until ``deadline`` (monotonic seconds), pacing attempts by ``delays``.

    Args:
        reopen: opens and upgrades one new connection.
        delays: makes the sequence of waits before each attempt (the first is usually 0).
        deadline: when to give up.
        subprotocol: the subprotocol the first upstream chose; a new one must choose the same.
        report: receives each attempt's result label (``upstream_reconnects_total``).
    """
    started = time.monotonic()
    attempt = 0
    for delay in delays():
        if time.monotonic() + delay >= deadline:
            break
        await asyncio.sleep(delay)
        attempt += 1
        try:
            async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                connection = await reopen(attempt)
        except TimeoutError:
            report(ConnectResult.TIMEOUT.value)
            break
        except UpstreamUnavailable as exc:
            report(exc.result.value)
            continue
        except UpstreamRefused:
            report(ConnectResult.REJECTED.value)
            continue
        if connection.subprotocol != subprotocol:
            connection.transport.abort()
            report(RECONNECT_SUBPROTOCOL)
            return GaveUp(
                Event.SUBPROTOCOL_CHANGED,
                f"reconnected upstream chose subprotocol {connection.subprotocol!r}, not {subprotocol!r}",
            )
        report(ConnectResult.OK.value)
        return Reconnected(connection, attempt)
    return GaveUp(Event.RECONNECT_GAVE_UP, f"upstream unavailable for {time.monotonic() - started:.1f}s")


@dataclass(slots=True)
class Recovery:
    """What a session needs to replace its upstream leg (reconnection enabled)."""

    config: ReconnectConfig
    reopen: Reopen
    subprotocol: str | None
    delays: Delays
    breaker: Breaker
    allowed: bool = True
    """False while draining: an upstream loss then closes the client."""
    hold: OutageHold | None = None
    ready: UpstreamConnection | None = None
    task: asyncio.Task[None] | None = None
    outage_started: float = 0.0
    reconnects: int = 0
    outage_total: float = 0.0
    confirmations: Confirmations | None = None
    """Confirmation pings and the delivery ledger (set when the session is attached)."""
    last_loss: Loss | None = None
    """The previous upstream loss, for the poison-message rule (gateway.core.delivery.judge_loss)."""
    possible_duplicates: int = 0
    """Unconfirmed messages the current outage will re-send (at_least_once; sent in the reconnect handshake)."""
    lost_in_outage: int = 0
    """Client messages lost at the current outage so far (its start, then the replay buffer)."""
    lost_total: int = 0
    duplicates_total: int = 0


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


def outage_buffer(
    config: ReconnectConfig, unconfirmed: Unconfirmed, in_message: bool, recent: bytearray | None,
    recent_too_large: bool,
) -> tuple[MessageBuffer, dict[str, int], str]:
    """The replay buffer for an outage starting now, primed with what the lost upstream left unconfirmed.

    at_most_once: the window's messages (confirmed, perhaps still in the app server's queue) and the
    unconfirmed ones are counted as lost; only a message still in progress (its start kept in
    ``recent``) is re-sent whole. at_least_once: the kept window and unconfirmed messages go first
    (possible duplicates), those past the byte limits are counted as lost. The buffer has room for
    the window on top of ``buffer_messages`` and ``buffer_bytes``.

    Returns:
        the buffer; the messages lost, by reason; and, if the kept messages overflow the buffer
        under the ``close`` policy, why (the session then closes the client).
    """
    lost = {"unhandled": unconfirmed.unhandled}
    max_messages, max_bytes = config.buffer_messages, config.buffer_bytes
    if config.delivery is DeliveryMode.AT_LEAST_ONCE:
        skip = in_message and not unconfirmed.kept_partial
        lost["overflow"] = unconfirmed.lost_overflow
        max_messages += config.app_queue_messages
        max_bytes += config.app_queue_bytes
    else:
        skip = recent_too_large and in_message
        lost["unconfirmed"] = unconfirmed.messages
    buffer = MessageBuffer(max_messages, max_bytes, config.overflow, skip_message=skip)
    try:
        if unconfirmed.resend:
            buffer.feed(unconfirmed.resend)  # whole messages queued, a partial one's start kept
        elif recent is not None and not recent_too_large:
            buffer.prime(bytes(recent))  # the start of a message in progress: re-sent whole
    except Overflow as exc:
        lost["overflow"] = lost.get("overflow", 0) + unconfirmed.resend_messages - len(buffer.messages)
        return buffer, lost, str(exc)
    return buffer, lost, ""


def judge_outage(recovery: Recovery, unconfirmed: Unconfirmed, positions: MessagePositions, reset: bool,
                 timed_out: bool) -> Verdict:
    """Is this upstream loss a refusal or a poison message rather than an outage?
    (:func:`gateway.core.delivery.judge_loss`; ``positions`` are the client leg's; ``reset``: the
    connection ended with a TCP reset; ``timed_out``: a keepalive ping went unanswered.)"""
    assert recovery.confirmations is not None
    # A window message re-sent to a new upstream was read by an earlier one: the rules name the
    # first message no upstream of the session has confirmed.
    ledger = recovery.confirmations.ledger
    read = max(ledger.highest_confirmed, ledger.confirmed)
    pending = positions.complete_messages > read or not positions.at_boundary
    loss = Loss(
        first_unconfirmed=read + 1 if pending else 0,
        reset=reset,
        last_message=positions.complete_messages + (0 if positions.at_boundary else 1),
        last_size=positions.last_message_size,
        timed_out=timed_out,
    )
    skip = read - unconfirmed.resend_from
    invalid_text = (unconfirmed.lost_overflow == 0 and skip >= 0 and bool(unconfirmed.resend)
                    and first_message_is_invalid_text(unconfirmed.resend, skip))
    verdict = judge_loss(loss, recovery.last_loss, recovery.config.buffer_bytes, invalid_text)
    recovery.last_loss = loss
    return verdict
