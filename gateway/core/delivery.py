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
from typing import Final

from gateway.core.codec import PACK_16, PACK_64, Opcode, mask_payload

__all__ = ["RECONNECT", "DeliveryMode", "Ledger", "Loss", "Mark", "Unconfirmed", "Verdict",
           "first_message_is_invalid_text", "judge_loss"]


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


@dataclass(frozen=True, slots=True)
class Loss:
    """One upstream loss as the refusal and poison rules see it."""

    first_unconfirmed: int
    """Number (1-based, in the session) of the first client message not confirmed; 0 if none."""
    reset: bool
    """The connection ended with a TCP reset (the app closed it with unread data: it stopped reading)."""
    last_message: int
    """Number of the last client message written upstream (in progress or complete)."""
    last_size: int
    """Its payload size as its frame headers declare it (so far, if in progress)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an upstream loss means for the session: reconnect (code 0), or close the client."""

    code: int
    reason: str = ""
    message: int = 0
    """The client message it names."""


RECONNECT: Final = Verdict(0)


def judge_loss(loss: Loss, previous: Loss | None, keep_limit: int, invalid_text: bool) -> Verdict:
    """Tell a refusal or a poison message from a crash, so the client is told instead of left waiting.

    Args:
        loss: this loss.
        previous: the session's previous upstream loss, if any.
        keep_limit: the most bytes of a message the gateway can keep to re-send (``reconnect.buffer_bytes``).
        invalid_text: the first unconfirmed message is kept, is text, and is not valid UTF-8.

    Rules, in order:

    1. A reset while the last message, unconfirmed and larger than ``keep_limit``, was being sent:
       the app refused it (a size limit: uvicorn ``--ws-max-size``) and it cannot be re-sent: 1009.
    2. The first unconfirmed message is the same as at the previous loss: it was re-sent and
       killed the new upstream too (a poison message): 1007 if it is invalid UTF-8, 1009 if both
       losses were resets (the app stopped reading in the middle of it: a size limit), else 1011
       (the app read it and failed: a crashing handler).
    3. Anything else is an outage: reconnect.
    """
    last_unconfirmed = loss.first_unconfirmed and loss.last_message >= loss.first_unconfirmed
    if loss.reset and last_unconfirmed and loss.last_size > keep_limit:
        return Verdict(1009, f"message #{loss.last_message} ({loss.last_size} bytes) refused by the upstream "
                             f"(reset while sending; too large to re-send)", loss.last_message)
    if loss.first_unconfirmed and previous is not None and previous.first_unconfirmed == loss.first_unconfirmed:
        number = loss.first_unconfirmed
        if invalid_text:
            return Verdict(1007, f"message #{number} is not valid UTF-8: the upstream dropped it twice", number)
        if loss.reset and previous.reset:
            return Verdict(1009, f"message #{number} refused by the upstream twice (reset while sending)", number)
        return Verdict(1011, f"message #{number} made the upstream fail twice", number)
    return RECONNECT


def first_message_is_invalid_text(data: bytes) -> bool:
    """True if ``data`` (frames as the client sent them, masked) begins with a complete text message
    whose payload is not valid UTF-8. Run only when a message is suspected, never per message."""
    pos, opcode, payload = 0, -1, bytearray()
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        length, header = b1 & 0x7F, 2
        if length == 126:
            length, header = PACK_16.unpack_from(data, pos + 2)[0], 4
        elif length == 127:
            length, header = PACK_64.unpack_from(data, pos + 2)[0], 10
        key = data[pos + header : pos + header + 4] if b1 & 0x80 else b""
        start = pos + header + len(key)
        if start + length > len(data):
            return False  # the message is not all here
        body = data[start : start + length]
        payload += mask_payload(key, body) if key else body
        if opcode < 0:
            opcode = b0 & 0x0F
        if b0 & 0x80:
            if opcode != Opcode.TEXT:
                return False
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return True
            return False
        pos = start + length
    return False
