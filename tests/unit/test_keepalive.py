"""The keepalive wheel (gateway/keepalive.py): one loop timer for every leg's next ping."""

from __future__ import annotations

import asyncio

from gateway.keepalive import SLOT_SECONDS, PingWheel, wheel


class FakeLeg:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def keepalive_due(self) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))


async def test_legs_are_pinged_in_due_order_from_one_timer_and_discarded_ones_are_not() -> None:
    loop = asyncio.get_running_loop()
    ping_wheel = PingWheel(loop)
    log: list[tuple[str, float]] = []
    start = loop.time()
    late, early, gone = FakeLeg("late", log), FakeLeg("early", log), FakeLeg("gone", log)
    ping_wheel.add(late, 0.2)
    ping_wheel.add(early, 0.05)
    slot = ping_wheel.add(gone, 0.1)
    ping_wheel.discard(gone, slot)
    assert len(ping_wheel) == 2
    await asyncio.sleep(0.35)
    assert [name for name, _ in log] == ["early", "late"]
    for (name, at), delay in zip(log, (0.05, 0.2), strict=True):
        assert delay <= at - start <= delay + SLOT_SECONDS + 0.1, (name, at - start)
    assert len(ping_wheel) == 0


async def test_a_leg_due_sooner_re_arms_the_timer_and_each_loop_has_its_own_wheel() -> None:
    loop = asyncio.get_running_loop()
    ping_wheel = wheel()
    assert wheel() is ping_wheel
    log: list[tuple[str, float]] = []
    start = loop.time()
    ping_wheel.add(FakeLeg("in a second", log), 1.0)
    ping_wheel.add(FakeLeg("soon", log), 0.05)
    await asyncio.sleep(0.2)
    assert [name for name, _ in log] == ["soon"] and log[0][1] - start < 0.3
    other = await asyncio.to_thread(asyncio.run, _wheel_of_running_loop())  # another loop, in a thread
    assert other is not ping_wheel


async def _wheel_of_running_loop() -> PingWheel:
    return wheel()
