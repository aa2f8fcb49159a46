"""What one direction of a session carried: the integers the metrics and the session log report.

A session owns two :class:`DirectionCounts`, one per direction, for its whole life. The parsers of
whichever connection carries that direction now write into it: the frame scanner of the leg that
reads it, that leg's inflater (client to upstream) and the client leg's deflater (upstream to
client). A leg that replaces another (a reconnected upstream, a resumed client) is handed the same
object, so nothing is copied across a replacement and no counter can be left behind by one. Pure:
no sockets, no event loop.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FIELDS", "DirectionCounts"]

FIELDS: Final = ("compressed_bytes", "compressed_messages", "discarded_messages", "fragmented_messages",
                 "messages", "payload_bytes", "plain_bytes")
"""The names of :class:`DirectionCounts`' integers (its slots; compiled with mypyc a class has no
``__slots__`` to read at run time, so the fold walks this)."""


class DirectionCounts:
    """One direction's counts (slotted plain integers: the per-message path adds to them directly).

    The compression fields describe the client leg's permessage-deflate in this direction: messages
    that crossed it compressed, their payload bytes on the client's wire (``compressed_bytes``) and as
    the app sends or receives them (``plain_bytes``).
    """

    __slots__ = FIELDS

    def __init__(self) -> None:
        self.messages = 0
        """Complete data messages relayed (the scanner's count; it also numbers the messages)."""
        self.payload_bytes = 0
        """Data-frame payload bytes relayed, as the sending peer framed them."""
        self.fragmented_messages = 0
        """Messages re-sent as fragments because a frame passed the destination's frame limit."""
        self.discarded_messages = 0
        """Messages not relayed because they arrived (or were waiting to be inflated) after the
        session began to close."""
        self.compressed_messages = 0
        self.compressed_bytes = 0
        self.plain_bytes = 0

    def add_to(self, totals: DirectionCounts) -> None:
        """Add these counts to ``totals`` (a finished session folded into the process's totals)."""
        for name in FIELDS:
            setattr(totals, name, getattr(totals, name) + getattr(self, name))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in FIELDS)
        return f"DirectionCounts({fields})"
