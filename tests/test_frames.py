"""The pure frame scanner: forwarding, fragmenting, control frames and violations, without sockets."""

from __future__ import annotations

import os

import pytest

from gateway.frames import FrameScanner, Opcode, build_close_payload, build_frame, mask_payload
from tests.support import client_frame


class RecordingSink:
    """Collects what the scanner hands out."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.boundaries: list[bool] = []
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.violations: list[tuple[int, str]] = []

    def forward(self, data: bytes, at_boundary: bool) -> None:
        self.out += data
        self.boundaries.append(at_boundary)

    def on_ping(self, payload: bytes) -> None:
        self.pings.append(payload)

    def on_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def on_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def on_violation(self, code: int, reason: str) -> None:
        self.violations.append((code, reason))


def scanner(sink: RecordingSink, *, client: bool = True, max_message: int = 1 << 20,
            max_frame: int = 1 << 20) -> FrameScanner:
    return FrameScanner(sink, expect_masked=client, max_message_size=max_message, max_frame_size=max_frame)


def parse_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """Decode frames (unmasking masked ones) for assertions."""
    frames, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key = None
        if b1 & 0x80:
            key, pos = data[pos:pos + 4], pos + 4
        payload = data[pos:pos + length]
        pos += length
        frames.append((bool(b0 & 0x80), b0 & 0x0F, mask_payload(key, payload) if key else payload))
    return frames


def test_data_frames_forwarded_unchanged_whatever_the_read_boundaries() -> None:
    """Bytes out equal bytes in for any split of the stream into reads; messages are counted."""
    stream = b"".join(client_frame(Opcode.TEXT, os.urandom(n)) for n in (0, 1, 125, 126, 65535, 65536, 300))
    for step in (1, 2, 3, 7, 100, 4096, len(stream)):
        sink = RecordingSink()
        scan = scanner(sink)
        for i in range(0, len(stream), step):
            scan.feed(stream[i:i + step])
        assert bytes(sink.out) == stream
        assert scan.messages == 7
        assert sink.boundaries[-1] is True
        assert not sink.violations


def test_whole_read_is_forwarded_without_copy() -> None:
    """A read of complete data frames is handed on as the same object (no slicing)."""
    sink = RecordingSink()
    data = client_frame(Opcode.BINARY, b"abc") + client_frame(Opcode.TEXT, b"def")
    scanner(sink).feed(data)
    assert len(sink.boundaries) == 1


def test_control_frames_taken_out_of_the_stream() -> None:
    """Pings and pongs between fragments are reported, not forwarded; data around them is."""
    first = client_frame(Opcode.TEXT, b"hello ", fin=False)
    ping = client_frame(Opcode.PING, b"p1")
    pong = client_frame(Opcode.PONG, b"p2")
    last = client_frame(Opcode.CONTINUATION, b"world")
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(first + ping + pong + last)
    assert bytes(sink.out) == first + last
    assert sink.pings == [b"p1"] and sink.pongs == [b"p2"]
    assert scan.messages == 1


def test_oversized_frame_is_fragmented_with_rotated_mask() -> None:
    """A 10,000-byte masked frame with a 4,096 limit leaves as 3 fragments that unmask to the original."""
    payload = os.urandom(10_000)
    sink = RecordingSink()
    scan = scanner(sink, max_frame=4096)
    frame = client_frame(Opcode.BINARY, payload)
    for i in range(0, len(frame), 777):
        scan.feed(frame[i:i + 777])
    frames = parse_frames(bytes(sink.out))
    assert [(fin, op, len(p)) for fin, op, p in frames] == [
        (False, Opcode.BINARY, 4096), (False, Opcode.CONTINUATION, 4096), (True, Opcode.CONTINUATION, 1808)]
    assert b"".join(p for _, _, p in frames) == payload
    assert scan.fragmented_messages == 1


def test_fragmenting_unmasked_frames_from_the_server() -> None:
    """Server frames are split too, unmasked, and the message counts once."""
    payload = os.urandom(5000)
    sink = RecordingSink()
    scan = scanner(sink, client=False, max_frame=1000)
    scan.feed(build_frame(Opcode.TEXT, payload, masked=False))
    frames = parse_frames(bytes(sink.out))
    assert len(frames) == 5 and frames[-1][0] and not any(f[0] for f in frames[:-1])
    assert b"".join(p for _, _, p in frames) == payload
    assert scan.messages == 1 and scan.fragmented_messages == 1


def test_mid_frame_tracks_partial_forwarding() -> None:
    """Control frames may only be injected when the destination is at a frame boundary."""
    sink = RecordingSink()
    scan = scanner(sink)
    frame = client_frame(Opcode.BINARY, b"x" * 1000)
    scan.feed(frame[:500])
    assert scan.mid_frame
    assert sink.boundaries == [False]
    scan.feed(frame[500:])
    assert not scan.mid_frame


def test_message_over_limit_refused_before_forwarding() -> None:
    """A message whose fragments pass the limit ends with 1009; earlier whole frames were forwarded."""
    sink = RecordingSink()
    scan = scanner(sink, max_message=100)
    ok = client_frame(Opcode.TEXT, b"a" * 100)
    first = client_frame(Opcode.TEXT, b"b" * 60, fin=False)
    second = client_frame(Opcode.CONTINUATION, b"c" * 41)
    scan.feed(ok + first + second)
    assert bytes(sink.out) == ok + first
    assert sink.violations and sink.violations[0][0] == 1009
    assert scan.stopped


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (client_frame(Opcode.TEXT, b"x", rsv=4), "reserved bits"),
        (client_frame(0x3, b"x"), "reserved opcode"),
        (client_frame(0xB, b"x"), "reserved opcode"),
        (client_frame(Opcode.TEXT, b"x", masked=False), "unmasked"),
        (client_frame(Opcode.PING, b"x" * 126), "over 125"),
        (client_frame(Opcode.PING, b"x", fin=False), "fragmented control"),
        (client_frame(Opcode.CONTINUATION, b"x"), "no message started"),
        (client_frame(Opcode.TEXT, b"x", fin=False) + client_frame(Opcode.TEXT, b"y"), "previous one"),
        (client_frame(Opcode.CLOSE, b"\x03\xed"), "invalid close code"),
        (client_frame(Opcode.CLOSE, b"\x03"), "1-byte"),
        (bytes((0x82, 0x80 | 126, 0, 5)) + b"kkkk" + b"12345", "non-minimal"),
        (bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"kkkk", "top bit"),
    ],
)
def test_protocol_violations_close_with_1002(frame: bytes, why: str) -> None:
    """Each kind of malformed frame stops the scanner with 1002 and a reason naming it."""
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(frame)
    assert len(sink.violations) == 1
    code, reason = sink.violations[0]
    assert code == 1002
    assert why in reason
    scan.feed(client_frame(Opcode.TEXT, b"after"))
    assert b"after" not in bytes(sink.out)


def test_masked_server_frame_is_a_violation() -> None:
    """Frames from the upstream must not be masked (RFC 6455 5.1)."""
    sink = RecordingSink()
    scanner(sink, client=False).feed(client_frame(Opcode.TEXT, b"x"))
    assert sink.violations[0][0] == 1002


def test_close_frame_parsed_and_stream_stops() -> None:
    """A close frame reports its code and reason; bytes after it are ignored."""
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(client_frame(Opcode.CLOSE, build_close_payload(4001, "bye")) + client_frame(Opcode.TEXT, b"late"))
    assert sink.closes == [(4001, "bye")]
    assert not sink.out


def test_empty_close_is_1005_and_bad_utf8_reason_is_1007() -> None:
    """No code means 1005 (no status); a reason that is not UTF-8 is 1007."""
    sink = RecordingSink()
    scanner(sink).feed(client_frame(Opcode.CLOSE, b""))
    assert sink.closes == [(1005, "")]
    sink = RecordingSink()
    scanner(sink).feed(client_frame(Opcode.CLOSE, b"\x03\xe8\xff\xfe"))
    assert sink.violations[0][0] == 1007


def test_close_reason_cut_on_a_character_boundary() -> None:
    """Reasons longer than 123 bytes are cut without splitting a UTF-8 character."""
    payload = build_close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    payload[2:].decode("utf-8")
