"""Parsing of human units in configuration: durations ("20s") and sizes ("16MiB").

Pure functions that raise :class:`ValueError` with a sentence naming what is
allowed; :mod:`gateway.config` collects those sentences into one error.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}
"""Decimal (K, KB, M, MB, G, GB) and binary (Ki, KiB, Mi, MiB, Gi, GiB) units, any case, as Kubernetes
quantities write them (``16M`` is 16,000,000 bytes, ``16Mi`` and ``16MiB`` are 16,777,216)."""
_NUMBER_UNIT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> float:
    """Parse ``"250ms"``, ``"20s"``, ``"2m"``, ``"1h"`` or a bare number of seconds.

    Raises:
        ValueError: the value is negative, not a number, or has another unit.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 20s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _NUMBER_UNIT.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or (unit not in _DURATION_UNITS and unit != ""):
            raise ValueError("expected a duration such as 500ms, 20s or 2m")
        seconds = float(match.group(1)) * _DURATION_UNITS.get(unit or "s", 1.0)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Parse ``"16MiB"``, ``"16Mi"``, ``"64KiB"``, ``"1MB"``, ``"1M"`` or a bare number of bytes.

    Raises:
        ValueError: the value is negative, fractional in bytes, or has another unit.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB, 16MiB or 1048576")
    if isinstance(value, int):
        size = value
    else:
        match = _NUMBER_UNIT.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError("expected a size such as 64KiB, 16MiB, 16Mi, 16M (decimal) or 1048576")
        exact = float(match.group(1)) * _SIZE_UNITS[unit]
        if exact != int(exact):
            raise ValueError("a size must be a whole number of bytes")
        size = int(exact)
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    """Render seconds back in the unit a person would write."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """Render bytes with the largest binary unit that divides them."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
