"""Reconnection pacing: jittered exponential backoff and "is this worth a retry?".

Pure functions; the session's reconnect loop takes the delays from a generator
so tests can pass their own.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["full_jitter_backoff", "retryable_close"]


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


def retryable_close(code: int | None, retry_codes: frozenset[int]) -> bool:
    """Whether an upstream close (None: no close frame) should be retried rather than relayed."""
    return code is None or code in retry_codes
