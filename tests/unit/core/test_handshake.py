"""The upstream handshake codec (gateway/core/handshake.py), example by example; test_properties.py has its
property-based tests."""

from __future__ import annotations

import pytest

from gateway.core.handshake import HandshakeError, UpgradeResponse, accept_key, check_accept, parse_upgrade_response


def test_accept_key_rfc_example() -> None:
    """The RFC 6455 section 1.3 example key gives the documented accept value."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_response_checks() -> None:
    """A 101 must carry the right accept value and may only pick an offered subprotocol."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: b")
    response = parse_upgrade_response(head)
    assert check_accept(response, key, ["a", "b"]) == "b"
    with pytest.raises(HandshakeError, match="did not offer"):
        check_accept(response, key, ["a"])
    with pytest.raises(HandshakeError, match="Accept"):
        check_accept(UpgradeResponse(101, "", [("Upgrade", "websocket"), ("Connection", "upgrade")]), key, [])
    with pytest.raises(HandshakeError):
        parse_upgrade_response(b"garbage")
