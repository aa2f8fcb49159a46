"""Target order without sockets: selection rules and cool-down."""

from __future__ import annotations

from gateway.core.targets import Selection, TargetPool


def test_round_robin_and_least_sessions_order() -> None:
    """Round-robin rotates the first choice; least-sessions prefers the emptiest target."""
    urls = ("ws://127.0.0.1:1", "ws://127.0.0.1:2", "ws://127.0.0.1:3")
    pool = TargetPool(urls, Selection.ROUND_ROBIN, 5, lambda: 0.0)
    firsts = [pool.candidates()[0].port for _ in range(4)]
    assert firsts == [1, 2, 3, 1]
    least = TargetPool(("ws://127.0.0.1:1", "ws://127.0.0.1:2"), Selection.LEAST_SESSIONS, 5, lambda: 0.0)
    least.opened(least.targets[0])
    assert least.candidates()[0].port == 2


def test_failed_target_is_tried_last_during_cooldown() -> None:
    """A target that failed to connect goes to the end of the order until its cool-down ends."""
    now = [100.0]
    pool = TargetPool(("ws://127.0.0.1:1", "ws://127.0.0.1:2"), Selection.LEAST_SESSIONS, 60, lambda: now[0])
    pool.failed(pool.targets[0])
    assert [t.port for t in pool.candidates()] == [2, 1]
    pool.succeeded(pool.targets[0])
    assert [t.port for t in pool.candidates()] == [1, 2]


def test_a_failed_target_is_back_in_order_when_its_cooldown_ends() -> None:
    """On the injected clock: 59.9 s after a failure the target is still last, at 60 s it is first again."""
    now = [100.0]
    pool = TargetPool(("ws://127.0.0.1:1", "ws://127.0.0.1:2"), Selection.LEAST_SESSIONS, 60, lambda: now[0])
    pool.failed(pool.targets[0])
    now[0] = 159.9
    assert [t.port for t in pool.candidates()] == [2, 1]
    now[0] = 160.0
    assert [t.port for t in pool.candidates()] == [1, 2]
