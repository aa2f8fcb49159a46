"""What an upstream loss means, decided without I/O: a refusal or poison message to close on, or an
outage to ride out with a replay buffer primed with what the lost upstream may not have handled.

:func:`judge_outage` applies :func:`gateway.core.delivery.judge_loss` to a loss as the session sees
it and returns the loss for the next judgement (the poison rule compares two in a row);
:func:`outage_buffer` builds the replay buffer and says which messages the outage costs, by reason.
The asyncio side (:mod:`gateway.outage`) applies both.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.config import ReconnectConfig
from gateway.core.delivery import (
    DeliveryMode,
    Loss,
    Unconfirmed,
    Verdict,
    first_message_is_invalid_text,
    judge_loss,
)
from gateway.core.replay import MessageBuffer, Overflow
from gateway.core.sink import MessagePositions

__all__ = ["LossCause", "OutageStart", "judge_outage", "outage_buffer"]


@dataclass(frozen=True, slots=True)
class LossCause:
    """How the upstream connection ended."""

    reset: bool = False
    """With a TCP reset (the app closed it with unread data: it stopped reading)."""
    timed_out: bool = False
    """The gateway gave up on it: a keepalive ping went unanswered."""


@dataclass(frozen=True, slots=True)
class OutageStart:
    """An outage starting now: its replay buffer, what it costs and, if the kept messages do not fit
    under the ``close`` overflow policy, why the client must be closed instead."""

    buffer: MessageBuffer
    lost: dict[str, int]
    """Client messages lost at the start, by ``reason`` label."""
    overflow: str = ""


def judge_outage(unconfirmed: Unconfirmed, positions: MessagePositions, read: int, previous: Loss | None,
                 cause: LossCause, keep_limit: int) -> tuple[Verdict, Loss]:
    """Is this upstream loss a refusal or a poison message rather than an outage?

    Args:
        unconfirmed: what the lost upstream left unconfirmed (:meth:`gateway.core.delivery.Ledger.lost`).
        positions: the client leg's message positions.
        read: the most messages any upstream of the session has confirmed: a window message re-sent
            to a new upstream was read by an earlier one, so the rules name the first message no
            upstream confirmed.
        previous: the session's previous loss, if any.
        cause: how the connection ended.
        keep_limit: ``reconnect.buffer_bytes``.

    Returns:
        the verdict, and this loss (the next call's ``previous``).
    """
    pending = positions.complete_messages > read or not positions.at_boundary
    loss = Loss(
        first_unconfirmed=read + 1 if pending else 0,
        reset=cause.reset,
        last_message=positions.complete_messages + (0 if positions.at_boundary else 1),
        last_size=positions.last_message_size,
        timed_out=cause.timed_out,
    )
    skip = read - unconfirmed.resend_from
    invalid_text = (unconfirmed.lost_overflow == 0 and skip >= 0 and bool(unconfirmed.resend)
                    and first_message_is_invalid_text(unconfirmed.resend, skip))
    return judge_loss(loss, previous, keep_limit, invalid_text), loss


def outage_buffer(config: ReconnectConfig, unconfirmed: Unconfirmed, in_message: bool,
                  recent: bytes | bytearray | None, recent_too_large: bool) -> OutageStart:
    """The replay buffer for an outage starting now, primed with what the lost upstream left unconfirmed.

    at_most_once: the window's messages (confirmed, perhaps still in the app server's queue) and the
    unconfirmed ones are counted as lost; only a message still in progress (its start kept in
    ``recent``) is re-sent whole. at_least_once: the kept window and unconfirmed messages go first
    (possible duplicates), those past the byte limits are counted as lost. The buffer has room for
    the window on top of ``buffer_messages`` and ``buffer_bytes``.
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
        return OutageStart(buffer, lost, str(exc))
    return OutageStart(buffer, lost)
