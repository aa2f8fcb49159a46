"""Human units in configuration (gateway/core/units.py): durations and sizes parsed, and rendered back."""

from __future__ import annotations

import pytest

from gateway.core.units import format_duration, format_size, parse_duration, parse_size


def test_units() -> None:
    """Durations and sizes in human units."""
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3
    assert parse_size("16MiB") == 16 * 1024 * 1024
    assert parse_size("1MB") == 1_000_000
    assert parse_size(512) == 512
    for bad in ("ten seconds", "5 parsecs", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("1.5", "lots", "3 bananas"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_sizes_take_kubernetes_style_units() -> None:
    """16M is decimal (16,000,000), 16Mi and 16MiB binary; units in any case."""
    assert parse_size("16M") == 16_000_000 and parse_size("16mb") == 16_000_000
    assert parse_size("16Mi") == parse_size("16MiB") == 16 * 1024 * 1024
    assert parse_size("64Ki") == 65536


def test_durations_and_sizes_are_rendered_in_the_unit_a_person_would_write() -> None:
    """Below a second in ms, else s; sizes in the largest binary unit that divides them; both parse back."""
    assert [format_duration(s) for s in (0.25, 0.001, 20, 0, 90)] == ["250ms", "1ms", "20s", "0s", "90s"]
    assert [format_size(n) for n in (16 << 20, 64 << 10, 3 << 30, 1000, 0)] == ["16MiB", "64KiB", "3GiB", "1000", "0"]
    for seconds in (0.25, 0.001, 20, 0, 90):
        assert parse_duration(format_duration(seconds)) == seconds
    for size in (16 << 20, 64 << 10, 3 << 30, 1000, 1536, 0):
        assert parse_size(format_size(size)) == size
