"""The frame-level relay core: walks one direction's frames and forwards data bytes unchanged.

The gateway never rebuilds messages. :class:`FrameScanner` walks the frame
headers of one direction's byte stream (RFC 6455 section 5.2) and hands the
bytes of data frames to a :class:`ScannerSink` as they are, in spans as large
as each read allows. Control frames (close, ping, pong) are taken out of the
stream and reported to the sink, which answers them at the gateway.

**Every write ends on a frame boundary.** A data frame that is not wholly in
the read at hand, or that is larger than the destination's frame limit, is
re-emitted as RFC 6455 fragments (section 5.4): a new header for the bytes
that are here, the payload bytes as they are, and for a masked frame the
original key rotated to the fragment's offset, so no byte is unmasked. So
between two reads the destination is never inside a frame, and the gateway
can always put a control frame (a pong, its own close) on the wire at once.
A small frame cut by the end of a read is held (at most 131 bytes) instead.

Three modes, changed only in :meth:`FrameScanner._set_mode`:

* ``RELAY``: data is forwarded, rules are checked;
* ``DISCARD``: after a violation, or once the session is closing, data frames
  are skipped (counted in the counts' ``discarded_messages``) while control frames are
  still read, so the peer's close reply is seen (RFC 6455 7.1.1);
* ``STOPPED``: the peer's close arrived, or its bytes can no longer be framed.

Violations raise nothing: the sink's ``on_violation`` is called once in
``RELAY`` (and with ``final=True`` when nothing more can be read), so one bad
peer ends one session.
"""

from __future__ import annotations

import enum
from typing import Final

from gateway.core.closecodes import CloseCode
from gateway.core.codec import (
    CONTROL_OPCODES,
    MAX_CONTROL_PAYLOAD,
    Opcode,
    ProtocolViolation,
    build_header,
    mask_payload,
    parse_close_payload,
    read_header,
)
from gateway.core.counts import DirectionCounts
from gateway.core.sink import DETACHED_SINK, ScannerSink

__all__ = ["FrameScanner", "ScanMode"]

_SMALL_FRAME: Final = 125
"""Frames up to this payload size that a read cuts are held whole rather than re-headed."""
_LARGEST_16_BIT: Final = 0xFFFF
"""The largest payload a 16-bit length declares (RFC 6455 5.2)."""


class ScanMode(enum.IntEnum):
    """What the scanner does with what it reads (0 is the hot path's one test)."""

    RELAY = 0
    DISCARD = 1
    STOPPED = 2


class FrameScanner:
    """Walks one direction's frames and forwards data bytes without copying messages.

    Args:
        sink: receives forwarded bytes and control events.
        expect_masked: True for frames from a client (must be masked), False
            for frames from a server (must not be), per RFC 6455 5.1.
        max_message_size: largest message (sum of fragments) accepted; larger
            ones are refused with 1009 before any byte of them is forwarded.
        max_frame_size: largest frame written to the destination; larger data
            frames are re-emitted as fragments of at most this size.
        compressed: permessage-deflate was negotiated with this peer (RFC 7692): RSV1 is allowed
            on the first frame of a data message (and kept when the frame is re-headed), never on
            a continuation or control frame. The sink inflates; the scanner only walks frames.
        counts: where this direction's message, byte, fragmenting and discard counts go (the
            session's, kept across replaced connections; a fresh one if not given). Its
            ``messages`` also numbers the messages for :attr:`complete_messages`.
    """

    __slots__ = (
        "_control_buf",
        "_control_masked",
        "_control_opcode",
        "_expect_masked",
        "_fast_limit",
        "_fast_limit_16",
        "_in_message",
        "_mask_bit",
        "_max_frame",
        "_max_message",
        "_message_size",
        "_message_split",
        "_mode",
        "_remaining",
        "_rsv1_allowed",
        "_sink",
        "_sized_message",
        "_skip_fin",
        "_small_header",
        "_split",
        "_split_fin",
        "_split_key",
        "_split_offset",
        "_split_opcode",
        "_split_rsv1",
        "_tail",
        "counts",
    )

    def __init__(
        self,
        sink: ScannerSink,
        *,
        expect_masked: bool,
        max_message_size: int,
        max_frame_size: int,
        compressed: bool = False,
        counts: DirectionCounts | None = None,
    ) -> None:
        self._sink = sink
        self._rsv1_allowed = compressed
        self._expect_masked = expect_masked
        self._max_message = max_message_size
        self._max_frame = max_frame_size
        self._mode = ScanMode.RELAY
        self._tail = b""
        """Bytes of a header, or of a small frame, that the last read cut (carried to the next)."""
        self._remaining = 0
        """Payload bytes still to come of the frame being read (control, re-headed or skipped)."""
        self._in_message = False
        self._message_size = 0
        self._sized_message = 0
        """The message whose size ``_message_size`` holds, once complete (the fast path sizes none)."""
        self._message_split = False
        self._control_opcode = -1
        self._control_masked = False
        self._control_buf = bytearray()
        self._split = False
        self._split_fin = False
        self._split_opcode = 0
        self._split_rsv1 = False
        self._split_key: bytes | None = None
        self._split_offset = 0
        self._skip_fin = False
        self._mask_bit = 0x80 if expect_masked else 0x00
        self._small_header = 6 if expect_masked else 2
        self._fast_limit = min(_SMALL_FRAME, max_message_size, max_frame_size)
        self._fast_limit_16 = min(_LARGEST_16_BIT, max_message_size, max_frame_size)
        """The fast path's limits for a frame with a 7-bit and with a 16-bit length."""
        self.counts = counts if counts is not None else DirectionCounts()
        """Written here: ``messages`` (complete data messages forwarded), ``payload_bytes``,
        ``fragmented_messages`` (re-emitted as fragments for the destination's frame limit) and
        ``discarded_messages`` (skipped in ``DISCARD`` mode: sent after the session began to close)."""

    @property
    def mode(self) -> ScanMode:
        """The current mode."""
        return self._mode

    @property
    def in_message(self) -> bool:
        """True while the destination has seen part of a message but not its end.

        For a frame being re-headed, only once a byte of it (or an earlier fragment of its message)
        has gone out: its header alone gives the destination nothing.
        """
        if self._split and self._remaining:
            return self._split_offset > 0 or self._split_opcode == Opcode.CONTINUATION
        return self._in_message

    @property
    def at_boundary(self) -> bool:
        """True when no message is in progress: every counted message has been handed on whole."""
        return not self._in_message and not (self._split and self._remaining)

    @property
    def complete_messages(self) -> int:
        """Messages whose last byte has been handed on (``messages`` counts one at its last frame's
        header, which for a re-headed frame is before its payload)."""
        if self._split and self._remaining and self._split_fin:
            return self.counts.messages - 1
        return self.counts.messages

    @property
    def last_message_size(self) -> int:
        """Payload size of the message in progress (as its frame headers declared so far), or of the
        last message; 0 for a last message small enough for the fast path (125 bytes at most)."""
        if self._in_message or (self._split and self._remaining) or self._sized_message == self.counts.messages:
            return self._message_size
        return 0

    def discard_data(self) -> None:
        """Stop forwarding: the session is closing. Control frames are still read."""
        if self._mode is ScanMode.RELAY:
            self._set_mode(ScanMode.DISCARD)
            if self._split and self._remaining:
                # The rest of a re-headed frame: skip it (the destination got whole fragments).
                self._split = False
                self._skip_fin = self._split_fin

    def stop(self) -> None:
        """Ignore every later byte (the peer's connection is being dropped)."""
        self._set_mode(ScanMode.STOPPED)

    def detach(self) -> None:
        """Stop and forget the sink: the leg is finished, and the sink (which holds this scanner)
        must not be kept alive by it. Without the cycle, reference counting frees both at once."""
        self._set_mode(ScanMode.STOPPED)
        self._sink = DETACHED_SINK

    def _set_mode(self, mode: ScanMode) -> None:
        if mode > self._mode:
            self._mode = mode

    def feed(self, data: bytes) -> None:
        """Consume bytes read from the source leg: the per-message path, its fast path the first branch."""
        if self._mode:
            self._feed_discarding(data)
            return
        if self._tail:
            data = self._tail + data
            self._tail = b""
        end = len(data)
        pos = 0
        span = 0
        """Start of the whole frames not yet handed to the sink."""
        counts = self.counts
        while pos < end:
            if self._remaining:
                pos = span = self._continue_frame(data, pos, end)
            else:
                if end - pos < 2:
                    self._tail = data[pos:]
                    break
                b0 = data[pos]
                b1 = data[pos + 1]
                # Fast path: an unfragmented text/binary frame with the expected mask bit, of a size
                # under both limits, the common case of chat-like traffic. Everything it skips is
                # checked in _frame, which also takes a frame this read does not hold whole.
                if (b0 == 0x81 or b0 == 0x82) and b1 & 0x80 == self._mask_bit and not self._in_message:
                    length = b1 & 0x7F
                    if length <= self._fast_limit:
                        frame_end = pos + self._small_header + length
                        if frame_end > end:
                            self._tail = data[pos:]  # at most 131 bytes: wait for the rest of the frame
                            break
                        counts.messages += 1
                        counts.payload_bytes += length
                        pos = frame_end
                        continue
                    if length == 126 and end - pos >= 4:
                        length = data[pos + 2] << 8 | data[pos + 3]
                        frame_end = pos + self._small_header + 2 + length
                        if _SMALL_FRAME < length <= self._fast_limit_16 and frame_end <= end:
                            counts.messages += 1
                            counts.payload_bytes += length
                            self._message_size = length
                            self._sized_message = counts.messages
                            pos = frame_end
                            continue
                pos, span = self._frame(data, pos, span, end)
                if pos < 0:
                    break  # its header is not all here: kept in _tail
            if self._mode:
                # A close or a violation, or the sink began closing: read on for the peer's close.
                if self._mode is ScanMode.DISCARD and pos < end:
                    self._feed_discarding(data[pos:])
                return
        stop = end - len(self._tail)
        if span < stop:
            self._sink.forward(data if span == 0 and stop == end else data[span:stop])

    def _continue_frame(self, data: bytes, pos: int, end: int) -> int:
        """Bytes of a frame begun in an earlier read: a control frame's payload, or a re-headed frame."""
        if self._control_opcode < 0:
            return self._feed_split(data, pos, end)
        take = end - pos
        if take > self._remaining:
            take = self._remaining
        self._control_buf += data[pos : pos + take]
        self._remaining -= take
        if not self._remaining:
            self._finish_control()
        return pos + take

    def _frame(self, data: bytes, pos: int, span: int, end: int) -> tuple[int, int]:
        """A frame off the fast path at ``pos``: check it, then skip over it, re-head it or take it out.

        Returns:
            ``(pos, span)`` after it; ``pos`` is -1 when its header is not all in this read (kept).
        """
        header = read_header(data, pos, end)
        if header is None:
            self._tail = data[pos:]
            return -1, span
        header_len, length = header
        b0 = data[pos]
        b1 = data[pos + 1]
        opcode = b0 & 0x0F
        problem = self._check_header(b0, b1, length)
        if problem is None and opcode < 0x8:
            size = self._message_size + length if opcode == Opcode.CONTINUATION else length
            if size > self._max_message:
                problem = ProtocolViolation(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"message of at least {size} bytes is over the limit of {self._max_message}",
                )
        if problem is not None:
            self._forward_span(data, span, pos, end)
            # A malformed close is still the peer's close: it will not send another one.
            self._violate(problem, length, peer_closed=opcode == Opcode.CLOSE)
            return pos + header_len, pos + header_len
        frame_end = pos + header_len + length
        whole = opcode < 0x8 and frame_end <= end and length <= self._max_frame
        if not whole and span < pos:
            self._sink.forward(data[span:pos])  # hand on what came before: this frame leaves apart
            if self._mode:
                return pos, pos
        if opcode >= 0x8:
            self._control_opcode = opcode
            self._control_masked = bool(b1 & 0x80)
            self._control_buf = bytearray(data[pos + header_len - 4 : pos + header_len] if b1 & 0x80 else b"")
            self._remaining = length
            if not length:
                self._finish_control()
            return pos + header_len, pos + header_len
        if opcode != Opcode.CONTINUATION:
            self._message_size = 0
            self._message_split = False
        self._message_size += length
        counts = self.counts
        counts.payload_bytes += length
        fin = bool(b0 & 0x80)
        if fin:
            self._in_message = False
            counts.messages += 1
            self._sized_message = counts.messages
        else:
            self._in_message = True
        if whole:
            return frame_end, span
        # Not all here, or over the destination's limit: re-emit it in whole fragments.
        if length > self._max_frame and not self._message_split:
            self._message_split = True
            counts.fragmented_messages += 1
        self._split = True
        self._split_fin = fin
        self._split_opcode = opcode
        self._split_rsv1 = bool(b0 & 0x40)
        self._split_key = data[pos + header_len - 4 : pos + header_len] if b1 & 0x80 else None
        self._split_offset = 0
        self._remaining = length
        return pos + header_len, pos + header_len

    def _forward_span(self, data: bytes, span: int, pos: int, end: int) -> None:
        """Hand on the whole frames before a violation (they were valid)."""
        if span < pos:
            self._sink.forward(data if span == 0 and pos == end else data[span:pos])

    def _check_header(self, b0: int, b1: int, length: int) -> ProtocolViolation | None:
        """The RFC 6455 rule a frame header breaks, if any (sections 5.2, 5.4, 5.5)."""
        if (b1 & 0x7F) == 126 and length < 126:
            return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "non-minimal 16-bit length")
        if (b1 & 0x7F) == 127:
            if length >> 63:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit set")
            if length < 0x10000:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "non-minimal 64-bit length")
        if b0 & 0x70:
            problem = self._check_reserved_bits(b0)
            if problem is not None:
                return problem
        if bool(b1 & 0x80) != self._expect_masked:
            return ProtocolViolation(
                CloseCode.PROTOCOL_ERROR,
                "unmasked frame from client" if self._expect_masked else "masked frame from server",
            )
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if opcode not in CONTROL_OPCODES:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
            return None
        if opcode == Opcode.CONTINUATION:
            if not self._in_message:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "continuation frame with no message started")
        elif opcode == Opcode.TEXT or opcode == Opcode.BINARY:
            if self._in_message:
                return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "new message before the previous one finished")
        else:
            return ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        return None

    def _check_reserved_bits(self, b0: int) -> ProtocolViolation | None:
        """RSV1 marks a compressed message's first frame when permessage-deflate was negotiated
        (RFC 7692 section 6); every other reserved bit, and RSV1 anywhere else, is an error."""
        if b0 & 0x70 != 0x40 or not self._rsv1_allowed:
            return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "RSV1 set on a control frame")
        if opcode == Opcode.CONTINUATION:
            return ProtocolViolation(CloseCode.PROTOCOL_ERROR, "RSV1 set on a continuation frame")
        return None

    def refuse(self, code: int, reason: str) -> None:
        """The sink found the data it was handed unacceptable (a compressed message that does not
        inflate, or inflates past the limit): stop relaying this peer's data and report it once,
        as a violation the peer is told of; control frames are still read for its close."""
        if self._mode is ScanMode.RELAY:
            self.discard_data()
            self._sink.on_violation(code, reason, False)

    def _feed_split(self, data: bytes, pos: int, end: int) -> int:
        """Forward the payload bytes of a re-headed frame that are in this read, as whole fragments."""
        take = end - pos
        if take > self._remaining:
            take = self._remaining
        sink = self._sink
        while take and not self._mode:
            piece = take if take <= self._max_frame else self._max_frame
            self._remaining -= piece
            key = self._split_key
            if key is not None:
                shift = self._split_offset & 3
                if shift:
                    key = key[shift:] + key[:shift]
            first = self._split_offset == 0
            opcode = self._split_opcode if first else Opcode.CONTINUATION
            header = build_header(not self._remaining and self._split_fin, opcode, piece, key,
                                  rsv1=first and self._split_rsv1)
            self._split_offset += piece
            sink.forward_frame(header, data if pos == 0 and piece == end else data[pos : pos + piece])
            pos += piece
            take -= piece
        if not self._remaining:
            self._split = False
        return pos

    def _finish_control(self) -> None:
        opcode = self._control_opcode
        self._control_opcode = -1
        buf = self._control_buf
        payload = mask_payload(bytes(buf[:4]), bytes(buf[4:])) if self._control_masked else bytes(buf)
        self._control_buf = bytearray()
        sink = self._sink
        if opcode == Opcode.PING:
            sink.on_ping(payload)
        elif opcode == Opcode.PONG:
            sink.on_pong(payload)
        else:
            self._set_mode(ScanMode.STOPPED)
            try:
                code, reason = parse_close_payload(payload)
            except ProtocolViolation as exc:
                # The peer has closed, badly: nothing more will come from it.
                sink.on_violation(exc.code, exc.reason, True)
                return
            sink.on_close(code, reason)

    def _violate(self, problem: ProtocolViolation, length: int, *, peer_closed: bool = False) -> None:
        """Report ``problem`` once; the caller reads on in ``DISCARD`` mode past the offending frame.

        Final (``STOPPED``, nothing more read) when the offending frame was the peer's close, or
        when its length cannot be skipped.
        """
        final = peer_closed or bool(length >> 63)
        self._tail = b""
        self._split = False
        self._control_opcode = -1
        self._set_mode(ScanMode.STOPPED if final else ScanMode.DISCARD)
        self._remaining = 0 if final else length
        self._skip_fin = False  # the refused frame is counted as a violation, not as discarded
        self._sink.on_violation(int(problem.code), problem.reason, final)

    # --- DISCARD / STOPPED: skip data, still read control frames ------------------------
    def _feed_discarding(self, data: bytes) -> None:
        """Look for the peer's close: data frames are skipped, malformed input ends the reading."""
        if self._mode is ScanMode.STOPPED:
            return
        if self._tail:
            data = self._tail + data
            self._tail = b""
        end = len(data)
        pos = 0
        while pos < end and self._mode is ScanMode.DISCARD:
            remaining = self._remaining
            if remaining:
                take = min(end - pos, remaining)
                if self._control_opcode >= 0:
                    self._control_buf += data[pos : pos + take]
                self._remaining = remaining - take
                pos += take
                if not self._remaining:
                    if self._control_opcode >= 0:
                        self._finish_control()
                    elif self._skip_fin:
                        self.counts.discarded_messages += 1
                continue
            if end - pos < 2:
                self._tail = data[pos:]
                return
            header = read_header(data, pos, end)
            if header is None:
                self._tail = data[pos:]
                return
            header_len, length = header
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            unreadable = None
            if length >> 63:
                unreadable = "64-bit length with the top bit set"
            elif opcode >= 0x8 and (opcode not in CONTROL_OPCODES or not b0 & 0x80 or length > MAX_CONTROL_PAYLOAD):
                unreadable = "malformed control frame while closing"
            if unreadable is not None:
                self._set_mode(ScanMode.STOPPED)
                self._sink.on_violation(int(CloseCode.PROTOCOL_ERROR), unreadable, True)
                return
            pos += header_len
            self._remaining = length
            if opcode >= 0x8:
                self._control_opcode = opcode
                self._control_masked = bool(b1 & 0x80)
                self._control_buf = bytearray(data[pos - 4 : pos] if b1 & 0x80 else b"")
                if not length:
                    self._finish_control()
            else:
                self._skip_fin = bool(b0 & 0x80)
                if not length and self._skip_fin:
                    self.counts.discarded_messages += 1
