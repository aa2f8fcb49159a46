"""Strict checks of a client's upgrade request (RFC 6455 4.2.1), each failure with its status."""

from __future__ import annotations

import pytest

from gateway.core.upgrade import Refusal, check_upgrade, origin_form

KEY = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
GOOD = [("Host", "gw"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"), KEY,
        ("Sec-WebSocket-Version", "13")]


def test_a_good_upgrade_passes_with_its_target() -> None:
    """A correct request is accepted and its origin-form target kept, query included."""
    assert check_upgrade("GET", (1, 1), "/ws/echo?a=1", GOOD) == "/ws/echo?a=1"


@pytest.mark.parametrize(
    ("method", "version", "target", "headers", "status", "words"),
    [
        ("GET", (1, 1), "/", [h for h in GOOD if h[0] != "Upgrade"], 426, "plain HTTP"),
        ("GET", (1, 0), "/", GOOD, 400, "HTTP/1.1"),
        ("POST", (1, 1), "/", GOOD, 400, "GET"),
        ("GET", (1, 1), "/", [*GOOD, ("Transfer-Encoding", "chunked")], 400, "no body"),
        ("GET", (1, 1), "/", [*GOOD, ("Content-Length", "5")], 400, "no body"),
        ("GET", (1, 1), "/", [*GOOD, ("Host", "other")], 400, "Host"),
        ("GET", (1, 1), "/", [h for h in GOOD if h[0] != "Host"], 400, "Host"),
        ("GET", (1, 1), "/", [*GOOD, ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")], 400, "Key"),
        ("GET", (1, 1), "/", [h for h in GOOD if h is not KEY], 400, "Key"),
        ("GET", (1, 1), "/", [*[h for h in GOOD if h is not KEY], ("Sec-WebSocket-Key", "c2hvcnQ=")], 400, "Key"),
        ("GET", (1, 1), "/", [*GOOD, ("Sec-WebSocket-Version", "8")], 400, "exactly one"),
        ("GET", (1, 1), "/", [*GOOD[:-1], ("Sec-WebSocket-Version", "13, 8")], 400, "exactly one"),
        ("GET", (1, 1), "*", GOOD, 400, "target"),
        ("GET", (1, 1), "evil.example:443", GOOD, 400, "target"),
        ("GET", (1, 1), "//evil.example/ws", GOOD, 400, "target"),
        ("GET", (1, 1), "ftp://evil.example/ws", GOOD, 400, "target"),
    ],
)
def test_each_broken_rule_has_its_status(method: str, version: tuple[int, int], target: str,
                                         headers: list[tuple[str, str]], status: int, words: str) -> None:
    """Every rule of RFC 6455 4.2.1 the request breaks is refused with its status and a sentence naming it."""
    refusal = check_upgrade(method, version, target, headers)
    assert isinstance(refusal, Refusal)
    assert refusal.status == status and words in refusal.reason


def test_wrong_version_is_426_naming_the_supported_one() -> None:
    """Version 8 alone: 426 with Sec-WebSocket-Version: 13 (RFC 6455 4.4)."""
    refusal = check_upgrade("GET", (1, 1), "/", [*GOOD[:-1], ("Sec-WebSocket-Version", "8")])
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.headers) == (426, {"Sec-WebSocket-Version": "13"})


def test_absolute_form_becomes_origin_form() -> None:
    """An absolute-form target loses its authority: the upstream never sees a client-chosen host."""
    assert check_upgrade("GET", (1, 1), "http://evil.example/ws?x", GOOD) == "/ws?x"
    assert origin_form("wss://evil.example") == "/"
    assert origin_form("/plain") == "/plain"
