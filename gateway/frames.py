"""Socket-free WebSocket frame codec and the frame-level relay scanner.

The gateway never rebuilds messages. :class:`FrameScanner` walks the frame
headers of one direction's byte stream (RFC 6455 section 5.2) and hands the
bytes of data frames to a :class:`ScannerSink` unchanged, in spans as large
as each read allows. Control frames (close, ping, pong) are taken out of the
stream and reported to the sink, which answers them at the gateway.

Two rewrites happen on the way:

* a data frame larger than the destination's frame limit is re-emitted as
  RFC 6455 fragments (section 5.4): only new headers are written, the payload
  bytes pass as they are, and for a masked frame each fragment's key is the
  original key rotated to the fragment's offset, so no byte is unmasked;
* a message whose total size passes the source's message limit is refused
  before any byte of the offending frame is forwarded.

Violations raise nothing: the scanner stops and calls
``sink.on_violation(code, reason)`` once, so one bad peer ends one session.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Final, Protocol

from aiohttp._websocket.helpers import websocket_mask

from gateway.closecodes import CloseCode, is_valid_wire_code

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "FrameScanner",
    "Opcode",
    "ScannerSink",
    "build_close_payload",
    "build_frame",
    "build_header",
    "mask_payload",
    "parse_close_payload",
]

MAX_CONTROL_PAYLOAD: Final = 125
"""Control frames carry at most 125 payload bytes (RFC 6455 section 5.5)."""

_MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2


class Opcode(enum.IntEnum):
    """Frame opcodes defined by RFC 6455 section 5.2."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_CONTROL_OPCODES: Final = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_PACK_16: Final = struct.Struct("!H")
_PACK_64: Final = struct.Struct("!Q")


def mask_payload(mask_key: bytes, payload: bytes) -> bytes:
    """Return ``payload`` masked (or unmasked) with ``mask_key`` (RFC 6455 5.3)."""
    data = bytearray(payload)
    websocket_mask(mask_key, data)
    return bytes(data)


def build_header(fin: bool, opcode: int, length: int, mask_key: bytes | None) -> bytes:
    """Encode a frame header with the shortest length form (RFC 6455 5.2).

    Args:
        fin: whether this frame ends its message.
        opcode: the frame opcode.
        length: payload length in bytes.
        mask_key: four-byte masking key, or None for an unmasked frame.
    """
    first = (0x80 if fin else 0x00) | opcode
    mask_bit = 0x80 if mask_key is not None else 0x00
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 0x10000:
        header = bytes((first, mask_bit | 126)) + _PACK_16.pack(length)
    else:
        header = bytes((first, mask_bit | 127)) + _PACK_64.pack(length)
    if mask_key is not None:
        header += mask_key
    return header


def build_frame(opcode: int, payload: bytes, *, masked: bool, fin: bool = True) -> bytes:
    """Encode a whole frame; masked frames get a fresh random key (RFC 6455 5.3)."""
    if not masked:
        return build_header(fin, opcode, len(payload), None) + payload
    key = os.urandom(4)
    return build_header(fin, opcode, len(payload), key) + mask_payload(key, payload)


def build_close_payload(code: int, reason: str) -> bytes:
    """Encode a close frame body; the reason is cut to fit 125 bytes on a UTF-8 boundary."""
    encoded = reason.encode("utf-8")[:_MAX_CLOSE_REASON]
    return _PACK_16.pack(code) + encoded.decode("utf-8", "ignore").encode("utf-8")


class ProtocolViolation(Exception):
    """A peer broke RFC 6455; carries the close code the gateway answers with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Decode a close frame body (RFC 6455 5.5.1).

    Returns:
        ``(code, reason)``; an empty body yields 1005 (no status received).

    Raises:
        ProtocolViolation: a one-byte body, a code not allowed on the wire
            (1002), or a reason that is not UTF-8 (1007).
    """
    if not payload:
        return int(CloseCode.NO_STATUS), ""
    if len(payload) == 1:
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte body")
    code = _PACK_16.unpack_from(payload)[0]
    if not is_valid_wire_code(code):
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


class ScannerSink(Protocol):
    """Where a :class:`FrameScanner` delivers what it reads."""

    def forward(self, data: bytes, at_boundary: bool) -> None:
        """Write data-frame bytes to the other leg; ``at_boundary`` when they end a frame."""

    def on_ping(self, payload: bytes) -> None:
        """A ping arrived; the gateway answers it on the same leg."""

    def on_pong(self, payload: bytes) -> None:
        """A pong arrived (keepalive)."""

    def on_close(self, code: int, reason: str) -> None:
        """A valid close frame arrived."""

    def on_violation(self, code: int, reason: str) -> None:
        """The peer broke a rule; the scanner has stopped."""


class FrameScanner:
    """Walks one direction's frames and forwards data bytes without copying messages.

    Args:
        sink: receives forwarded bytes and control events.
        expect_masked: True for frames from a client (must be masked), False
            for frames from a server (must not be), per RFC 6455 5.1.
        max_message_size: largest message (sum of fragments) accepted; larger
            ones end the scanner with 1009.
        max_frame_size: largest frame written to the destination; larger data
            frames are re-emitted as fragments of at most this size.
    """

    __slots__ = (
        "_control_buf",
        "_control_opcode",
        "_expect_masked",
        "_fast_limit",
        "_header_tail",
        "_in_message",
        "_mask_bit",
        "_max_frame",
        "_max_message",
        "_message_size",
        "_message_split",
        "_piece_left",
        "_remaining",
        "_sink",
        "_small_header",
        "_split",
        "_split_fin",
        "_split_key",
        "_split_offset",
        "_split_opcode",
        "_violation",
        "fragmented_messages",
        "messages",
        "payload_bytes",
        "stopped",
    )

    def __init__(
        self,
        sink: ScannerSink,
        *,
        expect_masked: bool,
        max_message_size: int,
        max_frame_size: int,
    ) -> None:
        self._sink = sink
        self._expect_masked = expect_masked
        self._max_message = max_message_size
        self._max_frame = max_frame_size
        self._header_tail = b""
        self._remaining = 0
        self._in_message = False
        self._message_size = 0
        self._control_opcode = -1
        self._control_buf = bytearray()
        self._split = False
        self._split_fin = False
        self._split_opcode = 0
        self._split_key: bytes | None = None
        self._split_offset = 0
        self._piece_left = 0
        self._violation: tuple[int, str] | None = None
        self._mask_bit = 0x80 if expect_masked else 0x00
        self._small_header = 6 if expect_masked else 2
        self._fast_limit = min(125, max_message_size, max_frame_size)
        self._message_split = False
        self.stopped = False
        """True after a close frame or a violation: later bytes are ignored."""
        self.messages = 0
        """Complete data messages seen."""
        self.payload_bytes = 0
        """Data-frame payload bytes seen."""
        self.fragmented_messages = 0
        """Messages this scanner re-emitted as fragments."""

    @property
    def mid_frame(self) -> bool:
        """True while the destination is inside a forwarded frame (no control frame may go in)."""
        return self._remaining > 0 and self._control_opcode < 0 and (not self._split or self._piece_left > 0)

    @property
    def in_message(self) -> bool:
        """True between the first and the last frame of a fragmented message."""
        return self._in_message

    def cut_point(self) -> tuple[int, bool]:
        """Where the forwarded stream stands if the destination is lost now.

        Returns:
            ``(bytes still to come of the data frame being forwarded, inside a message)``:
            what a replay buffer must skip to start at a message boundary.
        """
        if self._control_opcode >= 0 or not self._remaining:
            return 0, self._in_message
        return (self._piece_left if self._split else self._remaining), self._in_message

    def feed(self, data: bytes) -> None:
        """Consume bytes read from the source leg."""
        if self.stopped:
            return
        if self._header_tail:
            data = self._header_tail + data
            self._header_tail = b""
        sink = self._sink
        end = len(data)
        pos = 0
        span = 0
        while pos < end:
            remaining = self._remaining
            if remaining:
                take = end - pos
                if take > remaining:
                    take = remaining
                if self._control_opcode >= 0:
                    self._control_buf += data[pos : pos + take]
                    pos += take
                    self._remaining = remaining - take
                    span = pos
                    if not self._remaining:
                        self._finish_control()
                        if self.stopped:
                            break
                elif self._split:
                    pos = self._feed_split(data, pos, take)
                    span = pos
                else:
                    pos += take
                    self._remaining = remaining - take
                continue
            if end - pos < 2:
                self._header_tail = data[pos:]
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            # Fast path: a small, unfragmented text/binary frame with the expected mask bit,
            # the common case of chat-like traffic. Everything it skips is checked below.
            if (
                (b0 == 0x81 or b0 == 0x82)
                and b1 & 0x80 == self._mask_bit
                and (b1 & 0x7F) <= self._fast_limit
                and not self._in_message
            ):
                length = b1 & 0x7F
                self.messages += 1
                self.payload_bytes += length
                frame_end = pos + self._small_header + length
                if frame_end <= end:
                    pos = frame_end
                    continue
                if end - pos < self._small_header:
                    self.messages -= 1
                    self.payload_bytes -= length
                    self._header_tail = data[pos:]
                    break
                self._remaining = frame_end - end
                pos = end
                break
            length = b1 & 0x7F
            header_len = 2
            if length == 126:
                header_len = 4
            elif length == 127:
                header_len = 10
            masked = b1 & 0x80
            if masked:
                header_len += 4
            if end - pos < header_len:
                self._header_tail = data[pos:]
                break
            if length == 126:
                length = _PACK_16.unpack_from(data, pos + 2)[0]
                if length < 126:
                    self._violate(CloseCode.PROTOCOL_ERROR, "non-minimal 16-bit length")
                    break
            elif length == 127:
                length = _PACK_64.unpack_from(data, pos + 2)[0]
                if length >> 63:
                    self._violate(CloseCode.PROTOCOL_ERROR, "64-bit length with the top bit set")
                    break
                if length < 0x10000:
                    self._violate(CloseCode.PROTOCOL_ERROR, "non-minimal 64-bit length")
                    break
            if b0 & 0x70:
                self._violate(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
                break
            if bool(masked) != self._expect_masked:
                self._violate(
                    CloseCode.PROTOCOL_ERROR,
                    "unmasked frame from client" if self._expect_masked else "masked frame from server",
                )
                break
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:
                if opcode not in _CONTROL_OPCODES:
                    self._violate(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
                    break
                if not fin:
                    self._violate(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                    break
                if length > MAX_CONTROL_PAYLOAD:
                    self._violate(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
                    break
                if span < pos:
                    sink.forward(data[span:pos], True)
                self._control_opcode = opcode
                self._control_buf = bytearray(data[pos + header_len - 4 : pos + header_len] if masked else b"")
                pos += header_len
                span = pos
                self._remaining = length
                if not length:
                    self._finish_control()
                    if self.stopped:
                        break
                continue
            if opcode == Opcode.CONTINUATION:
                if not self._in_message:
                    self._violate(CloseCode.PROTOCOL_ERROR, "continuation frame with no message started")
                    break
            elif opcode == Opcode.TEXT or opcode == Opcode.BINARY:
                if self._in_message:
                    self._violate(CloseCode.PROTOCOL_ERROR, "new message before the previous one finished")
                    break
                self._message_size = 0
                self._message_split = False
            else:
                self._violate(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
                break
            size = self._message_size + length
            if size > self._max_message:
                self._violate(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"message of at least {size} bytes is over the limit of {self._max_message}",
                )
                break
            self._message_size = size
            self.payload_bytes += length
            if fin:
                self._in_message = False
                self.messages += 1
            else:
                self._in_message = True
            if length > self._max_frame:
                if span < pos:
                    sink.forward(data[span:pos], True)
                key = data[pos + header_len - 4 : pos + header_len] if masked else None
                self._start_split(bool(fin), opcode, key, length)
                pos += header_len
                span = pos
                continue
            pos += header_len
            self._remaining = length
        stop = pos if self.stopped else end - len(self._header_tail)
        if span < stop:
            sink.forward(data if span == 0 and stop == end else data[span:stop], not self.mid_frame)
        if self.stopped and self._violation is not None:
            code, reason = self._violation
            self._violation = None
            sink.on_violation(code, reason)

    def _start_split(self, fin: bool, opcode: int, key: bytes | None, length: int) -> None:
        if not self._message_split:
            self._message_split = True
            self.fragmented_messages += 1
        self._split = True
        self._split_fin = fin
        self._split_opcode = opcode
        self._split_key = key
        self._split_offset = 0
        self._piece_left = 0
        self._remaining = length

    def _feed_split(self, data: bytes, pos: int, take: int) -> int:
        """Forward ``take`` payload bytes of a frame being re-emitted as fragments."""
        sink = self._sink
        while take:
            if not self._piece_left:
                left_in_frame = self._remaining
                piece = left_in_frame if left_in_frame <= self._max_frame else self._max_frame
                last = piece == left_in_frame
                key = self._split_key
                if key is not None:
                    shift = self._split_offset & 3
                    key = key[shift:] + key[:shift]
                opcode = self._split_opcode if self._split_offset == 0 else Opcode.CONTINUATION
                sink.forward(build_header(last and self._split_fin, opcode, piece, key), False)
                self._piece_left = piece
            n = take if take < self._piece_left else self._piece_left
            self._piece_left -= n
            self._remaining -= n
            self._split_offset += n
            take -= n
            sink.forward(data[pos : pos + n], not self._piece_left)
            pos += n
        if not self._remaining:
            self._split = False
        return pos

    def _finish_control(self) -> None:
        opcode = self._control_opcode
        self._control_opcode = -1
        buf = self._control_buf
        payload = mask_payload(bytes(buf[:4]), bytes(buf[4:])) if self._expect_masked else bytes(buf)
        self._control_buf = bytearray()
        sink = self._sink
        if opcode == Opcode.PING:
            sink.on_ping(payload)
        elif opcode == Opcode.PONG:
            sink.on_pong(payload)
        else:
            try:
                code, reason = parse_close_payload(payload)
            except ProtocolViolation as exc:
                self._violate(exc.code, exc.reason)
                return
            self.stopped = True
            sink.on_close(code, reason)

    def _violate(self, code: int, reason: str) -> None:
        # Reported after the loop has forwarded the valid frames before it.
        self.stopped = True
        self._violation = (int(code), reason)
