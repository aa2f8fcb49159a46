"""A virtual-time event loop for the unit tests: every timer fires at exactly its deadline, with no wait.

:class:`VirtualTimeLoop` is asyncio's own selector loop with one change. When nothing is ready to
run, asyncio would block in ``select()`` until the next timer is due; this loop instead sets its
clock to that timer's deadline and goes on. ``loop.time()`` starts at 0 and moves only that way,
so a test that waits out a 20 s keepalive takes microseconds, a 30 ms close timeout aborts at
``loop.time() == 0.03`` exactly, and the order of events is the same on every run and every
machine: no test sleeps real time, and none needs ``WS_GATEWAY_TEST_SCALE``.

What the clock does not cover:

- Work in threads (``run_in_executor``, ``asyncio.to_thread``) stops the clock until its result is
  back: the loop then waits for real, as asyncio would, and no timer fires early meanwhile.
- Real sockets do not belong here: the clock would jump past a timeout while the kernel still
  moves bytes. The loop refuses to jump while a file descriptor other than its own wake-up pipe is
  registered; tests with loopback sockets are marked ``real_loop`` (tests/unit/conftest.py) and
  bound their waits with ``tests.support.scaled``.
- ``time.monotonic()`` is not virtual: gateway code that reads it instead of ``loop.time()`` sees
  (almost) no time pass.

A test that waits for something that never comes fails at once instead of hanging until pytest-timeout:
when no callback is ready, no timer armed and no thread busy (nothing could ever wake the loop), or, if a
timer keeps re-arming itself (a keepalive ping does), once the clock would pass ``limit`` virtual seconds.

Helpers for tests: :func:`advance` (let virtual time pass), :func:`idle` (run what can run now,
without moving the clock), :func:`virtual_loop` (the running loop, checked to be this one).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "advance", "idle", "virtual_loop"]

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """The loop's selector: polls without waiting, and turns a wait for a timer into a clock jump."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:  # timeout 0: callbacks are ready to run
            return events
        loop = self.loop
        if loop.threads_busy:
            return super().select(timeout)  # a thread's result is on its way: wait for it, clock stopped
        if loop.wake_idle():
            return []
        if timeout is None:
            raise AssertionError("deadlock: no callback ready, no timer armed, no thread busy: the test waits for "
                                 "something that never happens")
        if len(self.get_map()) > 1:
            raise RuntimeError("a real socket is open on the virtual-time loop: mark the test real_loop")
        loop.jump()
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock jumps to the next timer's deadline whenever nothing is ready.

    Args:
        limit: virtual seconds after which a jump fails the test (it waits for what never comes).
    """

    def __init__(self, limit: float = 3600.0) -> None:
        self._now = 0.0
        self._limit = limit
        self._idle: list[asyncio.Future[None]] = []
        self.threads_busy = 0
        """Executor jobs whose result has not reached the loop yet: the clock waits for them."""
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def jump(self) -> None:
        """Set the clock to the earliest timer's deadline (the loop found nothing else to do)."""
        # _run_once computed its select() timeout from this very handle; jumping to its deadline
        # (rather than adding the timeout) keeps the time exact, so the timer fires at its deadline.
        earliest = self._heap()[0]
        if earliest.when() > self._limit:
            raise AssertionError(f"virtual time would pass {self._limit:g}s: the test waits for something "
                                 f"that never happens (next timer: {earliest!r})")
        self._now = max(self._now, earliest.when())

    def idle(self) -> asyncio.Future[None]:
        """A future that is done once nothing more can run at the current instant (the clock stays)."""
        waiter = self.create_future()
        self._idle.append(waiter)
        return waiter

    def wake_idle(self) -> bool:
        """Complete the :meth:`idle` futures; False if there were none."""
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return bool(waiters)

    def timers(self) -> int:
        """Timers armed and not cancelled (what a test of "one timer for all legs" counts)."""
        return sum(not handle.cancelled() for handle in self._heap())

    def _heap(self) -> list[asyncio.TimerHandle]:
        """asyncio's heap of armed timers (BaseEventLoop._scheduled, earliest first; cancelled ones may remain)."""
        return self._scheduled  # type: ignore[attr-defined,no-any-return]

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any,
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1

    async def shutdown_default_executor(self, *args: Any) -> None:
        self.threads_busy += 1  # joins the executor's threads in a thread of its own
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self.threads_busy -= 1


def virtual_loop() -> VirtualTimeLoop:
    """The running loop, which must be a :class:`VirtualTimeLoop` (not a real one: no real sleeps)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), f"needs the virtual-time loop (tests/unit), runs on {loop!r}"
    return loop


async def advance(seconds: float) -> None:
    """Let ``seconds`` of virtual time pass: every timer due by then fires, and what it set off runs."""
    loop = virtual_loop()
    await asyncio.sleep(seconds)
    await loop.idle()


async def idle() -> None:
    """Run everything that can run at this instant (callbacks, woken tasks), without moving the clock."""
    await virtual_loop().idle()
