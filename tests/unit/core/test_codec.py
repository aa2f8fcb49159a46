"""The frame codec: masking (RFC 6455 5.3), headers of every length form, close bodies."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import codec
from gateway.core.codec import MaskKeys, Opcode, build_frame, build_header, mask_payload, read_header


def reference_mask(key: bytes, payload: bytes) -> bytes:
    """RFC 6455 5.3 as written: octet i XOR key octet i mod 4."""
    return bytes(octet ^ key[i % 4] for i, octet in enumerate(payload))


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=4, max_size=4), payload=st.binary(max_size=3000))
def test_mask_payload_is_the_rfc_xor_and_its_own_inverse(key: bytes, payload: bytes) -> None:
    """Any key and payload (empty, under a word, odd lengths): the RFC's octet-wise XOR, undone by itself."""
    masked = mask_payload(key, payload)
    assert masked == reference_mask(key, payload)
    assert mask_payload(key, masked) == payload


def test_mask_payload_keeps_leading_and_trailing_zero_octets() -> None:
    """Payloads that XOR to zero at either end keep their length (the integer form must not drop them)."""
    key = b"\x01\x02\x03\x04"
    assert mask_payload(key, key * 3) == bytes(12)
    assert mask_payload(key, b"\x01") == b"\x00"


def test_headers_of_each_length_form_read_back() -> None:
    """7-bit, 16-bit and 64-bit lengths, masked and not: read_header gives back header and payload length."""
    for length in (0, 125, 126, 65535, 65536):
        for key in (None, b"abcd"):
            header = build_header(True, Opcode.BINARY, length, key)
            assert read_header(header, 0, len(header)) == (len(header), length)
            assert read_header(header, 0, len(header) - 1) is None, "a cut header is not read"


def test_a_masked_frame_carries_its_key_and_the_masked_payload() -> None:
    """build_frame(masked=True) puts a fresh key after the header and the payload masked with it."""
    frame = build_frame(Opcode.TEXT, b"hello", masked=True)
    assert frame[0] == 0x80 | Opcode.TEXT and frame[1] == 0x80 | 5
    assert mask_payload(frame[2:6], frame[6:]) == b"hello"



def test_mask_keys_are_fresh_slices_of_one_urandom_draw_per_1024(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key is the next unused four bytes of the OS random source; one draw serves 1,024 keys, then
    a new draw is made (no key is handed out twice)."""
    draws: list[int] = []

    def fake_urandom(size: int) -> bytes:
        draws.append(size)
        start = 4 * 1024 * (len(draws) - 1)
        return b"".join((start + 4 * i).to_bytes(4, "big") for i in range(size // 4))

    monkeypatch.setattr(codec.os, "urandom", fake_urandom)
    keys = MaskKeys()
    handed = [keys.next() for _ in range(1025)]
    assert draws == [4096, 4096]
    assert handed == [(4 * i).to_bytes(4, "big") for i in range(1025)]


def test_a_forked_child_does_not_reuse_the_parents_mask_keys() -> None:
    """The key pool is forgotten in a forked child: its next key is its own draw, not the parent's next."""
    codec.new_mask_key()  # the pool is drawn
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits at once
        os.write(write, codec.new_mask_key())
        os._exit(0)
    os.close(write)
    try:
        child_key = os.read(read, 4)
    finally:
        os.close(read)
        os.waitpid(child, 0)
    assert len(child_key) == 4 and child_key != codec.new_mask_key()
