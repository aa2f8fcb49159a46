"""DirectionCounts: one direction's integers, folded into totals field by field."""

from __future__ import annotations

import pytest

from gateway.core.counts import FIELDS, DirectionCounts


def test_add_to_folds_every_field_and_leaves_the_source_alone() -> None:
    """A finished session's counts are added to the process totals: every slot (a new counter included,
    since the fold walks the slots), and the session's own object is not changed."""
    session, totals = DirectionCounts(), DirectionCounts()
    for value, name in enumerate(FIELDS, start=1):
        setattr(session, name, value)
        setattr(totals, name, 100 * value)
    session.add_to(totals)
    assert {name: getattr(totals, name) for name in FIELDS} == {
        name: 101 * value for value, name in enumerate(FIELDS, start=1)}
    assert [getattr(session, name) for name in FIELDS] == list(
        range(1, len(FIELDS) + 1))
    assert "DirectionCounts(compressed_bytes=1, " in repr(session)


def test_fields_are_every_integer_of_the_counts() -> None:
    """FIELDS names the integers of a fresh DirectionCounts, and no other attribute can exist (the class's
    slots are FIELDS: a counter added without it would fail at once rather than go unfolded)."""
    counts = DirectionCounts()
    assert [getattr(counts, name) for name in FIELDS] == [0] * len(FIELDS)
    with pytest.raises(AttributeError):
        counts.unlisted = 1  # type: ignore[attr-defined]
