"""One timer for every leg's next keepalive ping (issue 13 point 3: what an idle session holds).

An idle session's legs wait 20 s between pings. A timer handle per leg (``call_later``) costs
about 540 bytes with uvloop, a tenth of what an idle session's own objects take. The
:class:`PingWheel` keeps, per event loop, the legs due in each 50 ms slot in a set, and one loop
timer for the earliest slot: a leg waiting for its ping holds a set entry and an integer. Pings go
out up to one slot late, well inside ``ping_jitter``. Pong deadlines stay ordinary timers: one
exists only while a ping is unanswered, milliseconds on a live connection.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Final, Protocol

__all__ = ["SLOT_SECONDS", "PingWheel", "Pinged", "wheel"]

SLOT_SECONDS: Final = 0.05


class Pinged(Protocol):
    """A leg as the wheel sees it."""

    def keepalive_due(self) -> None:
        """Its slot came: send the ping."""


class PingWheel:
    """The legs waiting for their next ping, by 50 ms slot, and one timer for the earliest slot."""

    __slots__ = ("_armed_slot", "_handle", "_loop", "_order", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Pinged]] = {}
        self._order: list[int] = []
        """The slots in ``_slots``, as a heap."""
        self._handle: asyncio.TimerHandle | None = None
        self._armed_slot = 0

    def add(self, leg: Pinged, delay: float) -> int:
        """Ping ``leg`` in ``delay`` seconds (rounded up to a slot); returns the slot, for :meth:`discard`."""
        slot = math.ceil((self._loop.time() + delay) / SLOT_SECONDS)
        legs = self._slots.get(slot)
        if legs is None:
            legs = self._slots[slot] = set()
            heapq.heappush(self._order, slot)
        legs.add(leg)
        if self._handle is None or slot < self._armed_slot:
            self._arm(slot)
        return slot

    def discard(self, leg: Pinged, slot: int) -> None:
        """``leg`` no longer waits for that slot (it closed, or its ping was re-armed)."""
        legs = self._slots.get(slot)
        if legs is not None:
            legs.discard(leg)

    def __len__(self) -> int:
        return sum(len(legs) for legs in self._slots.values())

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_slot = slot
        self._handle = self._loop.call_at(slot * SLOT_SECONDS, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        order = self._order
        while order and order[0] * SLOT_SECONDS <= now:
            for leg in self._slots.pop(heapq.heappop(order), ()):
                leg.keepalive_due()
        while order and not self._slots.get(order[0]):  # slots every leg left
            self._slots.pop(heapq.heappop(order), None)
        if order and self._handle is None:
            self._arm(order[0])


_WHEELS: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PingWheel]] = weakref.WeakKeyDictionary()


def wheel() -> PingWheel:
    """The running loop's wheel (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _WHEELS.get(loop)
    if found is None:
        found = _WHEELS[loop] = PingWheel(loop)
    return found
