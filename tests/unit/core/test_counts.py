"""DirectionCounts: one direction's integers, folded into totals field by field."""

from __future__ import annotations

from gateway.core.counts import DirectionCounts


def test_add_to_folds_every_field_and_leaves_the_source_alone() -> None:
    """A finished session's counts are added to the process totals: every slot (a new counter included,
    since the fold walks the slots), and the session's own object is not changed."""
    session, totals = DirectionCounts(), DirectionCounts()
    for value, name in enumerate(DirectionCounts.__slots__, start=1):
        setattr(session, name, value)
        setattr(totals, name, 100 * value)
    session.add_to(totals)
    assert {name: getattr(totals, name) for name in DirectionCounts.__slots__} == {
        name: 101 * value for value, name in enumerate(DirectionCounts.__slots__, start=1)}
    assert [getattr(session, name) for name in DirectionCounts.__slots__] == list(
        range(1, len(DirectionCounts.__slots__) + 1))
    assert "DirectionCounts(compressed_bytes=1, " in repr(session)
