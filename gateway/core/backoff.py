"""Reconnection pacing and the retry decision: jittered backoff, "is this loss worth a retry?", a breaker.

Pure: no sockets, no clock of its own (callers pass ``now``). The reconnect
loop takes its delays from a generator factory that tests can replace.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator

from gateway.core.closecodes import CloseCode

__all__ = ["Breaker", "Delays", "full_jitter_backoff", "worth_retrying"]

Delays = Callable[[], Iterator[float]]
"""Makes a fresh sequence of reconnect delays for one outage."""


def full_jitter_backoff(initial: float, cap: float, rng: random.Random | None = None) -> Iterator[float]:
    """Yield delays: uniform in [0, min(cap, initial * 2**attempt)] ("full jitter").

    The first delay is 0 so a restarted upstream is tried at once; spreading the
    rest at random keeps many sessions from reconnecting in lockstep.

    Args:
        initial: base delay in seconds.
        cap: largest delay in seconds.
        rng: random source (tests pass a seeded one).
    """
    source = rng or random.Random()  # noqa: S311 - jitter, not security
    yield 0.0
    attempt = 0
    while True:
        yield source.uniform(0.0, min(cap, initial * (2**attempt)))
        if initial * (2**attempt) < cap:
            attempt += 1


def worth_retrying(code: int | None, retry_codes: frozenset[int]) -> bool:
    """Whether an upstream loss is handled by reconnecting rather than relayed to the client.

    The one place this is decided. ``code`` is the upstream's close code, or None
    when the connection dropped without a close frame (or stopped answering pings),
    which is retried when 1006 is in ``retry_codes``.
    """
    if code is None:
        return CloseCode.ABNORMAL in retry_codes
    return code in retry_codes


class Breaker:
    """A per-session circuit breaker: more than ``limit`` losses within ``window`` seconds trips it.

    Args:
        limit: losses survived within the window.
        window: seconds.
    """

    __slots__ = ("_losses", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._losses: deque[float] | None = None
        """Created at the first loss: an empty deque costs 600 bytes, and most sessions never lose one."""

    def record_loss(self, now: float) -> bool:
        """Count a loss at ``now``; True when the breaker trips (the session should close)."""
        if self._losses is None:
            self._losses = deque()
        losses = self._losses
        start = now - self.window
        while losses and losses[0] < start:
            losses.popleft()
        losses.append(now)
        return len(losses) > self.limit

    @property
    def losses(self) -> int:
        """Losses counted in the current window."""
        return len(self._losses) if self._losses is not None else 0
