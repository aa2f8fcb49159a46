"""Coverage-guided fuzzing of the frame scanner (atheris / libFuzzer): any bytes, any reads, the model's verdict.

Run by ``make fuzz``; by hand: ``.venv/bin/python fuzz/fuzz_scanner.py -max_total_time=60 DIR fuzz/corpus/scanner``.

An input is read as a :class:`tests.framegen.Case`:

* byte 0, flags: bit 0 client direction (masked frames expected), bit 1 "generated" (the rest
  of the input drives the stream generators of tests/framegen.py instead of being the stream),
  bit 2 the session starts closing at a read boundary, bits 4-7 the number of read splits;
* byte 1: the limits (max_message_size, max_frame_size) from two small tables;
* bytes 2-3: the seed of the read splits (so one input always runs the same way);
* the rest: the byte stream (or the generators' decisions).

``check_scanner`` then runs a real FrameScanner and asserts what the property tests assert: the
messages out are the model's, byte for byte; every write is whole frames within the frame limit;
control frames and the violation (with the model's code) are reported in order, once; nothing is
forwarded after a violation or a close; the counters match. Any other exception is a finding too.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import aiohttp  # noqa: F401 - imported before instrumenting, so only our code is instrumented
import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["gateway", "tests"]):
    from tests.framegen import Case, check_scanner, draw_case

MESSAGE_LIMITS = (1 << 24, 1000, 125, 126, 65535, 65536, 1, 300)
FRAME_LIMITS = (1 << 20, 125, 126, 1000, 1, 2, 7, 64)


class ProviderChoices:
    """The generators' decisions taken from the fuzzer's bytes (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)

    def integer(self, low: int, high: int) -> int:
        return int(self.fdp.ConsumeIntInRange(low, high))

    def binary(self, size: int) -> bytes:
        data = bytes(self.fdp.ConsumeBytes(size))
        return data + bytes(size - len(data))


def case_from(data: bytes) -> Case | None:
    """The case an input stands for (None when it is too short to say)."""
    if len(data) < 4:
        return None
    flags, limits, seed, rest = data[0], data[1], int.from_bytes(data[2:4], "big"), data[4:]
    client = bool(flags & 1)
    if flags & 2:
        return draw_case(ProviderChoices(rest), broken=True, client=client, discard=bool(flags & 4),
                         large=bool(limits & 0x40))
    rng = random.Random(seed)  # noqa: S311 - read splits, not secrets
    cuts = tuple(sorted(rng.randint(0, len(rest)) for _ in range(flags >> 4)))
    discard_at = None
    if flags & 4:
        points = [0, *cuts, len(rest)]
        discard_at = points[rng.randrange(len(points))]
    return Case(rest, client, MESSAGE_LIMITS[limits & 7], FRAME_LIMITS[limits >> 3 & 7], cuts, discard_at)


def test_one_input(data: bytes) -> None:
    """One fuzzer input: build its case and let the model judge the real scanner."""
    case = case_from(data)
    if case is not None:
        check_scanner(case)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
