"""Socket-free WebSocket frame codec: opcodes, headers, whole frames, close bodies (RFC 6455 5).

Everything here is a pure function of its arguments; the relay's frame walker
is :mod:`gateway.core.scanner`.

Exceptions::

    ProtocolViolation   a peer broke RFC 6455; carries the close code to answer with
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Final

from gateway.core.closecodes import CloseCode, is_valid_wire_code

__all__ = [
    "CONTROL_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "PACK_16",
    "PACK_64",
    "MaskKeys",
    "Opcode",
    "ProtocolViolation",
    "build_close_payload",
    "build_frame",
    "build_header",
    "mask_payload",
    "new_mask_key",
    "parse_close_payload",
    "read_header",
]

MAX_CONTROL_PAYLOAD: Final = 125
"""Control frames carry at most 125 payload bytes (RFC 6455 section 5.5)."""

_MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2

_KEYS_PER_DRAW: Final = 1024
"""Mask keys taken from the operating system's random source at once (one system call per 1,024 frames)."""


class MaskKeys:
    """Fresh masking keys from ``os.urandom``, drawn 4 KiB at a time: each key is used once and is as
    unpredictable as one drawn alone (RFC 6455 10.3), without a system call per masked frame (the
    inflater masks one frame per compressed client message)."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def forget(self) -> None:
        """Drop the keys drawn so far (a forked child must not reuse its parent's)."""
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool = os.urandom(4 * _KEYS_PER_DRAW)  # drawn at first use, never at import
            pos = 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


_MASK_KEYS: Final = MaskKeys()
os.register_at_fork(after_in_child=_MASK_KEYS.forget)  # a child draws its own keys
new_mask_key: Final = _MASK_KEYS.next
"""A fresh four-byte masking key (RFC 6455 5.3)."""


class Opcode(enum.IntEnum):
    """Frame opcodes defined by RFC 6455 section 5.2."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


CONTROL_OPCODES: Final = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
PACK_16: Final = struct.Struct("!H")
PACK_64: Final = struct.Struct("!Q")


def read_header(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """``(header length, payload length)`` of the frame header at ``pos`` (RFC 6455 5.2), or None
    when ``data[pos:end]`` ends inside it. Needs at least two bytes at ``pos``."""
    b1 = data[pos + 1]
    length = b1 & 0x7F
    header_len = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
    if end - pos < header_len:
        return None
    if length == 126:
        length = PACK_16.unpack_from(data, pos + 2)[0]
    elif length == 127:
        length = PACK_64.unpack_from(data, pos + 2)[0]
    return header_len, length


def mask_payload(mask_key: bytes, payload: bytes) -> bytes:
    """Return ``payload`` masked (or unmasked) with ``mask_key`` (RFC 6455 5.3).

    The payload and the repeated key are XORed as two integers: CPython does it in C, word by word,
    so no per-byte Python loop runs. Only control frames and the inflater mask: data frames keep the
    client's masking and go through as they came."""
    size = len(payload)
    if not size:
        return b""
    key = (mask_key * ((size >> 2) + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def build_header(fin: bool, opcode: int, length: int, mask_key: bytes | None, *, rsv1: bool = False) -> bytes:
    """Encode a frame header with the shortest length form (RFC 6455 5.2).

    Args:
        fin: whether this frame ends its message.
        opcode: the frame opcode.
        length: payload length in bytes.
        mask_key: four-byte masking key, or None for an unmasked frame.
        rsv1: set RSV1 (the first frame of a permessage-deflate compressed message, RFC 7692).
    """
    first = (0x80 if fin else 0x00) | (0x40 if rsv1 else 0x00) | opcode
    mask_bit = 0x80 if mask_key is not None else 0x00
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 0x10000:
        header = bytes((first, mask_bit | 126)) + PACK_16.pack(length)
    else:
        header = bytes((first, mask_bit | 127)) + PACK_64.pack(length)
    if mask_key is not None:
        header += mask_key
    return header


def build_frame(opcode: int, payload: bytes, *, masked: bool, fin: bool = True) -> bytes:
    """Encode a whole frame; masked frames get a fresh random key (RFC 6455 5.3)."""
    if not masked:
        return build_header(fin, opcode, len(payload), None) + payload
    key = new_mask_key()
    return build_header(fin, opcode, len(payload), key) + mask_payload(key, payload)


def build_close_payload(code: int, reason: str) -> bytes:
    """Encode a close frame body; the reason is cut to fit 125 bytes on a UTF-8 boundary."""
    encoded = reason.encode("utf-8")[:_MAX_CLOSE_REASON]
    return PACK_16.pack(code) + encoded.decode("utf-8", "ignore").encode("utf-8")


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
    code = PACK_16.unpack_from(payload)[0]
    if not is_valid_wire_code(code):
        raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason
