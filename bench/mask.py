"""What a WebSocket XOR mask costs: the core's own (two integers XORed) against aiohttp's C helper.

The core (gateway/core/codec.py) masks with the standard library only; the inflater, which masks
twice per compressed client message, uses aiohttp's helper when it is installed
(gateway/masking.py). This prints both per payload size, best of five runs, in the same process.

Run: ``python -m bench.mask``.
"""

from __future__ import annotations

import os
import timeit

from gateway.core.codec import mask_payload
from gateway.masking import FAST_MASK, fast_mask_available

SIZES = (8, 125, 300, 1024, 4096, 65536, 1 << 20)


def per_call_us(function: object, key: bytes, payload: bytes) -> float:
    number = max(20, 200_000 // max(1, len(payload) // 64))
    timer = timeit.Timer(lambda: function(key, payload))  # type: ignore[operator]
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main() -> int:
    key = os.urandom(4)
    print(f"aiohttp's mask helper found: {fast_mask_available()}")
    print("| payload bytes | core XOR µs | inflater's mask µs | ratio |\n|---:|---:|---:|---:|")
    for size in SIZES:
        payload = os.urandom(size)
        assert mask_payload(key, payload) == FAST_MASK(key, payload)
        own, fast = per_call_us(mask_payload, key, payload), per_call_us(FAST_MASK, key, payload)
        print(f"| {size:,} | {own:.2f} | {fast:.2f} | {own / fast:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
