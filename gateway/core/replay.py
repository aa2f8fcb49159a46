"""The replay buffer: client messages held while the upstream leg is down (pure, no sockets).

It receives the same bytes the client leg would have written upstream (data
frames only, still masked, possibly re-fragmented by the gateway) and splits
them into whole messages at frames with FIN set. Only whole messages are kept
and replayed, in order; the frames' bytes are replayed unchanged (each frame
carries its own masking key, so they stay valid on a new connection).

A message the client was in the middle of when the outage began is re-sent
whole: the client leg keeps the bytes forwarded since the last message
boundary (only while a message is incomplete, up to the buffer's byte limit)
and :meth:`MessageBuffer.prime` takes the unfinished message's start from
them. If that start was not kept (too large), the buffer is started in "skip"
mode and drops the rest of the message, counted in ``dropped["cut"]``.
"""

from __future__ import annotations

import enum
from collections import deque

from gateway.core.codec import read_header

__all__ = ["MessageBuffer", "Overflow", "OverflowPolicy"]


class OverflowPolicy(enum.Enum):
    """What happens when a new message does not fit."""

    CLOSE = "close"
    """Stop buffering; the session closes the client with 1013."""
    DROP_OLDEST = "drop_oldest"
    """Drop the oldest messages until the new one fits (counted)."""


class Overflow(Exception):
    """The buffer is full under the ``close`` policy."""


class MessageBuffer:
    """Whole client messages, bounded by count and bytes.

    Args:
        max_messages: most messages held.
        max_bytes: most bytes (frame bytes, headers included) held.
        policy: what to do when a message does not fit.
        skip_message: True if the outage began inside a message: its remaining frames are dropped.
    """

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        policy: OverflowPolicy,
        *,
        skip_message: bool = False,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.policy = policy
        self.messages: deque[bytes] = deque()
        self.bytes = 0
        self.dropped: dict[str, int] = {}
        """Messages lost, by reason: ``cut`` (the outage began inside a message whose start was not
        kept), ``overflow`` (dropped as oldest), ``too_large`` (larger than the whole buffer)."""
        self.overflows = 0
        self._pending = bytearray()
        """Bytes of the message being received (whole frames and a partial one)."""
        self._frame_left = 0
        self._skipping = skip_message
        self._fin = False
        self._header = bytearray()
        self._priming = False
        if self._skipping:
            self._drop("cut")

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def feed(self, data: bytes) -> None:
        """Take forwarded bytes; complete messages are queued.

        Raises:
            Overflow: under the ``close`` policy, when a message does not fit.
        """
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self._frame_left:
                take = min(self._frame_left, end - pos)
                if not self._skipping:
                    self._pending += view[pos : pos + take]
                self._frame_left -= take
                pos += take
                if not self._frame_left and self._fin:
                    self._message_done()
                continue
            had = len(self._header)
            chunk = view[pos : pos + 14 - had]
            self._header += chunk
            header_len, length, fin = self._parse_header()
            if header_len == 0:
                pos += len(chunk)
                continue
            pos += header_len - had
            header = bytes(self._header[:header_len])
            self._header.clear()
            if not self._skipping:
                self._pending += header
            self._frame_left = length
            self._fin = fin
            if not length and fin:
                self._message_done()

    def _parse_header(self) -> tuple[int, int, bool]:
        """(header length, payload length, FIN) of the buffered header, or (0, 0, False) if incomplete
        (:func:`gateway.core.codec.read_header`, the one reader of frame headers)."""
        h = self._header
        read = read_header(h, 0, len(h)) if len(h) >= 2 else None
        if read is None:
            return 0, 0, False
        return read[0], read[1], bool(h[0] & 0x80)

    def prime(self, earlier: bytes) -> None:
        """Take what was already forwarded since the last message boundary before the outage.

        Complete messages in it reached the old upstream and are dropped here; the start of a
        message still in progress is kept, so that message is replayed whole once it ends.
        Call once, before :meth:`feed`.
        """
        self._priming = True
        try:
            self.feed(earlier)
        finally:
            self._priming = False

    def _message_done(self) -> None:
        if self._priming:
            self._pending.clear()
            return
        if self._skipping:
            self._skipping = False
            self._pending.clear()
            return
        message = bytes(self._pending)
        self._pending.clear()
        if len(message) > self.max_bytes:
            # It can never fit: drop it alone, before it could evict messages that do fit.
            if self.policy is OverflowPolicy.CLOSE:
                self.overflows += 1
                raise Overflow(f"message of {len(message)} bytes is larger than the replay buffer")
            self._drop("too_large")
            self.overflows += 1
            return
        while self.messages and (len(self.messages) >= self.max_messages or self.bytes + len(message) > self.max_bytes):
            if self.policy is OverflowPolicy.CLOSE:
                self.overflows += 1
                raise Overflow(f"replay buffer full ({len(self.messages)} messages, {self.bytes} bytes)")
            self.bytes -= len(self.messages.popleft())
            self._drop("overflow")
            self.overflows += 1
        self.messages.append(message)
        self.bytes += len(message)

    @property
    def in_message(self) -> bool:
        """True while a message has started but not finished (it would be cut if replay began now)."""
        return bool(self._pending) or self._frame_left > 0 or bool(self._header)

    @property
    def skipping(self) -> bool:
        """True while the rest of a message cut by the outage is still arriving (replay must wait)."""
        return self._skipping

    def drain(self) -> bytes:
        """Everything to write to the new upstream, in order; the buffer is empty afterwards.

        Whole messages first, then the start of a message still arriving (its rest follows
        on the live stream, so the new upstream sees it whole).
        """
        data = b"".join(self.messages) + bytes(self._pending) + bytes(self._header)
        self.messages.clear()
        self.bytes = 0
        self._pending.clear()
        self._header.clear()
        return data
