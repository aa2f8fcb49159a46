"""The keepalive wheel (gateway/keepalive.py): one loop timer for every leg's next ping, on virtual time."""

from __future__ import annotations

import asyncio
import math

from gateway.keepalive import SLOT_SECONDS, PingWheel, wheel
from tests.virtual_time import advance, virtual_loop


class FakeLeg:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def keepalive_due(self) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))


def slot_end(when: float) -> float:
    """The documented firing time of a ping due at ``when``: rounded up to the end of its 50 ms slot."""
    return math.ceil(when / SLOT_SECONDS) * SLOT_SECONDS


async def test_legs_are_pinged_in_due_order_from_one_timer_and_discarded_ones_are_not() -> None:
    """Three legs, one discarded, share one loop timer; each other is pinged at the end of its slot, in order."""
    loop = virtual_loop()
    await advance(0.01)  # off a slot boundary, so that rounding up shows
    ping_wheel = PingWheel(loop)
    log: list[tuple[str, float]] = []
    start = loop.time()
    late, early, gone = FakeLeg("late", log), FakeLeg("early", log), FakeLeg("gone", log)
    ping_wheel.add(late, 0.2)
    ping_wheel.add(early, 0.05)
    slot = ping_wheel.add(gone, 0.1)
    ping_wheel.discard(gone, slot)
    assert len(ping_wheel) == 2 and loop.timers() == 1
    await advance(0.35)
    assert log == [("early", slot_end(start + 0.05)), ("late", slot_end(start + 0.2))]
    assert [at for _, at in log] == [0.1, 0.25]
    for (name, at), delay in zip(log, (0.05, 0.2), strict=True):
        assert delay <= at - start < delay + SLOT_SECONDS, (name, at - start)
    assert len(ping_wheel) == 0 and loop.timers() == 0


async def test_a_leg_due_sooner_re_arms_the_timer_and_each_loop_has_its_own_wheel() -> None:
    """A leg due before the armed slot moves the one timer earlier; each event loop gets its own wheel."""
    loop = virtual_loop()
    ping_wheel = wheel()
    assert wheel() is ping_wheel
    log: list[tuple[str, float]] = []
    start = loop.time()
    ping_wheel.add(FakeLeg("in a second", log), 1.0)
    ping_wheel.add(FakeLeg("soon", log), 0.05)
    assert loop.timers() == 1, "re-armed, not a second timer"
    await advance(0.2)
    assert log == [("soon", slot_end(start + 0.05))]
    await advance(1.0)
    assert log[1] == ("in a second", slot_end(start + 1.0))
    other = await asyncio.to_thread(asyncio.run, _wheel_of_running_loop())  # another loop, in a thread
    assert other is not ping_wheel


async def _wheel_of_running_loop() -> PingWheel:
    return wheel()
