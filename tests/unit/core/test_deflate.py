"""The client leg's deflater (gateway/core/deflate.py, RFC 7692 section 7.2.1): what the gateway compresses
inflates with zlib used directly (the reference a client would use)."""

from __future__ import annotations

import zlib

import pytest

from gateway.core.compression import negotiate
from gateway.core.config import CompressionConfig
from gateway.core.deflate import Deflater
from tests.fakes import first_bytes, parse_frames
from tests.unit.core.test_compression import ON


def test_window_8_is_agreed_but_the_gateway_then_sends_uncompressed() -> None:
    """server_max_window_bits=8 is accepted, but zlib cannot honour it, so the gateway sends plain frames."""
    agreement = negotiate("permessage-deflate; server_max_window_bits=8", ON)
    assert agreement is not None and not agreement.compresses
    writer = _Writer()
    Deflater(writer, agreement, 1 << 20).write(b"\x81\x05hello")
    assert writer.data == b"\x81\x05hello"


class _Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, parts: object) -> None:
        self.writes.append(b"".join(parts))  # type: ignore[call-overload]

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.mark.parametrize("takeover", [True, False])
def test_deflater_output_inflates_with_zlib_rsv1_on_first_frames_only(takeover: bool) -> None:
    """Compressed app messages inflate back with zlib, with or without context takeover; RSV1 on first frames only."""
    offer = "permessage-deflate" + ("" if takeover else "; server_no_context_takeover")
    agreement = negotiate(offer, ON)
    assert agreement is not None
    writer = _Writer()
    deflater = Deflater(writer, agreement, 64)
    messages = [b"chat message %d " % i * 20 for i in range(5)]
    for message in messages:
        deflater.write(b"\x82" + bytes([126]) + len(message).to_bytes(2, "big") + message)
    deflater.writelines((b"\x02\x03", b"abc"))  # a fragmented app message (re-headed by the scanner)
    deflater.writelines((b"\x80\x03", b"def"))
    decoder = zlib.decompressobj(-12)
    out, parts = [], []
    for raw_b0, (fin, opcode, payload) in zip(first_bytes(writer.data), parse_frames(writer.data), strict=True):
        assert len(payload) <= 64
        assert bool(raw_b0 & 0x40) == (opcode != 0), "RSV1 exactly on a message's first frame"
        parts.append(payload)
        if fin:
            out.append(decoder.decompress(b"".join(parts) + b"\x00\x00\xff\xff"))
            parts = []
            if not takeover:
                decoder = zlib.decompressobj(-12)  # each message stands alone
    assert out == [*messages, b"abcdef"]
    assert deflater.counts.compressed_messages == 6 and deflater.counts.compressed_bytes < deflater.counts.plain_bytes


def test_min_size_sends_small_single_frame_messages_uncompressed() -> None:
    """A message under compression.min_size goes out as it is, and is not counted as compressed."""
    agreement = negotiate("permessage-deflate", CompressionConfig(True, 12, 12, 5, 10, 6))
    assert agreement is not None
    writer = _Writer()
    deflater = Deflater(writer, agreement, 1 << 20)
    deflater.write(b"\x81\x05small")
    assert writer.data == b"\x81\x05small" and deflater.counts.compressed_messages == 0


@pytest.mark.parametrize("level", [1, 6, 9])
def test_compression_level_is_the_compressors_and_its_output_inflates(level: int) -> None:
    """client.compression.level is the level zlib compresses with: the gateway's bytes are exactly zlib's at
    that level (window 12, memLevel 5, sync flush), and they inflate to the app's message."""
    words = [b"alpha", b"bravo", b"charlie", b"delta", b"echo", b"foxtrot", b"golf", b"hotel", b"india"]
    text = b" ".join(words[(i * i + 3 * i) % len(words)] + str(i % 7).encode() for i in range(60))
    message = b'{"user":"alice","text":"' + text + b'"}'
    agreement = negotiate("permessage-deflate", CompressionConfig(True, 12, 12, 5, 0, level))
    assert agreement is not None
    writer = _Writer()
    Deflater(writer, agreement, 1 << 20).write(bytes((0x81, 126)) + len(message).to_bytes(2, "big") + message)
    [(fin, opcode, payload)] = parse_frames(writer.data)
    assert fin and opcode == 1, "one text frame"
    reference = zlib.compressobj(level, zlib.DEFLATED, -12, 5)
    assert payload == (reference.compress(message) + reference.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert zlib.decompressobj(-12).decompress(payload + b"\x00\x00\xff\xff") == message
    other = zlib.compressobj(6 if level == 1 else 1, zlib.DEFLATED, -12, 5)
    assert payload != (other.compress(message) + other.flush(zlib.Z_SYNC_FLUSH))[:-4], "levels differ here"
