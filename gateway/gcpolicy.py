"""How the gateway uses CPython's cyclic garbage collector: rarely, because sessions do not need it.

A full collection walks every tracked object, and a gateway's tracked objects are mostly its
live sessions (about 70 each). CPython starts one whenever the long-lived objects have grown by
a quarter since the last, which is exactly what a reconnect storm does: measured with
``python -m bench.storm`` (5,000 sessions arriving at B), full passes of 35 to 345 ms set the
handshake p99. Nothing the gateway creates per session needs the collector: a finished session
breaks its own reference cycles (:meth:`gateway.session.Session._finish`), so reference counting
frees it at once. The young generations are still collected as usual (cheap: they hold only new
objects); full collections happen only after ``FULL_COLLECTION_EVERY`` young-generation passes,
and the objects that exist once the gateway has started (modules, config, metrics) are frozen so
no pass walks them again. ``python_gc_*`` metrics show how often each generation runs and what
it finds.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["FULL_COLLECTION_EVERY", "tune_after_start"]

FULL_COLLECTION_EVERY: Final = 100
"""Generation-1 passes between full passes (CPython's default is 10)."""


def tune_after_start() -> None:
    """Collect once, freeze what start-up created, and make full collections rare."""
    gc.collect()
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
