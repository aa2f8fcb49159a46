"""The reconnect loop: new upstream connections tried until one is upgraded or the outage's time is up.

This module knows nothing of the session. :func:`reconnect` is a coroutine
that returns a new connection (:class:`Reconnected`) or why there is none
(:class:`GaveUp`); :class:`gateway.outage.Outage` applies the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.core.backoff import Delays
from gateway.core.closerules import Event
from gateway.core.labels import RECONNECT_SUBPROTOCOL, ConnectResult
from gateway.upstream import UpstreamConnection, UpstreamRefused, UpstreamUnavailable

__all__ = ["GaveUp", "Reconnected", "Reopen", "reconnect"]

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
    """Try to open a new upstream until ``deadline`` (the event loop's clock), pacing attempts by ``delays``.

    Args:
        reopen: opens and upgrades one new connection.
        delays: makes the sequence of waits before each attempt (the first is usually 0).
        deadline: when to give up.
        subprotocol: the subprotocol the first upstream chose; a new one must choose the same.
        report: receives each attempt's result label (``upstream_reconnects_total``).
    """
    clock = asyncio.get_running_loop().time
    started = clock()
    attempt = 0
    for delay in delays():
        if clock() + delay >= deadline:
            break
        await asyncio.sleep(delay)
        attempt += 1
        try:
            async with asyncio.timeout(max(0.05, deadline - clock())):
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
    return GaveUp(Event.RECONNECT_GAVE_UP, f"upstream unavailable for {clock() - started:.1f}s")
