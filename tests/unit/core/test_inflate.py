"""The client leg's inflater (gateway/core/inflate.py, RFC 7692 section 7.2.2): what clients compress with
zlib reaches the app plain, within the size limits and the app's backpressure."""

from __future__ import annotations

import os
import zlib

import pytest

from gateway.core.closecodes import CloseCode
from gateway.core.codec import Opcode
from gateway.core.compression import negotiate
from gateway.core.inflate import FLUSH_BYTES, Inflater
from gateway.core.scanner import FrameScanner
from tests.fakes import first_bytes, parse_frames
from tests.support import client_frame
from tests.unit.core.test_compression import ON
from tests.unit.core.test_scanner import RecordingSink


def client_compressed(messages: list[bytes], *, fragment: int = 0) -> bytes:
    """What a client with context takeover sends: raw deflate, sync flush, tail removed, RSV1 first."""
    encoder = zlib.compressobj(6, zlib.DEFLATED, -12, 8)
    out = b""
    for message in messages:
        data = (encoder.compress(message) + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]
        if not fragment:
            out += client_frame(Opcode.BINARY, data, rsv=4)
            continue
        pieces = [data[i:i + fragment] for i in range(0, len(data), fragment)] or [b""]
        for index, piece in enumerate(pieces):
            out += client_frame(Opcode.BINARY if index == 0 else Opcode.CONTINUATION, piece,
                                fin=index == len(pieces) - 1, rsv=4 if index == 0 else 0)
    return out


def _inflating(max_message: int = 1 << 20, max_frame: int = 1 << 20) -> tuple[FrameScanner, RecordingSink]:
    scanner, sink, _ = _inflater(max_message, max_frame)
    return scanner, sink


def _inflater(max_message: int = 1 << 20, max_frame: int = 1 << 20,
              sink: RecordingSink | None = None) -> tuple[FrameScanner, RecordingSink, Inflater]:
    agreement = negotiate("permessage-deflate; client_max_window_bits", ON)
    assert agreement is not None
    sink = sink or RecordingSink()
    inflater = Inflater(sink, agreement, max_message, max_frame)
    scanner = FrameScanner(inflater, expect_masked=True, max_message_size=max_message, max_frame_size=1 << 20,
                           compressed=True)
    inflater.scanner = scanner
    return scanner, sink, inflater


class FullApp(RecordingSink):
    """A leg whose app stops taking data once ``capacity`` bytes are buffered (backpressure)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.buffered = 0
        self.peak = 0

    def forward(self, data: bytes) -> None:
        super().forward(data)
        self.buffered += len(data)
        self.peak = max(self.peak, self.buffered)

    def paused(self) -> bool:
        return self.buffered >= self.capacity

    def drain(self) -> None:
        self.buffered = 0


def _messages(data: bytes) -> list[bytes]:
    messages, parts = [], []
    for fin, _opcode, payload in parse_frames(data):
        parts.append(payload)
        if fin:
            messages.append(b"".join(parts))
            parts = []
    return messages


@pytest.mark.parametrize(("step", "fragment"), [(1 << 20, 0), (7, 0), (1 << 20, 5), (3, 11)])
def test_inflater_delivers_plain_masked_frames_for_any_reads(step: int, fragment: int) -> None:
    """Compressed messages, whole or fragmented, in reads of any size: the app gets them plain."""
    messages = [b"hello " * 40, os.urandom(300), b"", b'{"a": 1}' * 50]
    stream = client_compressed(messages, fragment=fragment) + client_frame(Opcode.TEXT, b"plain")
    scanner, sink = _inflating()
    for i in range(0, len(stream), step):
        scanner.feed(stream[i:i + step])
    assert not sink.violations
    assert not any(b0 & 0x70 for b0 in first_bytes(sink.out)), "no reserved bit reaches the app"
    assert _messages(sink.out) == [*messages, b"plain"]


def test_a_bomb_is_refused_with_1009_before_it_is_inflated_past_the_limit() -> None:
    """10 MB of zeros against a 100 kB limit: 1009, with little more than the limit ever inflated."""
    scanner, sink = _inflating(max_message=100_000, max_frame=4096)
    scanner.feed(client_compressed([b"\0" * 10_000_000]))
    assert sink.violations and sink.violations[0][0] == CloseCode.MESSAGE_TOO_BIG
    # Handed on in writes of about FLUSH_BYTES (then backpressure is checked), never past the limit.
    assert len(sink.out) < 110_000 and all(len(w) <= FLUSH_BYTES + 4096 + 30 for w in sink.writes)


def test_positions_describe_the_inflated_stream() -> None:
    """What the loss rules and the ledger read: sizes of the app's (inflated) messages, counts of what went on."""
    scanner, _, inflater = _inflater(max_message=1 << 24)
    scanner.feed(client_compressed([b"a" * 200_000]))
    assert scanner.last_message_size < 2000 and inflater.last_message_size == 200_000
    assert inflater.complete_messages == 1 and inflater.at_boundary
    scanner.feed(client_frame(Opcode.BINARY, b"b" * 300, fin=False))
    assert inflater.last_message_size == 300 and inflater.in_message and inflater.complete_messages == 1


def test_inflating_follows_backpressure_so_a_small_message_cannot_fill_memory() -> None:
    """16 MiB of zeros from 16 kB on the wire: the inflater stops while the app's buffer is full and goes
    on at resume(); what is handed on between two drains stays near the buffer's size; a plain frame and
    the close that follow wait behind it, in order; the positions follow what was handed on."""
    app = FullApp(capacity=1 << 20)
    scanner, _, inflater = _inflater(max_message=1 << 24, sink=app)
    inflater.paused = app.paused
    inflated = b"\0" * ((1 << 24) - 100)
    wire = client_compressed([inflated]) + client_frame(Opcode.TEXT, b"after") + client_frame(
        Opcode.CLOSE, b"\x03\xe8")
    assert len(wire) < 20_000
    scanner.feed(wire)
    assert inflater.waiting and app.closes == [] and not inflater.at_boundary
    assert app.peak < (1 << 20) + (1 << 20) + 100, app.peak  # capacity + one piece (max_frame)
    rounds = 0
    while inflater.waiting:
        app.drain()
        inflater.resume()
        rounds += 1
        assert app.peak < (1 << 21) + 100, app.peak
    assert rounds >= 8
    assert _messages(app.out) == [inflated, b"after"]
    assert app.closes == [(1000, "")]
    assert inflater.complete_messages == 2 and inflater.at_boundary and inflater.last_message_size == 5


@pytest.mark.parametrize("paused", [False, True])
def test_messages_after_a_refused_one_are_counted_as_discarded(paused: bool) -> None:
    """After a too-large message is refused, the messages behind it are dropped and counted, paused or not."""
    app = FullApp(capacity=1 << 16 if paused else 1 << 40)
    scanner, _, inflater = _inflater(max_message=1 << 20, sink=app)
    inflater.paused = app.paused
    scanner.feed(client_compressed([b"\0" * (1 << 22)]) + client_frame(Opcode.TEXT, b"one")
                 + client_frame(Opcode.TEXT, b"two"))
    while inflater.waiting:
        app.drain()
        inflater.resume()
    assert [v[0] for v in app.violations] == [CloseCode.MESSAGE_TOO_BIG]
    assert inflater.counts.discarded_messages == 2 and b"one" not in app.out


def test_a_refusal_found_after_the_clients_close_was_read_still_reaches_the_leg_first() -> None:
    """Inflating paused; the scanner read the close behind the bomb (it has stopped): on resume the 1009
    still goes to the leg, then the close."""
    app = FullApp(capacity=1 << 16)
    scanner, _, inflater = _inflater(max_message=1 << 20, sink=app)
    inflater.paused = app.paused
    scanner.feed(client_compressed([b"\0" * (1 << 22)]) + client_frame(Opcode.CLOSE, b"\x03\xe8"))
    assert inflater.waiting and app.closes == [], "the close waits behind the paused inflation"
    while inflater.waiting:
        app.drain()
        inflater.resume()
    assert [v[0] for v in app.violations] == [CloseCode.MESSAGE_TOO_BIG] and app.closes == [(1000, "")]


def test_data_waiting_when_the_session_closes_is_dropped_and_counted() -> None:
    """Messages still waiting to be inflated when the session closes are dropped and counted as discarded."""
    app = FullApp(capacity=1 << 16)
    scanner, _, inflater = _inflater(max_message=1 << 24, sink=app)
    inflater.paused = app.paused
    scanner.feed(client_compressed([b"\0" * (1 << 22)]) + client_frame(Opcode.TEXT, b"one")
                 + client_frame(Opcode.TEXT, b"two"))
    assert inflater.waiting
    inflater.discard_data()
    assert inflater.counts.discarded_messages == 3 and not inflater.waiting


def test_data_that_does_not_inflate_is_refused_with_1007() -> None:
    """A compressed frame that is not valid deflate data is refused with 1007 (invalid data)."""
    scanner, sink = _inflating()
    scanner.feed(client_frame(Opcode.TEXT, b"\xff\xff\xff\xff", rsv=4))
    assert sink.violations[0][0] == CloseCode.INVALID_DATA


@pytest.mark.parametrize("rsv", [2, 1])
def test_other_reserved_bits_and_rsv1_on_continuations_stay_errors(rsv: int) -> None:
    """RSV2, RSV3 and RSV1 on a continuation frame stay protocol errors with compression on."""
    scanner, sink = _inflating()
    scanner.feed(client_frame(Opcode.TEXT, b"x", rsv=rsv))
    assert sink.violations[0][:2] == (CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
    scanner, sink = _inflating()
    scanner.feed(client_frame(Opcode.TEXT, b"x", fin=False) + client_frame(Opcode.CONTINUATION, b"y", rsv=4))
    assert sink.violations[0][1] == "RSV1 set on a continuation frame"
