"""Reconnection pacing and the retry decision (gateway/core/backoff.py): jittered backoff, "is this loss
worth a retry?", the per-session breaker. Pure: the breaker is given its times."""

from __future__ import annotations

import itertools
import random

from gateway.core.backoff import Breaker, full_jitter_backoff, worth_retrying


def test_backoff_full_jitter_and_cap() -> None:
    """First try is immediate; later delays stay under an exponentially growing ceiling capped at `cap`."""
    delays = list(itertools.islice(full_jitter_backoff(0.1, 2.0, random.Random(1)), 12))
    assert delays[0] == 0
    ceilings = [min(2.0, 0.1 * 2**i) for i in range(11)]
    assert all(0 <= d <= c for d, c in zip(delays[1:], ceilings, strict=True))
    assert len(set(delays[1:])) > 5, "jittered, not constant"


def test_worth_retrying_is_the_one_retry_decision() -> None:
    """Listed codes are retried; no close frame only when 1006 is listed; others (1000, app codes) are relayed."""
    codes = frozenset({1001, 1006, 1011, 1012})
    assert worth_retrying(None, codes)
    assert not worth_retrying(None, frozenset({1012}))
    assert worth_retrying(1012, codes)
    assert not worth_retrying(1000, codes)
    assert not worth_retrying(4001, codes)


def test_breaker_trips_past_its_limit_within_the_window() -> None:
    """Three losses survive a limit of 3 in 60 s; the fourth trips it; old losses fall out of the window."""
    breaker = Breaker(3, 60.0)
    assert [breaker.record_loss(t) for t in (0.0, 1.0, 2.0, 3.0)] == [False, False, False, True]
    assert not Breaker(3, 60.0).record_loss(0.0)
    assert breaker.record_loss(200.0) is False and breaker.losses == 1
