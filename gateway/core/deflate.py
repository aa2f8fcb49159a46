"""permessage-deflate on the client leg (RFC 7692), terminated at the gateway.

Two adapters around the frame relay, installed only on sessions that agreed compression
(:mod:`gateway.core.compression`); uncompressed sessions keep the plain data path:

* :class:`Inflater` sits between the client leg's :class:`~gateway.core.scanner.FrameScanner`
  and the leg: compressed client messages (RSV1 on the first frame) are inflated and re-framed,
  masked, towards the app; uncompressed ones pass through untouched. Everything after it (the
  replay hold, the delivery ledger) sees only plain frames, so replay to a new upstream works as
  for an uncompressed session.
* :class:`Deflater` sits in front of the client's transport: the app's messages are deflated,
  frame by frame, with context takeover unless the client asked otherwise.

Limits (docs/design.md): a client message may not inflate past the destination's
``max_message_size`` (1009, counted as a message too big): zlib is asked for no more than the rest
of that budget, in pieces of at most ``max_frame_size`` (one frame each), so a decompression bomb
costs at most ``max_message_size`` of inflated frames (what one read inflates is written at once).
Data that does not inflate ends the session with 1007. Both write whole frames, so every write still ends
on a frame boundary. Pure: no sockets, no event loop.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from typing import Final, Protocol

from gateway.core.closecodes import CloseCode
from gateway.core.codec import build_header, mask_payload, read_header
from gateway.core.compression import DeflateAgreement
from gateway.core.scanner import FrameScanner, ScannerSink

__all__ = ["Deflater", "FrameWriter", "Inflater", "compression_counts"]

_TAIL: Final = b"\x00\x00\xff\xff"
"""The end of a sync flush: removed from each compressed message, added back before inflating
(RFC 7692 section 7.2.1 and 7.2.2)."""
_LEVEL: Final = 6
"""zlib's default compression level (what uvicorn's websockets uses)."""


class FrameWriter(Protocol):
    """Where the deflater writes: the client's transport."""

    def write(self, data: bytes) -> None:
        """Write bytes of whole frames."""

    def writelines(self, parts: Iterable[bytes]) -> None:
        """Write several pieces at once."""

    def get_write_buffer_size(self) -> int:
        """Bytes buffered and not yet sent."""


class Inflater:
    """The client leg scanner's sink when compression was agreed: inflates compressed messages.

    Args:
        inner: the leg, which gets plain frames.
        agreement: what was negotiated.
        max_message_size: largest inflated message (the app's limit, ``upstream.max_message_size``).
        max_frame_size: largest frame written to the app (``upstream.max_frame_size``).
    """

    __slots__ = ("_decoder", "_inflating", "_max_frame", "_max_message", "_opcode", "_opened", "_reset",
                 "_size", "_wbits", "compressed_bytes", "inflated_bytes", "inner", "messages", "scanner")

    def __init__(self, inner: ScannerSink, agreement: DeflateAgreement, max_message_size: int,
                 max_frame_size: int) -> None:
        self.inner = inner
        self.scanner: FrameScanner | None = None
        """Set by the leg once its scanner exists: told when a message must be refused."""
        self._wbits = -max(agreement.client_max_window_bits, 9)  # zlib inflates an 8-bit window as 9
        self._reset = agreement.client_no_context_takeover
        self._max_message = max_message_size
        self._max_frame = max_frame_size
        self._decoder: zlib._Decompress | None = None
        """Created at the first compressed message: idle sessions hold no zlib state."""
        self._inflating = False
        self._opened = False
        self._opcode = 0
        self._size = 0
        self.messages = 0
        """Compressed messages inflated."""
        self.compressed_bytes = 0
        """Their payload bytes as the client sent them."""
        self.inflated_bytes = 0
        """Their payload bytes after inflating."""

    # --- data: inflate what is compressed, pass on the rest -------------------------------
    def forward(self, data: bytes) -> None:
        """Whole frames from the client (valid, masked): compressed ones are replaced by their inflation."""
        parts: list[bytes] | None = None
        pos = plain = 0
        end = len(data)
        while pos < end:
            b0 = data[pos]
            header = read_header(data, pos, end)
            assert header is not None  # the scanner hands on whole frames only
            header_len, length = header
            frame_end = pos + header_len + length
            if b0 & 0x40 or (self._inflating and not b0 & 0x0F):
                if parts is None:
                    parts = []
                if plain < pos:
                    parts.append(data[plain:pos])
                key = data[pos + header_len - 4 : pos + header_len]
                if not self._inflate(b0, key, data[pos + header_len : frame_end], parts):
                    return
                plain = frame_end
            pos = frame_end
        if parts is None:
            self.inner.forward(data)
            return
        if plain < end:
            parts.append(data[plain:])
        if parts:
            self.inner.forward(b"".join(parts))

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        """One re-headed fragment of a client frame (RSV1 kept on a first fragment)."""
        b0 = header[0]
        if not (b0 & 0x40 or (self._inflating and not b0 & 0x0F)):
            self.inner.forward_frame(header, payload)
            return
        parts: list[bytes] = []
        if self._inflate(b0, header[-4:], payload, parts) and parts:
            self.inner.forward(b"".join(parts))

    def _inflate(self, b0: int, key: bytes, payload: bytes, parts: list[bytes]) -> bool:
        """Inflate one frame of a compressed message into masked plain frames appended to ``parts``;
        False when the message was refused (the scanner then discards the client's data)."""
        fin = bool(b0 & 0x80)
        if b0 & 0x40:
            self._inflating = True
            self._opened = False
            self._opcode = b0 & 0x0F
            self._size = 0
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = zlib.decompressobj(wbits=self._wbits)
        data = mask_payload(key, payload) if payload else b""
        self.compressed_bytes += len(payload)
        if fin:
            data += _TAIL
        try:
            while True:
                budget = self._max_message - self._size + 1
                limit = budget if budget < self._max_frame else self._max_frame
                out = decoder.decompress(data, limit)
                data = decoder.unconsumed_tail
                self._size += len(out)
                if self._size > self._max_message:
                    return self._refuse(CloseCode.MESSAGE_TOO_BIG,
                                        f"compressed message inflates past the limit of {self._max_message} bytes")
                more = bool(data) or len(out) == limit
                last = fin and not more
                if out or last:
                    opcode = 0 if self._opened else self._opcode
                    self._opened = True
                    mask = os.urandom(4)
                    parts.append(build_header(last, opcode, len(out), mask))
                    parts.append(mask_payload(mask, out))
                if not more:
                    break
        except zlib.error as exc:
            return self._refuse(CloseCode.INVALID_DATA, f"compressed message does not inflate ({exc})")
        if decoder.eof:
            # The client ended its deflate stream (BFINAL): the next message starts a new one.
            self._decoder = None
            if decoder.unused_data not in (b"", _TAIL):
                return self._refuse(CloseCode.INVALID_DATA, "compressed data after the final deflate block")
        if fin:
            self._inflating = False
            self.messages += 1
            self.inflated_bytes += self._size
            if self._reset:
                self._decoder = None  # client_no_context_takeover: nothing to keep between messages
        return True

    def _refuse(self, code: int, reason: str) -> bool:
        self._inflating = False
        self._decoder = None
        if self.scanner is not None:
            self.scanner.refuse(code, reason)
        return False

    # --- control frames and violations go to the leg as they are -------------------------
    def on_ping(self, payload: bytes) -> None:
        self.inner.on_ping(payload)

    def on_pong(self, payload: bytes) -> None:
        self.inner.on_pong(payload)

    def on_close(self, code: int, reason: str) -> None:
        self.inner.on_close(code, reason)

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        self.inner.on_violation(code, reason, final)


class Deflater:
    """The app's data on its way to a client that agreed compression: deflated message by message.

    A message is compressed unless it is one frame smaller than ``min_size`` (or the agreed window
    is one zlib cannot compress with); its first frame carries RSV1, continuation frames do not
    (RFC 7692 section 6.1). Each compressed message ends with a sync flush whose last four bytes
    are left off; with ``server_no_context_takeover`` a full flush, so no message refers to an
    earlier one.

    Args:
        transport: the client's transport.
        agreement: what was negotiated.
        max_frame_size: largest frame written to the client (``client.max_frame_size``).
    """

    __slots__ = ("_can_compress", "_compressing", "_encoder", "_flush", "_max_frame", "_mem_level",
                 "_min_size", "_opened", "_wbits", "compressed_bytes", "messages", "plain_bytes", "transport")

    def __init__(self, transport: FrameWriter, agreement: DeflateAgreement, max_frame_size: int) -> None:
        self.transport = transport
        self._can_compress = agreement.compresses
        self._wbits = -agreement.server_max_window_bits
        self._mem_level = agreement.mem_level
        self._min_size = agreement.min_size
        self._flush = zlib.Z_FULL_FLUSH if agreement.server_no_context_takeover else zlib.Z_SYNC_FLUSH
        self._max_frame = max_frame_size
        self._encoder: zlib._Compress | None = None
        """Created at the first message compressed: idle sessions hold no zlib state."""
        self._compressing = False
        self._opened = False
        self.messages = 0
        """Messages sent compressed."""
        self.plain_bytes = 0
        """Their payload bytes before compression."""
        self.compressed_bytes = 0
        """... and on the wire."""

    def write(self, data: bytes) -> None:
        """Whole frames from the app (valid, unmasked; control frames never come this way)."""
        parts: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            header = read_header(data, pos, end)
            assert header is not None  # the scanner hands on whole frames only
            header_len, length = header
            frame_end = pos + header_len + length
            self._frame(data[pos], data[pos:pos + header_len], data[pos + header_len:frame_end], parts)
            pos = frame_end
        if len(parts) == 1:
            self.transport.write(parts[0])
        elif parts:
            self.transport.writelines(parts)

    def writelines(self, parts: Iterable[bytes]) -> None:
        """One re-headed frame from the app: (header, payload)."""
        header, payload = parts
        out: list[bytes] = []
        self._frame(header[0], header, payload, out)
        if out:
            self.transport.writelines(out)

    def get_write_buffer_size(self) -> int:
        """The client transport's buffer (backpressure reads it)."""
        return self.transport.get_write_buffer_size()

    def _frame(self, b0: int, header: bytes, payload: bytes, parts: list[bytes]) -> None:
        opcode = b0 & 0x0F
        fin = bool(b0 & 0x80)
        if opcode:
            self._compressing = self._can_compress and not (fin and len(payload) < self._min_size)
            self._opened = False
        if not self._compressing:
            parts.append(header)
            parts.append(payload)
            return
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = zlib.compressobj(_LEVEL, zlib.DEFLATED, self._wbits, self._mem_level)
        out = encoder.compress(payload)
        if fin:
            out += encoder.flush(self._flush)
            out = out[:-4]  # the sync flush's 00 00 ff ff (RFC 7692 7.2.1)
            self.messages += 1
            self._compressing = False
        self.plain_bytes += len(payload)
        self.compressed_bytes += len(out)
        if not out and not fin and self._opened:
            return  # nothing new to send yet; the message's first frame is out
        pos, end = 0, len(out)
        while True:
            piece = min(end - pos, self._max_frame)
            last = pos + piece >= end
            first = not self._opened
            self._opened = True
            parts.append(build_header(fin and last, opcode if first else 0, piece, None, rsv1=first))
            parts.append(out[pos:pos + piece] if piece != end else out)
            pos += piece
            if last:
                break


_NO_COMPRESSION: Final = (0, 0, 0, 0, 0, 0)


def compression_counts(inflater: Inflater | None, sender: object) -> tuple[int, int, int, int, int, int]:
    """(messages, wire bytes, plain bytes) of compressed messages client->upstream, then
    upstream->client, for a client leg's inflater and sender; zeros for an uncompressed session."""
    if inflater is None or not isinstance(sender, Deflater):
        return _NO_COMPRESSION
    return (inflater.messages, inflater.compressed_bytes, inflater.inflated_bytes,
            sender.messages, sender.compressed_bytes, sender.plain_bytes)
