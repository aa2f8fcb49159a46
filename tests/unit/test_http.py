"""The traffic port's quiet error reporting: one sanitised, rate-limited line for malformed requests."""

from __future__ import annotations

import logging

import pytest

from gateway.http import BadRequestLog, sanitise


def test_sanitise_keeps_one_short_printable_line() -> None:
    """Control characters and newlines become '?', and long client values are cut to 80 characters."""
    assert sanitise("GET /\r\nX-Injected: 1\x00") == "GET /??X-Injected: 1?"
    assert len(sanitise("a" * 500)) == 83


def test_bad_requests_are_rate_limited_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Within the interval only the first request is logged; the next line says how many were suppressed."""
    now = [0.0]
    log = BadRequestLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gateway.http"):
        assert log.report(400, "192.0.2.1", "Bad status line 'x'")
        assert not any(log.report(400, "192.0.2.1", "again") for _ in range(99))
        now[0] = 11.0
        assert log.report(431, "192.0.2.2", "header too long")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert "answered 400" in lines[0] and "(99 more since the last such line)" in lines[1]
    assert all(record.exc_info is None for record in caplog.records)
