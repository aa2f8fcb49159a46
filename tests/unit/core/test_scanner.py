"""The pure frame scanner: forwarding, fragmenting, control frames and violations, without sockets."""

from __future__ import annotations

import os

import pytest

from gateway.core.codec import Opcode, build_close_payload, build_frame
from gateway.core.scanner import FrameScanner, ScanMode
from tests.fakes import parse_frames
from tests.support import client_frame


class RecordingSink:
    """Collects what the scanner hands out; each write is kept apart to check it is whole frames."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.violations: list[tuple[int, str, bool]] = []

    @property
    def out(self) -> bytes:
        return b"".join(self.writes)

    def forward(self, data: bytes) -> None:
        self.writes.append(data)

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        self.writes.append(header + payload)

    def on_ping(self, payload: bytes) -> None:
        self.pings.append(payload)

    def on_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def on_close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        self.violations.append((code, reason, final))


def scanner(sink: RecordingSink, *, client: bool = True, max_message: int = 1 << 20,
            max_frame: int = 1 << 20) -> FrameScanner:
    return FrameScanner(sink, expect_masked=client, max_message_size=max_message, max_frame_size=max_frame)


def messages_of(frames: list[tuple[bool, int, bytes]]) -> list[tuple[int, bytes]]:
    """Reassemble decoded frames into (opcode, payload) messages."""
    messages: list[tuple[int, bytes]] = []
    opcode, parts = 0, []
    for fin, op, payload in frames:
        if op:
            opcode = op
        parts.append(payload)
        if fin:
            messages.append((opcode, b"".join(parts)))
            parts = []
    return messages


STREAM_SIZES = (0, 1, 125, 126, 65535, 65536, 300)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100, 4096, 1 << 20])
def test_every_write_is_whole_frames_and_messages_arrive_intact(step: int) -> None:
    """For any split into reads, each write parses as whole frames and the messages come out as they went in."""
    payloads = [os.urandom(n) for n in STREAM_SIZES]
    stream = b"".join(client_frame(Opcode.TEXT, p) for p in payloads)
    sink = RecordingSink()
    scan = scanner(sink)
    for i in range(0, len(stream), step):
        scan.feed(stream[i:i + step])
        assert not scan.in_message or step < len(stream)
    frames = []
    for write in sink.writes:
        frames += parse_frames(write)  # raises or misparses if a write ended inside a frame
    assert messages_of(frames) == [(Opcode.TEXT, p) for p in payloads]
    assert scan.counts.messages == 7
    assert scan.counts.fragmented_messages == 0, "re-heading at read boundaries is not fragmenting for the limit"
    assert not sink.violations


def test_frames_whole_in_one_read_pass_byte_for_byte() -> None:
    """When reads hold whole frames, the bytes out are the bytes in (masks kept)."""
    frames = [client_frame(Opcode.TEXT, os.urandom(n)) for n in STREAM_SIZES]
    sink = RecordingSink()
    scan = scanner(sink)
    for frame in frames:
        scan.feed(frame)
    assert sink.out == b"".join(frames)


def test_frame_cut_by_a_read_is_re_headed_as_fragments() -> None:
    """A 1,000-byte frame read in two halves leaves as two fragments of the bytes at hand, mask rotated."""
    payload = os.urandom(1000)
    frame = client_frame(Opcode.BINARY, payload)
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(frame[:503])  # 8 header bytes + 495 payload bytes
    assert scan.in_message, "the destination has the start of a message"
    assert [(fin, op, len(p)) for fin, op, p in parse_frames(sink.out)] == [(False, Opcode.BINARY, 495)]
    scan.feed(frame[503:])
    assert not scan.in_message
    frames = parse_frames(sink.out)
    assert [(fin, op) for fin, op, _ in frames] == [(False, Opcode.BINARY), (True, Opcode.CONTINUATION)]
    assert b"".join(p for _, _, p in frames) == payload
    assert scan.counts.messages == 1


def test_small_frame_cut_by_a_read_is_held_until_whole() -> None:
    """A frame of up to 125 bytes is not split: nothing is written until all of it is here."""
    frame = client_frame(Opcode.TEXT, b"x" * 100)
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(frame[:50])
    assert not sink.writes
    scan.feed(frame[50:])
    assert sink.out == frame


def test_whole_read_is_forwarded_without_copy() -> None:
    """A read of complete data frames is handed on as the same object (no slicing)."""
    sink = RecordingSink()
    data = client_frame(Opcode.BINARY, b"abc") + client_frame(Opcode.TEXT, b"def")
    scanner(sink).feed(data)
    assert len(sink.writes) == 1 and sink.writes[0] is data


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
    assert scan.counts.messages == 1


def test_oversized_frame_is_fragmented_with_rotated_mask() -> None:
    """A 10,000-byte masked frame with a 4,096 limit leaves as fragments of at most 4,096 that unmask to it."""
    payload = os.urandom(10_000)
    sink = RecordingSink()
    scan = scanner(sink, max_frame=4096)
    frame = client_frame(Opcode.BINARY, payload)
    scan.feed(frame)
    frames = parse_frames(sink.out)
    assert [(fin, op, len(p)) for fin, op, p in frames] == [
        (False, Opcode.BINARY, 4096), (False, Opcode.CONTINUATION, 4096), (True, Opcode.CONTINUATION, 1808)]
    assert b"".join(p for _, _, p in frames) == payload
    assert scan.counts.fragmented_messages == 1
    sink = RecordingSink()
    scan = scanner(sink, max_frame=4096)
    for i in range(0, len(frame), 777):
        scan.feed(frame[i:i + 777])
    frames = parse_frames(sink.out)
    assert all(len(p) <= 4096 for _, _, p in frames) and [f[0] for f in frames].count(True) == 1
    assert frames[0][1] == Opcode.BINARY and all(op == Opcode.CONTINUATION for _, op, _ in frames[1:])
    assert b"".join(p for _, _, p in frames) == payload


def test_fragmenting_unmasked_frames_from_the_server() -> None:
    """Server frames are split too, unmasked, and the message counts once."""
    payload = os.urandom(5000)
    sink = RecordingSink()
    scan = scanner(sink, client=False, max_frame=1000)
    scan.feed(build_frame(Opcode.TEXT, payload, masked=False))
    frames = parse_frames(bytes(sink.out))
    assert len(frames) == 5 and frames[-1][0] and not any(f[0] for f in frames[:-1])
    assert b"".join(p for _, _, p in frames) == payload
    assert scan.counts.messages == 1 and scan.counts.fragmented_messages == 1


def test_message_over_limit_refused_before_forwarding() -> None:
    """A message whose fragments pass the limit ends with 1009; earlier whole frames were forwarded."""
    sink = RecordingSink()
    scan = scanner(sink, max_message=100)
    ok = client_frame(Opcode.TEXT, b"a" * 100)
    first = client_frame(Opcode.TEXT, b"b" * 60, fin=False)
    second = client_frame(Opcode.CONTINUATION, b"c" * 41)
    scan.feed(ok + first + second)
    assert bytes(sink.out) == ok + first
    assert sink.violations == [(1009, "message of at least 101 bytes is over the limit of 100", False)]
    assert scan.mode is ScanMode.DISCARD


@pytest.mark.parametrize("size", [126, 300, 65535])
def test_frame_with_a_16_bit_length_over_the_message_limit_is_refused(size: int) -> None:
    """The fast path takes 16-bit lengths too, and still refuses a frame one byte over the limit (1009)."""
    sink = RecordingSink()
    scan = scanner(sink, max_message=size - 1)
    scan.feed(client_frame(Opcode.TEXT, b"a" * (size - 1)) + client_frame(Opcode.BINARY, b"b" * size))
    assert parse_frames(sink.out) == [(True, Opcode.TEXT, b"a" * (size - 1))]
    assert sink.violations == [(1009, f"message of at least {size} bytes is over the limit of {size - 1}", False)]


@pytest.mark.parametrize("size", [126, 300, 65535])
def test_frame_with_a_16_bit_length_over_the_frame_limit_is_fragmented(size: int) -> None:
    """A whole 16-bit-length frame larger than the destination's frame limit still leaves in fragments."""
    payload = os.urandom(size)
    sink = RecordingSink()
    scan = scanner(sink, max_frame=size - 1)
    scan.feed(client_frame(Opcode.BINARY, payload))
    frames = parse_frames(sink.out)
    assert [len(p) for _, _, p in frames] == [size - 1, 1] and messages_of(frames) == [(Opcode.BINARY, payload)]
    assert scan.counts.fragmented_messages == 1


def test_whole_frames_with_16_bit_lengths_are_counted_and_sized() -> None:
    """Chat-sized frames (126 to 65,535 bytes) relayed whole are counted, and the last one's size is
    known (the outage rules read it)."""
    sink = RecordingSink()
    scan = scanner(sink)
    frames = [client_frame(Opcode.TEXT, b"x" * 250), client_frame(Opcode.BINARY, b"y" * 65535)]
    scan.feed(frames[0] + frames[1])
    assert sink.writes == [frames[0] + frames[1]]
    assert (scan.counts.messages, scan.counts.payload_bytes) == (2, 250 + 65535)
    assert scan.last_message_size == 65535 and scan.at_boundary


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
        (client_frame(Opcode.TEXT, b"x", fin=False) + client_frame(Opcode.TEXT, b"y" * 300), "previous one"),
        (client_frame(Opcode.CLOSE, b"\x03\xed"), "invalid close code"),
        (client_frame(Opcode.CLOSE, b"\x03"), "1-byte"),
        (bytes((0x82, 0x80 | 126, 0, 5)) + b"kkkk" + b"12345", "non-minimal"),
        (bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"kkkk", "top bit"),
    ],
)
def test_protocol_violations_close_with_1002(frame: bytes, why: str) -> None:
    """Each kind of malformed frame is reported once with 1002 and a reason naming it; data after it is not relayed."""
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(frame)
    assert len(sink.violations) == 1
    code, reason, _ = sink.violations[0]
    assert code == 1002
    assert why in reason
    scan.feed(client_frame(Opcode.TEXT, b"after"))
    assert b"after" not in bytes(sink.out)
    assert len(sink.violations) == 1


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(Opcode.TEXT, b"x" * 300, rsv=4),
        client_frame(0x3, b"payload of a reserved opcode"),
        client_frame(Opcode.TEXT, b"x" * 200, masked=False),
        client_frame(Opcode.PING, b"x" * 126),
        client_frame(Opcode.CONTINUATION, b"x"),
        bytes((0x82, 0x80 | 126, 0, 5)) + b"kkkk" + b"12345",
    ],
)
def test_after_a_violation_the_peers_close_is_still_read(frame: bytes) -> None:
    """RFC 6455 7.1.1: the offending frame is skipped, later data is discarded, and the peer's close is seen."""
    sink = RecordingSink()
    scan = scanner(sink)
    reply = client_frame(Opcode.TEXT, b"late data") + client_frame(Opcode.CLOSE, build_close_payload(1002, ""))
    stream = frame + reply
    for i in range(0, len(stream), 5):
        scan.feed(stream[i:i + 5])
    assert [final for _, _, final in sink.violations] == [False]
    assert sink.closes == [(1002, "")]
    assert b"late" not in bytes(sink.out)
    assert scan.counts.discarded_messages == 1
    assert scan.mode is ScanMode.STOPPED


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (client_frame(Opcode.CLOSE, b"\x03\xed"), "invalid close code"),
        (client_frame(Opcode.CLOSE, b"\x03"), "1-byte"),
        (bytes((0x82, 0x80 | 127)) + (1 << 63).to_bytes(8, "big") + b"kkkk", "top bit"),
        (client_frame(Opcode.CLOSE, b"\x03\xe8" + b"r" * 124), "over 125"),
        (client_frame(Opcode.CLOSE, b"\x03\xe8", fin=False), "fragmented control"),
    ],
)
def test_violations_after_which_nothing_can_be_read_are_final(frame: bytes, why: str) -> None:
    """An invalid close (the peer has closed) or an unframeable length: reported as final, nothing more read."""
    sink = RecordingSink()
    scan = scanner(sink)
    scan.feed(frame + client_frame(Opcode.CLOSE, build_close_payload(1000, "")))
    assert len(sink.violations) == 1 and why in sink.violations[0][1] and sink.violations[0][2] is True
    assert not sink.closes
    assert scan.mode is ScanMode.STOPPED


def test_discard_data_skips_data_and_counts_it_but_still_reads_control_frames() -> None:
    """Once the session is closing, data is dropped (counted per message) while pings and the close are read."""
    sink = RecordingSink()
    scan = scanner(sink)
    big = client_frame(Opcode.BINARY, os.urandom(3000))
    scan.feed(big[:1000])
    before = len(sink.out)
    scan.discard_data()
    scan.feed(big[1000:] + client_frame(Opcode.TEXT, b"one") + client_frame(Opcode.PING, b"p")
              + client_frame(Opcode.TEXT, b"two", fin=False) + client_frame(Opcode.CONTINUATION, b"!")
              + client_frame(Opcode.CLOSE, build_close_payload(1000, "bye")))
    assert len(sink.out) == before, "nothing more was forwarded"
    assert sink.pings == [b"p"] and sink.closes == [(1000, "bye")]
    assert scan.counts.discarded_messages == 3, "the rest of the cut message, 'one' and 'two!'"


def test_malformed_control_frame_while_discarding_ends_the_reading() -> None:
    """While closing, a control frame that cannot be valid means the stream cannot be trusted: final."""
    sink = RecordingSink()
    scan = scanner(sink)
    scan.discard_data()
    scan.feed(client_frame(Opcode.PING, b"x", fin=False))
    assert sink.violations and sink.violations[0][2] is True
    assert scan.mode is ScanMode.STOPPED


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
    assert sink.violations[0][0] == 1007 and sink.violations[0][2] is True


def test_close_reason_cut_on_a_character_boundary() -> None:
    """Reasons longer than 123 bytes are cut without splitting a UTF-8 character."""
    payload = build_close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    payload[2:].decode("utf-8")
