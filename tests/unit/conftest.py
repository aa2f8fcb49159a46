"""Unit tests run on virtual time (tests/virtual_time.py); a test marked ``real_loop`` runs on asyncio's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from tests.virtual_time import VirtualTimeLoop


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_loop: a unit test with real loopback sockets, on asyncio's own loop instead of virtual time")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, object]:
    """The loop each async unit test gets: virtual time, unless it is marked ``real_loop`` (real sockets)."""
    if item.get_closest_marker("real_loop"):
        return {"real_loop": asyncio.new_event_loop}
    return {"virtual_time": VirtualTimeLoop}
