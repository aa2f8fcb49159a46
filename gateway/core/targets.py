"""Upstream targets: several app processes behind one gateway, chosen per session.

``upstream.url`` may list several URLs (e.g. several uvicorn processes in the pod).
:class:`TargetPool` orders them for each connection attempt (round-robin or
least-sessions), skips a target that failed to connect for ``upstream.cooldown``,
and counts the sessions on each. Pure bookkeeping, no sockets; the caller passes the clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Selection", "Target", "TargetPool"]


@dataclass(slots=True, eq=False)
class Target:
    """One upstream app process."""

    url: str
    host: str
    port: int
    base_path: str
    sessions: int = 0
    cool_until: float = 0.0
    address: str = ""
    """``host:port``, also the Host header sent to it (set from host and port)."""

    def __post_init__(self) -> None:
        self.address = f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        return cls(url, parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"))


class Selection(enum.Enum):
    """How new sessions are spread over several targets (``upstream.selection``)."""

    ROUND_ROBIN = "round_robin"
    """Each new session starts with the next target in turn."""
    LEAST_SESSIONS = "least_sessions"
    """Each new session starts with the target holding the fewest sessions."""


class TargetPool:
    """Chooses targets for connection attempts.

    Args:
        urls: the upstream URLs, in configuration order.
        selection: how the first target of each attempt is chosen.
        cooldown: seconds a target that failed to connect is tried only after the others.
        clock: monotonic seconds (the gateway passes ``time.monotonic``; tests a fake).
    """

    def __init__(self, urls: tuple[str, ...], selection: Selection, cooldown: float,
                 clock: Callable[[], float]) -> None:
        self.targets = [Target.from_url(url) for url in urls]
        self.selection = selection
        self.cooldown = cooldown
        self._clock = clock
        self._next = 0

    def candidates(self) -> list[Target]:
        """Targets in the order to try them: available ones by the selection rule, cooling ones last."""
        now = self._clock()
        count = len(self.targets)
        if self.selection is Selection.LEAST_SESSIONS:
            ordered = sorted(self.targets, key=lambda t: t.sessions)
        else:
            start = self._next % count
            self._next += 1
            ordered = self.targets[start:] + self.targets[:start]
        ready = [t for t in ordered if t.cool_until <= now]
        cooling = sorted((t for t in ordered if t.cool_until > now), key=lambda t: t.cool_until)
        return ready + cooling

    def failed(self, target: Target) -> None:
        """A connection to ``target`` failed: try the others first for a while."""
        target.cool_until = self._clock() + self.cooldown

    def succeeded(self, target: Target) -> None:
        """A connection to ``target`` worked: it is no longer cooling down."""
        target.cool_until = 0.0

    @staticmethod
    def opened(target: Target) -> None:
        target.sessions += 1

    @staticmethod
    def closed(target: Target) -> None:
        target.sessions -= 1
