"""gateway.gcpolicy: start-up objects frozen, full collections every FULL_COLLECTION_EVERY passes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.gcpolicy import FULL_COLLECTION_EVERY, tune_after_start


@pytest.fixture
def restore_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_collector")
def test_tuning_freezes_start_up_objects_and_spaces_out_full_collections() -> None:
    """Young generations keep their thresholds; full passes come 100 generation-1 passes apart."""
    young, middle, _ = gc.get_threshold()
    tune_after_start()
    assert gc.get_freeze_count() > 1000, "the objects that exist after start-up are frozen"
    assert gc.get_threshold() == (young, middle, FULL_COLLECTION_EVERY)
    assert FULL_COLLECTION_EVERY > 10, "CPython's default is 10"
