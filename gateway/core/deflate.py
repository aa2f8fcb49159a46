"""permessage-deflate on the client leg (RFC 7692), terminated at the gateway: the app's messages, deflated.

:class:`Deflater` sits in front of the client's transport on sessions that agreed compression
(:mod:`gateway.core.compression`): the app's messages are deflated, frame by frame, with context
takeover unless the client asked otherwise. Its counterpart for the client's messages is
:class:`gateway.core.inflate.Inflater`. It writes whole frames, so every write still ends on a
frame boundary. Pure: no sockets, no event loop.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Protocol

from gateway.core.codec import build_header, read_header
from gateway.core.compression import DeflateAgreement
from gateway.core.counts import DirectionCounts

__all__ = ["Deflater", "FrameWriter"]

class FrameWriter(Protocol):
    """Where the deflater writes: the client's transport."""

    def write(self, data: bytes) -> None:
        """Write bytes of whole frames."""

    def writelines(self, parts: Iterable[bytes]) -> None:
        """Write several pieces at once."""

    def get_write_buffer_size(self) -> int:
        """Bytes buffered and not yet sent."""


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
        counts: the session's upstream-to-client counts (a fresh one if not given).
    """

    __slots__ = ("_can_compress", "_compressing", "_encoder", "_flush", "_level", "_max_frame", "_mem_level",
                 "_min_size", "_opened", "_wbits", "counts", "transport")

    def __init__(self, transport: FrameWriter, agreement: DeflateAgreement, max_frame_size: int,
                 counts: DirectionCounts | None = None) -> None:
        self.transport = transport
        self._can_compress = agreement.compresses
        self._wbits = -agreement.server_max_window_bits
        self._mem_level = agreement.mem_level
        self._level = agreement.level
        self._min_size = agreement.min_size
        self._flush = zlib.Z_FULL_FLUSH if agreement.server_no_context_takeover else zlib.Z_SYNC_FLUSH
        self._max_frame = max_frame_size
        self._encoder: zlib._Compress | None = None
        """Created at the first message compressed: idle sessions hold no zlib state."""
        self._compressing = False
        self._opened = False
        self.counts = counts if counts is not None else DirectionCounts()
        """The upstream-to-client counts (the session's): written here are ``compressed_messages``
        (messages sent compressed), their ``plain_bytes`` before compression and
        ``compressed_bytes`` on the wire."""

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
            encoder = self._encoder = zlib.compressobj(self._level, zlib.DEFLATED, self._wbits, self._mem_level)
        out = encoder.compress(payload)
        if fin:
            out += encoder.flush(self._flush)
            out = out[:-4]  # the sync flush's 00 00 ff ff (RFC 7692 7.2.1)
            self._compressing = False
            self.counts.compressed_messages += 1
        counts = self.counts
        counts.plain_bytes += len(payload)
        counts.compressed_bytes += len(out)
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
