"""What the upstream has confirmed of the client's messages (pure, no sockets).

The gateway cannot see into the app, but a WebSocket peer answers pings in order: a pong proves
the upstream's WebSocket layer read every frame written before its ping. The session sends such
a *confirmation ping* on the upstream leg at most every ``reconnect.confirm_interval`` while
client messages flow (none while the session is idle), and this ledger turns the pongs into
"the first N client messages were received".

At an upstream loss, the messages after the last confirmation are *unconfirmed*: the old
upstream may or may not have read them. ``reconnect.delivery`` says what happens to them:

- ``at_most_once``: they are not sent again; each is counted as lost (reason ``unconfirmed``).
  Only counts are kept, nothing per message.
- ``at_least_once``: the ledger keeps the frames' bytes (as written, still masked) from the last
  confirmed message boundary on, up to ``reconnect.buffer_bytes``; they are re-sent first to the
  new upstream, which is told how many of them may be duplicates. Past the limit the ledger
  stops keeping bytes until the next message boundary; messages it could not keep are lost,
  counted as ``overflow``.

Positions are counted in complete messages (the client scanner's count of messages whose last
byte has been written upstream) and in absolute byte offsets of the upstream-bound stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DeliveryMode", "Ledger", "Mark", "Unconfirmed"]


class DeliveryMode(enum.Enum):
    """What the gateway does with unconfirmed client messages when the upstream is lost."""

    AT_MOST_ONCE = "at_most_once"
    AT_LEAST_ONCE = "at_least_once"


@dataclass(frozen=True, slots=True)
class Mark:
    """Where the stream stood at the last message boundary when a confirmation ping was sent."""

    messages: int
    """Complete messages written before the ping."""
    offset: int
    """Absolute offset of the end of the last of them (at_least_once; 0 otherwise)."""


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """What an upstream loss left unconfirmed."""

    messages: int
    """Complete messages written after the last confirmation."""
    resend: bytes
    """at_least_once: the kept bytes, whole messages first, then the start of one in progress."""
    resend_messages: int
    """Complete messages in ``resend`` (each may be a duplicate for the app)."""
    lost_overflow: int
    """Unconfirmed complete messages that were not kept (the byte limit was reached)."""
    kept_partial: bool
    """``resend`` ends with the start of a message still in progress (its rest follows live)."""


class Ledger:
    """Confirmed position and, for at_least_once, the bytes after it.

    Args:
        keep_bytes: at_least_once (keep what was written since the confirmed boundary).
        limit: most bytes kept.
    """

    __slots__ = ("_boundary_messages", "_boundary_offset", "_bytes", "_keep", "_keeping", "_start",
                 "_start_messages", "_written", "confirmed", "limit")

    def __init__(self, *, keep_bytes: bool, limit: int) -> None:
        self._keep = keep_bytes
        self.limit = limit
        self.confirmed = 0
        """Complete client messages the upstream has confirmed reading (since the session began)."""
        self._bytes = bytearray()
        self._written = 0
        """Absolute offset of the end of what was written upstream."""
        self._start = 0
        """Absolute offset of ``_bytes[0]``: always a message boundary."""
        self._start_messages = 0
        """Complete messages before ``_start``."""
        self._keeping = keep_bytes
        self._boundary_messages = 0
        """Complete messages at the last message boundary seen at the end of a write."""
        self._boundary_offset = 0
        """Its absolute offset (at_least_once)."""

    @property
    def keeps_bytes(self) -> bool:
        """True in at_least_once mode."""
        return self._keep

    @property
    def kept_bytes(self) -> int:
        """Bytes held for a possible re-send (at_least_once)."""
        return len(self._bytes)

    def wrote(self, data: bytes, more: bytes, complete_messages: int, at_boundary: bool) -> None:
        """Bytes of whole frames (``data`` then ``more``) went upstream; ``complete_messages`` and
        ``at_boundary`` describe the stream after them (``at_boundary``: no message in progress)."""
        if not self._keep:
            if at_boundary:
                self._boundary_messages = complete_messages
            return
        size = len(data) + len(more)
        self._written += size
        if self._keeping:
            if len(self._bytes) + size <= self.limit:
                self._bytes += data
                if more:
                    self._bytes += more
            else:
                self._keeping = False  # too much unconfirmed: stop until the next boundary
                self._bytes.clear()
        if at_boundary:
            self._boundary_messages = complete_messages
            self._boundary_offset = self._written
            if not self._keeping:
                self._keeping = True
                self._start = self._written
                self._start_messages = complete_messages

    def mark(self) -> Mark:
        """The position a confirmation ping sent now will confirm (the last boundary)."""
        return Mark(self._boundary_messages, self._boundary_offset)

    @property
    def unconfirmed_boundary(self) -> bool:
        """True if the last boundary is past the confirmed position (a ping would confirm more)."""
        return self._boundary_messages > self.confirmed

    def confirm(self, mark: Mark) -> None:
        """The pong for a ping sent at ``mark`` arrived: everything up to it was read upstream."""
        if mark.messages <= self.confirmed:
            return
        self.confirmed = mark.messages
        if self._keep and self._keeping and mark.offset > self._start:
            del self._bytes[: mark.offset - self._start]
            self._start = mark.offset
            self._start_messages = mark.messages

    def lost(self, complete_messages: int, in_message: bool) -> Unconfirmed:
        """The upstream is gone: what it may not have read (``in_message``: a message is in progress,
        its start is at the end of the kept bytes). Until :meth:`resent`, nothing more is recorded."""
        unconfirmed = complete_messages - self.confirmed
        if not self._keep:
            return Unconfirmed(unconfirmed, b"", 0, 0, False)
        if not self._keeping:
            return Unconfirmed(unconfirmed, b"", 0, unconfirmed, False)
        kept = complete_messages - self._start_messages
        return Unconfirmed(unconfirmed, bytes(self._bytes), kept, unconfirmed - kept, in_message)

    def resent(self, data: bytes, whole: int, complete_messages: int, replayed: int) -> None:
        """The replay went to the new upstream and the ledger starts again there.

        Args:
            data: the replayed bytes: whole messages (the first ``whole`` bytes), then perhaps the
                start of a message still in progress.
            complete_messages: the client scanner's count now.
            replayed: whole messages in ``data``; everything before them is settled (confirmed by
                the old upstream, or counted as lost).
        """
        self.confirmed = complete_messages - replayed
        start = self._written
        self._written += len(data)
        self._boundary_messages = complete_messages
        self._boundary_offset = start + whole
        self._bytes.clear()
        if not self._keep:
            return
        self._start = start
        self._start_messages = self.confirmed
        self._keeping = len(data) <= self.limit
        if self._keeping:
            self._bytes += data
