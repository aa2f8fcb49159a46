"""The replay buffer (gateway/core/replay.py), without sockets."""

from __future__ import annotations

import pytest

from gateway.core.codec import Opcode
from gateway.core.replay import MessageBuffer, Overflow, OverflowPolicy
from gateway.core.scanner import FrameScanner
from tests.support import client_frame


def feed_in_steps(buffer: MessageBuffer, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        buffer.feed(data[i:i + step])


@pytest.mark.parametrize("step", [1, 3, 7, 64, 10_000])
def test_whole_messages_kept_in_order_whatever_the_reads(step: int) -> None:
    """Single-frame and fragmented messages come out whole, in order, as the same bytes."""
    one = client_frame(Opcode.TEXT, b"first")
    two = client_frame(Opcode.BINARY, b"a" * 300, fin=False) + client_frame(Opcode.CONTINUATION, b"b" * 70_000)
    three = client_frame(Opcode.TEXT, b"")
    buffer = MessageBuffer(10, 1 << 20, OverflowPolicy.CLOSE)
    feed_in_steps(buffer, one + two + three, step)
    assert list(buffer.messages) == [one, two, three]
    assert buffer.drain() == one + two + three
    assert not buffer.messages and buffer.bytes == 0


def test_message_still_arriving_is_replayed_after_whole_ones() -> None:
    """A message whose end has not arrived is not counted as held, and drains after the whole ones."""
    done = client_frame(Opcode.TEXT, b"done")
    half = client_frame(Opcode.TEXT, b"half", fin=False)
    frame = client_frame(Opcode.CONTINUATION, b"rest of it")
    buffer = MessageBuffer(10, 1 << 20, OverflowPolicy.CLOSE)
    buffer.feed(done + half + frame[:5])
    assert buffer.in_message and list(buffer.messages) == [done]
    assert buffer.drain() == done + half + frame[:5], "the rest follows on the live stream"


def test_message_cut_by_the_outage_is_skipped_and_counted() -> None:
    """Started in skip mode (mid-message), the cut message is dropped; the next one is kept."""
    cut_rest = client_frame(Opcode.CONTINUATION, b"more", fin=False) + client_frame(Opcode.CONTINUATION, b"tail")
    after = client_frame(Opcode.TEXT, b"after")
    buffer = MessageBuffer(10, 1 << 20, OverflowPolicy.CLOSE, skip_message=True)
    buffer.feed(cut_rest + after)
    assert list(buffer.messages) == [after]
    assert buffer.dropped == {"cut": 1}


def test_overflow_close_policy_raises() -> None:
    """Under the close policy, the message that does not fit raises Overflow."""
    buffer = MessageBuffer(2, 1 << 20, OverflowPolicy.CLOSE)
    buffer.feed(client_frame(Opcode.TEXT, b"1") + client_frame(Opcode.TEXT, b"2"))
    with pytest.raises(Overflow):
        buffer.feed(client_frame(Opcode.TEXT, b"3"))
    assert buffer.overflows == 1


def test_overflow_drop_oldest_policy() -> None:
    """Under drop_oldest, the oldest messages make room and are counted."""
    buffer = MessageBuffer(2, 1 << 20, OverflowPolicy.DROP_OLDEST)
    frames = [client_frame(Opcode.TEXT, str(i).encode()) for i in range(5)]
    buffer.feed(b"".join(frames))
    assert list(buffer.messages) == frames[3:]
    assert buffer.dropped == {"overflow": 3}


def test_byte_limit() -> None:
    """The byte limit counts frame bytes; a message larger than the whole buffer cannot be kept."""
    buffer = MessageBuffer(100, 50, OverflowPolicy.DROP_OLDEST)
    buffer.feed(client_frame(Opcode.TEXT, b"x" * 100))
    assert not buffer.messages and buffer.dropped == {"too_large": 1}


def test_buffer_accepts_the_scanners_fragmented_output() -> None:
    """Frames re-fragmented by the scanner (rotated masks) are split into the same whole message."""
    collected = bytearray()

    class Sink:
        def forward(self, data: bytes) -> None:
            collected.extend(data)

        def forward_frame(self, header: bytes, payload: bytes) -> None:
            collected.extend(header + payload)

    FrameScanner(Sink(), expect_masked=True, max_message_size=1 << 20, max_frame_size=1000).feed(  # type: ignore[arg-type]
        client_frame(Opcode.BINARY, b"z" * 5000))
    buffer = MessageBuffer(10, 1 << 20, OverflowPolicy.CLOSE)
    buffer.feed(bytes(collected))
    assert list(buffer.messages) == [bytes(collected)]


def test_primed_message_is_replayed_whole() -> None:
    """Primed with what was forwarded before the outage, a message in progress is completed and kept whole."""
    delivered = client_frame(Opcode.TEXT, b"already delivered")
    first = client_frame(Opcode.TEXT, b"first half ", fin=False)
    rest = client_frame(Opcode.CONTINUATION, b"second half")
    buffer = MessageBuffer(10, 1 << 20, OverflowPolicy.CLOSE)
    buffer.prime(delivered + first)
    assert not buffer.messages, "complete messages already reached the old upstream"
    buffer.feed(rest)
    assert list(buffer.messages) == [first + rest]
    assert buffer.dropped == {}
