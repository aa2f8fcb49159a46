"""Confirmation pings: what the upstream has read of the client's messages, at almost no cost.

While client messages flow, :class:`Confirmations` sends a ping on the upstream leg at most every
``reconnect.confirm_interval``; its pong (a WebSocket peer answers pings in order) moves the
:class:`~gateway.core.delivery.Ledger`'s confirmed position to the message boundary the ping was
sent at. An idle session sends nothing. Only one confirmation ping is outstanding at a time, so
a frozen upstream costs one ping, not one per interval.

The client leg calls :meth:`Confirmations.wrote` for every write upstream; the upstream leg hands
it the pongs that are not its keepalive's (:meth:`Confirmations.pong`). During an outage the
session detaches it from the client leg (nothing is written upstream) and re-attaches it after
the replay.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Final

from gateway.core.delivery import Ledger, Mark
from gateway.core.sink import MessagePositions

__all__ = ["Confirmations"]

_CONFIRM_PAYLOAD: Final = struct.Struct("!cQ")
"""9 bytes: never equal to a keepalive ping's 8-byte payload."""


class Confirmations:
    """Confirmation pings for one session.

    Args:
        ledger: the confirmed position (and kept bytes, at_least_once).
        scanner: the client leg's message positions (``Leg.positions``: the scanner, or the inflater).
        interval: least seconds between two confirmation pings.
        send_ping: writes a ping with this payload on the session's current upstream leg.
        listen: makes the client leg call :meth:`wrote` on every write (``self``) or not (None).
            at_most_once needs to hear of a write only when no ping is due: between a write that
            armed the timer and the next pong, the relay pays nothing for it.
    """

    __slots__ = ("_counter", "_handle", "_interval", "_listen", "_outstanding", "_payload", "_scanner",
                 "_send_ping", "ledger")

    def __init__(self, ledger: Ledger, scanner: MessagePositions, interval: float,
                 send_ping: Callable[[bytes], None], listen: Callable[[Confirmations | None], None]) -> None:
        self.ledger = ledger
        self._scanner = scanner
        self._interval = interval
        self._send_ping = send_ping
        self._listen = listen
        self._handle: asyncio.TimerHandle | None = None
        self._outstanding: Mark | None = None
        self._payload = b""
        self._counter = 0

    def wrote(self, data: bytes, more: bytes = b"") -> None:
        """Frames went upstream: record them (at_least_once), and arm a confirmation ping unless one is due."""
        if self.ledger.keeps_bytes:
            scanner = self._scanner
            self.ledger.wrote(data, more, scanner.complete_messages, scanner.at_boundary)
        else:
            self._listen(None)  # until the next pong: its ping will cover this write and later ones
        if self._handle is None and self._outstanding is None:
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._fire)

    def follow(self, positions: MessagePositions) -> None:
        """A resume replaced the client leg: read message positions from the new one."""
        self._scanner = positions

    def _mark(self) -> Mark:
        if self.ledger.keeps_bytes:
            return self.ledger.mark()
        # Without kept bytes only the count matters: every complete message has been written whole.
        return Mark(self._scanner.complete_messages, 0)

    def _fire(self) -> None:
        self._handle = None
        mark = self._mark()
        if mark.messages <= self.ledger.confirmed:
            self._listen(self)  # mid-message since the last confirmation: the next write arms again
            return
        self._counter += 1
        self._payload = _CONFIRM_PAYLOAD.pack(b"c", self._counter)
        self._outstanding = mark
        self._send_ping(self._payload)

    def pong(self, payload: bytes) -> None:
        """A pong from the upstream that is not the keepalive's: the confirmation, if it matches."""
        mark = self._outstanding
        if mark is None or payload != self._payload:
            return
        self._outstanding = None
        self.ledger.confirm(mark)
        if not self._arm_if_unconfirmed():
            self._listen(self)  # all confirmed: the next write arms the timer

    def stop(self) -> None:
        """The upstream leg is gone or closing: no more pings, and a late pong confirms nothing."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._outstanding = None

    def restart(self) -> None:
        """After the replay to a new upstream: confirm what it was sent, and hear of new writes."""
        self.stop()
        self._listen(self)
        self._arm_if_unconfirmed()

    def _arm_if_unconfirmed(self) -> bool:
        """Arm the next confirmation ping if complete messages are waiting for one."""
        if self._mark().messages <= self.ledger.confirmed:
            return False
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._fire)
        return True
