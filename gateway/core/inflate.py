"""permessage-deflate on the client leg (RFC 7692): the client's compressed messages, inflated.

:class:`Inflater` sits between the client leg's :class:`~gateway.core.scanner.FrameScanner` and
the leg, on sessions that agreed compression (:mod:`gateway.core.compression`): compressed client
messages (RSV1 on the first frame) are inflated and re-framed, masked, towards the app;
uncompressed ones pass through untouched. Everything after it (the replay hold, the delivery
ledger) sees only plain frames, so replay to a new upstream works as for an uncompressed session.

Limits (docs/design.md, "Limits, in which bytes"):

* A message may not inflate past the app's ``max_message_size`` (1009, counted as a message too
  big): zlib is asked for no more than the rest of that budget, in pieces of at most
  ``max_frame_size`` (one frame each).
* A few bytes on the wire can inflate to megabytes, so inflating follows backpressure as reading
  does: output goes to the leg in writes of about :data:`FLUSH_BYTES`, and once the leg has stopped
  reading the client (the app's buffer is over ``upstream.max_buffered``) inflating stops too.
  What is left (the rest of the frame's compressed bytes, and frames, closes and violations the
  scanner handed on after it, in order) waits, compressed, until the leg calls :meth:`resume`. So
  a compressed session holds about what a plain one does: ``max_buffered`` in the app's
  transport, one piece, and one read of compressed input.
* Data that does not inflate ends the session with 1007.

While inflating waits, the scanner's message counts run ahead of what reached the app, so the
leg reads message positions (for retention, the delivery ledger and the loss rules) from here:
:attr:`complete_messages`, :attr:`in_message`, :attr:`at_boundary`, :attr:`last_message_size`
describe the stream as forwarded. Pure: no sockets, no event loop.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from gateway.core.closecodes import CloseCode
from gateway.core.codec import build_header, mask_payload, new_mask_key, read_header
from gateway.core.compression import DeflateAgreement
from gateway.core.counts import DirectionCounts
from gateway.core.scanner import FrameScanner, ScanMode
from gateway.core.sink import DETACHED_SINK, ScannerSink

__all__ = ["FLUSH_BYTES", "TAIL", "Inflater"]

TAIL: Final = b"\x00\x00\xff\xff"
"""The end of a sync flush: removed from each compressed message, added back before inflating
(RFC 7692 section 7.2.1 and 7.2.2)."""
FLUSH_BYTES: Final = 64 * 1024
"""Inflated output is handed to the leg once this much is gathered, then backpressure is checked."""

# What waits behind a paused inflation, in the order the scanner handed it on.
_DATA: Final = 0  # (kind, frames, offset of the first frame not yet handled, None)
_FRAGMENT: Final = 1  # (kind, header, payload, None): a re-headed fragment
_CLOSE: Final = 2  # (kind, code, reason, None)
_VIOLATION: Final = 3  # (kind, code, reason, final)
_Waiting = tuple[int, Any, Any, Any]

# What inflating one frame's bytes came to.
_DONE: Final = 0
_PAUSED: Final = 1
_REFUSED: Final = 2


def _never() -> bool:
    return False


class Inflater:
    """The client leg scanner's sink when compression was agreed: inflates compressed messages.

    Args:
        inner: the leg, which gets plain frames.
        agreement: what was negotiated.
        max_message_size: largest inflated message (the app's limit, ``upstream.max_message_size``).
        max_frame_size: largest frame written to the app (``upstream.max_frame_size``).
        mask: XORs a payload with a masking key (both ways of every compressed frame): the core's
            :func:`~gateway.core.codec.mask_payload` unless the caller has a faster one
            (``gateway.masking``).
        counts: the session's client-to-upstream counts (a fresh one if not given).
    """

    __slots__ = ("_decoder", "_forwarded_size", "_inflating", "_input", "_input_fin", "_mask", "_max_frame",
                 "_max_message", "_opcode", "_opened", "_queue", "_refusing", "_reset", "_size", "_wbits",
                 "complete_messages", "counts", "in_message", "inner", "paused", "scanner")

    def __init__(self, inner: ScannerSink, agreement: DeflateAgreement, max_message_size: int,
                 max_frame_size: int, mask: Callable[[bytes, bytes], bytes] = mask_payload,
                 counts: DirectionCounts | None = None) -> None:
        self.inner: ScannerSink = inner
        self._mask = mask
        self.scanner: FrameScanner | None = None
        """Set by the leg once its scanner exists: told when a message must be refused."""
        self.paused: Callable[[], bool] = _never
        """Set by the leg: true while it does not read the client (backpressure); inflating waits."""
        self._wbits = -max(agreement.client_max_window_bits, 9)  # zlib inflates an 8-bit window as 9
        self._reset = agreement.client_no_context_takeover
        self._max_message = max_message_size
        self._max_frame = max_frame_size
        self._decoder: zlib._Decompress | None = None
        """Created at the first compressed message: idle sessions hold no zlib state."""
        self._inflating = False
        """Inside a compressed message (its continuation frames are inflated too)."""
        self._input: bytes | None = None
        """Compressed bytes of the frame being inflated that zlib has not taken yet (None: no frame)."""
        self._input_fin = False
        self._queue: deque[_Waiting] | None = None
        """What the scanner handed on after a frame whose inflating paused; None until first needed."""
        self._refusing = False
        self._opened = False
        self._opcode = 0
        self._size = 0
        self.counts = counts if counts is not None else DirectionCounts()
        """The client-to-upstream counts (the session's): written here are ``compressed_messages``
        (compressed messages inflated), their ``compressed_bytes`` as the client sent them and
        ``plain_bytes`` after inflating, and ``discarded_messages`` for messages that were waiting
        here when the session began to close (not relayed)."""
        # Positions of the stream as forwarded to the app.
        self.complete_messages = 0
        """Messages whose last frame has been handed to the leg."""
        self.in_message = False
        """The app has part of a message but not its end."""
        self._forwarded_size = 0

    # --- positions of the forwarded stream ------------------------------------------------
    @property
    def at_boundary(self) -> bool:
        """No message is in progress in what was forwarded."""
        return not self.in_message

    @property
    def last_message_size(self) -> int:
        """Plain payload bytes forwarded of the message in progress, or of the last message."""
        return self._forwarded_size

    @property
    def waiting(self) -> bool:
        """Inflating paused with work left (the leg calls :meth:`resume` before reading again)."""
        return self._input is not None or bool(self._queue)

    def _passed(self, b0: int, length: int) -> None:
        """A data frame goes to the leg: move the forwarded stream's positions on."""
        if not self.in_message:
            self._forwarded_size = 0
        self._forwarded_size += length
        if b0 & 0x80:
            self.in_message = False
            self.complete_messages += 1
        else:
            self.in_message = True

    # --- data: inflate what is compressed, pass on the rest -------------------------------
    def forward(self, data: bytes) -> None:
        """Whole frames from the client (valid, masked): compressed ones are replaced by their inflation."""
        if self.waiting or self.paused():
            self._enqueue((_DATA, data, 0, None))
            return
        self._forward_from(data, 0)

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        """One re-headed fragment of a client frame (RSV1 kept on a first fragment)."""
        if self.waiting or self.paused():
            self._enqueue((_FRAGMENT, header, payload, None))
            return
        self._fragment(header, payload)

    def _fragment(self, header: bytes, payload: bytes) -> None:
        b0 = header[0]
        if not (b0 & 0x40 or (self._inflating and not b0 & 0x0F)):
            self._passed(b0, len(payload))
            self.inner.forward_frame(header, payload)
            return
        parts: list[bytes] = []
        self._begin(b0, header[-4:], payload)
        if self._pump(parts) == _DONE and parts:
            self._flush(parts)

    def _forward_from(self, data: bytes, pos: int) -> None:
        """Handle the frames of ``data`` from ``pos`` on; on a pause, queue what is left first."""
        parts: list[bytes] = []
        plain = pos
        end = len(data)
        while pos < end:
            b0 = data[pos]
            header = read_header(data, pos, end)
            assert header is not None  # the scanner hands on whole frames only
            header_len, length = header
            frame_end = pos + header_len + length
            if b0 & 0x40 or (self._inflating and not b0 & 0x0F):
                if plain < pos:
                    parts.append(data[plain:pos])
                plain = frame_end
                self._begin(b0, data[pos + header_len - 4 : pos + header_len], data[pos + header_len : frame_end])
                state = self._pump(parts)
                if state != _DONE:
                    if state == _PAUSED and frame_end < end:
                        self._enqueue((_DATA, data, frame_end, None), first=True)
                    elif state == _REFUSED:
                        self.counts.discarded_messages += _count_final_frames(data, frame_end)  # after the refused one
                    return
            else:
                self._passed(b0, length)
            pos = frame_end
        if plain == 0 and not parts:
            self.inner.forward(data)
            return
        if plain < end:
            parts.append(data[plain:])
        if parts:
            self.inner.forward(b"".join(parts))

    def _begin(self, b0: int, key: bytes, payload: bytes) -> None:
        """Start inflating one frame of a compressed message."""
        if b0 & 0x40:
            self._inflating = True
            self._opened = False
            self._opcode = b0 & 0x0F
            self._size = 0
        if self._decoder is None:
            self._decoder = zlib.decompressobj(wbits=self._wbits)
        data = self._mask(key, payload) if payload else b""
        self.counts.compressed_bytes += len(payload)
        self._input_fin = bool(b0 & 0x80)
        self._input = data + TAIL if self._input_fin else data

    def _flush(self, parts: list[bytes]) -> bool:
        """Hand what is gathered to the leg; True when the leg then stopped reading (backpressure)."""
        if parts:
            self.inner.forward(parts[0] if len(parts) == 1 else b"".join(parts))
            parts.clear()
        return self.paused()

    def _pump(self, parts: list[bytes]) -> int:
        """Inflate the current frame's compressed bytes into masked plain frames, handing them to
        the leg in writes of about FLUSH_BYTES; stop early when the leg stops reading the client."""
        decoder = self._decoder
        data = self._input
        assert decoder is not None and data is not None
        fin = self._input_fin
        gathered = sum(map(len, parts))
        try:
            while True:
                budget = self._max_message - self._size + 1
                limit = budget if budget < self._max_frame else self._max_frame
                out = decoder.decompress(data, limit)
                data = decoder.unconsumed_tail
                self._size += len(out)
                if self._size > self._max_message:
                    return self._refuse(parts, CloseCode.MESSAGE_TOO_BIG,
                                        f"message of at least {self._size} bytes is over the limit of "
                                        f"{self._max_message} (inflated)")
                more = bool(data) or len(out) == limit
                last = fin and not more
                if out or last:
                    opcode = 0 if self._opened else self._opcode
                    self._opened = True
                    mask = new_mask_key()
                    frame_b0 = (0x80 if last else 0) | opcode
                    parts.append(build_header(last, opcode, len(out), mask))
                    parts.append(self._mask(mask, out))
                    self._passed(frame_b0, len(out))
                    gathered += len(out)
                if not more:
                    break
                if gathered >= FLUSH_BYTES:
                    gathered = 0
                    if self._flush(parts):
                        self._input = data
                        return _PAUSED
        except zlib.error as exc:
            return self._refuse(parts, CloseCode.INVALID_DATA, f"compressed message does not inflate ({exc})")
        self._input = None
        if decoder.eof:
            # The client ended its deflate stream (BFINAL): the next message starts a new one.
            self._decoder = None
            if decoder.unused_data not in (b"", TAIL):
                return self._refuse(parts, CloseCode.INVALID_DATA, "compressed data after the final deflate block")
        if fin:
            self._inflating = False
            counts = self.counts
            counts.compressed_messages += 1
            counts.plain_bytes += self._size
            if self._reset:
                self._decoder = None  # client_no_context_takeover: nothing to keep between messages
        if gathered >= FLUSH_BYTES and self._flush(parts):
            return _PAUSED
        return _DONE

    def _refuse(self, parts: list[bytes], code: int, reason: str) -> int:
        """The message is refused: what came before it still goes on; data queued after it does not
        (counted as discarded, with the closes and violations behind it kept in order)."""
        if parts:
            self.inner.forward(b"".join(parts))
            parts.clear()
        self._inflating = False
        self._decoder = None
        self._input = None
        self._drop_queued_data()
        scanner = self.scanner
        self._refusing = True  # its violation goes to the leg now, before anything queued
        try:
            if scanner is not None and scanner.mode is ScanMode.RELAY:
                scanner.refuse(code, reason)
            elif scanner is None or scanner.mode is ScanMode.STOPPED:
                # The client's close was already read (it waits in the queue): the refusal still
                # reaches the leg, before that close.
                self.inner.on_violation(code, reason, False)
        finally:
            self._refusing = False
        return _REFUSED

    def _drop_queued_data(self) -> None:
        """Drop the data frames waiting in the queue, counting the messages they end."""
        if not self._queue:
            return
        for kind, first, second, _ in self._queue:
            if kind == _DATA:
                self.counts.discarded_messages += _count_final_frames(first, second)
            elif kind == _FRAGMENT:
                self.counts.discarded_messages += first[0] >> 7
        self._queue = deque(item for item in self._queue if item[0] >= _CLOSE)

    def _enqueue(self, item: _Waiting, first: bool = False) -> None:
        if self._queue is None:
            self._queue = deque()
        if first:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)

    def resume(self) -> None:
        """The leg reads the client again: go on inflating, then hand on what waited, in order,
        until done or until the leg stops reading again."""
        if self._input is not None:
            parts: list[bytes] = []
            state = self._pump(parts)
            if state == _PAUSED:
                return
            if parts:
                self._flush(parts)
        while self._queue and self._input is None and not self.paused():
            kind, first, second, third = self._queue.popleft()
            if kind == _DATA:
                self._forward_from(first, second)
            elif kind == _FRAGMENT:
                self._fragment(first, second)
            elif kind == _CLOSE:
                self.inner.on_close(first, second)
            else:
                self.inner.on_violation(first, second, third)

    def discard_data(self) -> None:
        """The session is closing: drop the data still waiting (counted), keep closes and violations."""
        if self._input is not None and self._input_fin:
            self.counts.discarded_messages += 1
        self._input = None
        self._inflating = False
        self._drop_queued_data()

    def release(self) -> None:
        """The session is over: drop the links back to the leg (reference cycles)."""
        self.inner = DETACHED_SINK
        self.paused = _never
        self.scanner = None
        self._queue = None

    # --- control frames and violations go to the leg, behind any data that waits ----------
    def on_ping(self, payload: bytes) -> None:
        self.inner.on_ping(payload)

    def on_pong(self, payload: bytes) -> None:
        self.inner.on_pong(payload)

    def on_close(self, code: int, reason: str) -> None:
        if self.waiting:
            self._enqueue((_CLOSE, code, reason, None))
        else:
            self.inner.on_close(code, reason)

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        if not self._refusing and self.waiting:
            self._enqueue((_VIOLATION, code, reason, final))
        else:
            self.inner.on_violation(code, reason, final)


def _count_final_frames(data: bytes, pos: int) -> int:
    """Data frames with FIN in ``data`` from ``pos`` (messages that end there)."""
    count, end = 0, len(data)
    while pos < end:
        header = read_header(data, pos, end)
        assert header is not None
        count += data[pos] >> 7
        pos += header[0] + header[1]
    return count
