"""The XOR mask of the compressed data path: aiohttp's C helper when it is there, else the core's.

The core masks with :func:`gateway.core.codec.mask_payload`, an XOR of two integers with no
import beyond the standard library. That is enough for control frames, but the inflater masks
twice per compressed client message (the client's payload in, the inflated frames out), and
there the C helper is 3-5x faster for chat-sized messages and about 20x at 4 KiB
(``python -m bench.mask``). The helper lives in an aiohttp-internal module: it is imported here,
outside the core, and only if it is there, so an aiohttp release without it costs speed, never
correctness, and does not pin aiohttp's version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.core.codec import mask_payload

__all__ = ["FAST_MASK", "fast_mask_available"]

def _find_c_mask() -> Callable[[bytes, bytearray], None] | None:
    try:
        from aiohttp._websocket.helpers import websocket_mask
    except ImportError:  # pragma: no cover - an aiohttp without the helper
        return None
    return websocket_mask


_C_MASK: Final = _find_c_mask()


def _mask_with(c_mask: Callable[[bytes, bytearray], None]) -> Callable[[bytes, bytes], bytes]:
    def mask_in_c(mask_key: bytes, payload: bytes) -> bytes:
        """``payload`` XOR ``mask_key`` by aiohttp's C helper (in place on a copy)."""
        data = bytearray(payload)
        c_mask(mask_key, data)
        return bytes(data)

    return mask_in_c


def fast_mask_available() -> bool:
    """True when aiohttp's mask helper was found."""
    return _C_MASK is not None


FAST_MASK: Final[Callable[[bytes, bytes], bytes]] = _mask_with(_C_MASK) if _C_MASK is not None else mask_payload
"""What the inflater masks with (RFC 6455 5.3; same result either way)."""
