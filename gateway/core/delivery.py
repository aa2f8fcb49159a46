"""What the upstream has confirmed of the client's messages (pure, no sockets).

The gateway cannot see into the app, but a WebSocket peer answers pings in order: a pong proves
the upstream's WebSocket layer read every frame written before its ping. The session sends such
a *confirmation ping* on the upstream leg at most every ``reconnect.confirm_interval`` while
client messages flow (none while the session is idle), and this ledger turns the pongs into
"the first N client messages were read by the app server".

Read is not handled: uvicorn parses a read's frames, queues its messages for the ASGI handler and
answers a ping among them at once, so the messages just before a confirmed ping may still wait in
the app server's queue, and a SIGKILL loses them. The ledger therefore treats the last
``reconnect.app_queue_messages`` confirmed messages (the *window*) as possibly unhandled too.

At an upstream loss, ``reconnect.delivery`` says what happens to the window and to the messages
after the last confirmation (*unconfirmed*: the old upstream may or may not have read them):

- ``at_most_once``: they are not sent again; each is counted as lost (reasons ``unhandled`` for the
  window, ``unconfirmed`` for the rest). Only counts are kept, nothing per message.
- ``at_least_once``: the ledger keeps the frames' bytes (as written, still masked) from the
  window's first message boundary on: the window within ``reconnect.app_queue_bytes``, the
  unconfirmed messages within ``reconnect.buffer_bytes``; they are re-sent first to the new
  upstream, which is told how many of them may be duplicates. Window messages past their byte
  limit are counted as ``unhandled``; past the unconfirmed limit the ledger stops keeping bytes
  until the next message boundary, and the messages it could not keep are counted as ``overflow``.

Positions are counted in complete messages (the client scanner's count of messages whose last
byte has been written upstream) and in absolute byte offsets of the upstream-bound stream.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from gateway.core.codec import Opcode, mask_payload, read_header

__all__ = ["RECONNECT", "DeliveryMode", "Ledger", "Loss", "Mark", "Unconfirmed", "Verdict",
           "first_message_is_invalid_text", "judge_loss"]


MAX_BOUNDARIES: Final = 1024
"""Most message boundaries the ledger remembers; past it the newest replaces the last one (the window
can then start only further back: more is re-sent, never less)."""


_NO_BOUNDARIES: Final[deque[tuple[int, int]]] = deque(maxlen=0)
"""at_most_once keeps no boundaries: one shared deque that stays empty (a deque costs ~600 bytes per session)."""


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
    """What an upstream loss left unconfirmed or possibly unhandled."""

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
    unhandled: int = 0
    """Window messages (confirmed, perhaps still in the app server's queue) neither kept nor re-sent."""
    window: int = 0
    """All window messages: those at the start of ``resend`` and the ``unhandled`` ones."""
    assumed_handled: int = 0
    """Complete messages before the window: assumed to have reached the app's handler. Message
    ``assumed_handled + 1`` is the first that is re-sent or counted as lost."""
    resend_from: int = 0
    """Complete messages before the first one in ``resend`` (it is message ``resend_from + 1``)."""


class Ledger:
    """Confirmed position, the window of possibly unhandled messages and, for at_least_once, the
    bytes from the window's start on.

    Args:
        keep_bytes: at_least_once (keep what was written since the window's start).
        limit: most bytes of unconfirmed messages kept (``reconnect.buffer_bytes``).
        window: confirmed messages treated as possibly still in the app server's queue
            (``reconnect.app_queue_messages``; 0: a pong proves the handler got a message).
        window_bytes: most bytes of them kept to re-send (``reconnect.app_queue_bytes``).
    """

    __slots__ = ("_boundaries", "_boundary_messages", "_boundary_offset", "_bytes", "_confirmed_offset", "_keep",
                 "_keeping", "_settled", "_start", "_start_messages", "_written", "confirmed", "highest_confirmed",
                 "limit", "window", "window_bytes")

    def __init__(self, *, keep_bytes: bool, limit: int, window: int = 0, window_bytes: int = 0) -> None:
        self._keep = keep_bytes
        self.limit = limit
        self.window = window
        self.window_bytes = window_bytes
        self.confirmed = 0
        """Complete client messages the current upstream has confirmed reading, or settled before it
        (counted from the session's start)."""
        self.highest_confirmed = 0
        """Complete client messages some upstream of the session has confirmed reading: the first message
        after them is one no upstream has read (what the poison rule names)."""
        self._confirmed_offset = 0
        """Absolute offset of the end of the last confirmed message (at_least_once)."""
        self._settled = 0
        """Complete messages settled before the current upstream's first one (handled, or counted)."""
        self._bytes = bytearray()
        self._written = 0
        """Absolute offset of the end of what was written upstream."""
        self._start = 0
        """Absolute offset of ``_bytes[0]``: always a message boundary."""
        self._start_messages = 0
        """Complete messages before ``_start``."""
        self._boundaries: deque[tuple[int, int]] = deque(((0, 0),)) if keep_bytes else _NO_BOUNDARIES
        """(complete messages, offset) at the message boundaries from ``_start`` on (at_least_once):
        where the window's start may move to."""
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
        """Bytes held for a possible re-send (at_least_once): the window's and the unconfirmed ones."""
        return len(self._bytes)

    def wrote(self, data: bytes, more: bytes, complete_messages: int, at_boundary: bool) -> None:
        """Bytes of whole frames (``data`` then ``more``) went upstream; ``complete_messages`` and
        ``at_boundary`` describe the stream after them (``at_boundary``: no message in progress)."""
        if not self._keep:
            if at_boundary:
                self._boundary_messages = complete_messages
            return
        size = len(data) + len(more)
        if self._keeping:
            unconfirmed = self._written - max(self._start, self._confirmed_offset)
            if unconfirmed + size <= self.limit:
                self._bytes += data
                if more:
                    self._bytes += more
            else:
                self._keeping = False  # too much unconfirmed: stop until the next boundary
                self._bytes.clear()
                self._boundaries.clear()
        self._written += size
        if at_boundary:
            self._boundary_messages = complete_messages
            self._boundary_offset = self._written
            if not self._keeping:
                self._keeping = True
                self._start = self._written
                self._start_messages = complete_messages
            if len(self._boundaries) < MAX_BOUNDARIES:
                self._boundaries.append((complete_messages, self._written))
            else:
                self._boundaries[-1] = (complete_messages, self._written)

    def mark(self) -> Mark:
        """The position a confirmation ping sent now will confirm (the last boundary)."""
        return Mark(self._boundary_messages, self._boundary_offset)

    def confirm(self, mark: Mark) -> None:
        """The pong for a ping sent at ``mark`` arrived: everything up to it was read upstream.
        at_least_once: the kept bytes now start where the window before ``mark`` starts."""
        if mark.messages <= self.confirmed:
            return
        self.confirmed = mark.messages
        self.highest_confirmed = max(self.highest_confirmed, mark.messages)
        self._confirmed_offset = mark.offset
        if not (self._keep and self._keeping):
            return
        boundaries = self._boundaries
        cover_from = mark.messages - self.window
        # Move the start forward while the next boundary still covers the window, or while the
        # window is over its byte limit; never past the confirmed mark.
        while len(boundaries) > 1:
            next_messages, next_offset = boundaries[1]
            if next_offset > mark.offset:
                break
            if next_messages <= cover_from or mark.offset - boundaries[0][1] > self.window_bytes:
                boundaries.popleft()
            else:
                break
        start_messages, start = boundaries[0]
        if start > self._start:
            del self._bytes[: start - self._start]
            self._start = start
            self._start_messages = start_messages

    def lost(self, complete_messages: int, in_message: bool) -> Unconfirmed:
        """The upstream is gone: what it may not have read or handed on (``in_message``: a message is in
        progress, its start is at the end of the kept bytes). Until :meth:`resent`, nothing more is recorded."""
        confirmed = self.confirmed
        unconfirmed = complete_messages - confirmed
        assumed_handled = max(self._settled, confirmed - self.window)
        window = confirmed - assumed_handled
        if not self._keep:
            return Unconfirmed(unconfirmed, b"", 0, 0, False, unhandled=window, window=window,
                               assumed_handled=assumed_handled)
        kept_from = self._start_messages if self._keeping else complete_messages
        unhandled = max(0, min(kept_from, confirmed) - assumed_handled)
        lost_overflow = max(0, kept_from - confirmed)
        if not self._keeping:
            return Unconfirmed(unconfirmed, b"", 0, lost_overflow, False, unhandled=unhandled, window=window,
                               assumed_handled=assumed_handled)
        return Unconfirmed(unconfirmed, bytes(self._bytes), complete_messages - kept_from, lost_overflow, in_message,
                           unhandled=unhandled, window=window, assumed_handled=assumed_handled,
                           resend_from=kept_from)

    def resent(self, data: bytes, whole: int, complete_messages: int, replayed: int) -> None:
        """The replay went to the new upstream and the ledger starts again there.

        Args:
            data: the replayed bytes: whole messages (the first ``whole`` bytes), then perhaps the
                start of a message still in progress.
            complete_messages: the client scanner's count now.
            replayed: whole messages in ``data``; everything before them is settled (assumed handled
                by the old upstream, or counted as lost).
        """
        self.confirmed = self._settled = complete_messages - replayed
        start = self._written
        self._written += len(data)
        self._confirmed_offset = start
        self._boundary_messages = complete_messages
        self._boundary_offset = start + whole
        self._bytes.clear()
        self._boundaries.clear()
        if not self._keep:
            return
        self._start = start
        self._start_messages = self.confirmed
        self._boundaries.append((self.confirmed, start))
        self._keeping = len(data) <= self.limit
        if self._keeping:
            self._bytes += data
            if replayed:
                self._boundaries.append((complete_messages, start + whole))
        else:
            self._boundaries.clear()


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
    timed_out: bool = False
    """The gateway gave up on the upstream itself: a keepalive ping went unanswered. An app too busy
    to read (uvicorn stops reading while its handler is behind) looks the same as a frozen one."""


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
       (the app read it and failed: a crashing handler). Not when either loss was a ping timeout:
       a busy app that fell behind stops reading and answering pings with the same message first
       in line each time, and that message made nothing fail.
    3. Anything else is an outage: reconnect.
    """
    last_unconfirmed = loss.first_unconfirmed and loss.last_message >= loss.first_unconfirmed
    if loss.reset and last_unconfirmed and loss.last_size > keep_limit:
        return Verdict(1009, f"message #{loss.last_message} ({loss.last_size} bytes) refused by the upstream "
                             f"(reset while sending; too large to re-send)", loss.last_message)
    if (loss.first_unconfirmed and previous is not None and previous.first_unconfirmed == loss.first_unconfirmed
            and not (loss.timed_out or previous.timed_out)):
        number = loss.first_unconfirmed
        if invalid_text:
            return Verdict(1007, f"message #{number} is not valid UTF-8: the upstream dropped it twice", number)
        if loss.reset and previous.reset:
            return Verdict(1009, f"message #{number} refused by the upstream twice (reset while sending)", number)
        return Verdict(1011, f"message #{number} made the upstream fail twice", number)
    return RECONNECT


def first_message_is_invalid_text(data: bytes, skip: int = 0) -> bool:
    """True if ``data`` (data frames as the client sent them, masked), after its first ``skip`` messages,
    goes on with a complete text message whose payload is not valid UTF-8. Run only when a message is
    suspected, never per message."""
    pos, opcode, payload = 0, -1, bytearray()
    while pos + 2 <= len(data):
        read = read_header(data, pos, len(data))
        if read is None:
            return False  # the message is not all here
        header_len, length = read
        b0 = data[pos]
        key = data[pos + header_len - 4 : pos + header_len] if data[pos + 1] & 0x80 else b""
        start = pos + header_len
        if start + length > len(data):
            return False  # the message is not all here
        if skip:
            skip -= 1 if b0 & 0x80 else 0
            pos = start + length
            continue
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
