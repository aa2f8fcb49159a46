"""The upstream leg's HTTP/1.1 upgrade, as pure functions (RFC 6455 section 4).

The gateway opens the upstream connection with its own asyncio protocol, so
it writes the upgrade request and reads the response itself: that keeps the
upstream transport raw for the frame-level relay.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HandshakeError",
    "UpgradeResponse",
    "accept_key",
    "build_upgrade_request",
    "new_key",
    "parse_upgrade_response",
]

_STATUS_CODE: Final = re.compile(r"[0-9]{3}")
"""An HTTP status code: exactly three ASCII digits (RFC 9112 section 4)."""

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD: Final = 64 * 1024
"""Largest upstream response head accepted before the handshake fails."""


class HandshakeError(Exception):
    """The upstream's answer to the upgrade was not a valid WebSocket accept."""


@dataclass(frozen=True, slots=True)
class UpgradeResponse:
    """The upstream's response head."""

    status: int
    reason: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive), or None."""
        return first_header(self.headers, name)


def first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (case-insensitive) in a head's header list, or None."""
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None


def new_key() -> str:
    """A fresh Sec-WebSocket-Key (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must answer ``key`` with (RFC 6455 4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()  # noqa: S324 - protocol-mandated
    return base64.b64encode(digest).decode("ascii")


def build_upgrade_request(host_header: str, target: str, key: str, headers: list[tuple[str, str]]) -> bytes:
    """Encode the upgrade request (no permessage-deflate is offered).

    Args:
        host_header: value of Host for the upstream.
        target: path and query.
        key: the Sec-WebSocket-Key.
        headers: forwarded headers (already filtered of hop-by-hop ones).
    """
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_upgrade_response(head: bytes) -> UpgradeResponse:
    """Parse a response head (everything before the blank line).

    Raises:
        HandshakeError: the status line or a header line is malformed.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HandshakeError("response head is not text") from None
    status_line, _, rest = text.partition("\r\n")
    parts = status_line.split(" ", 2)
    # Exactly three ASCII digits (RFC 9112 4): str.isdigit() also takes superscripts and any length.
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _STATUS_CODE.fullmatch(parts[1]):
        raise HandshakeError(f"malformed status line {status_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in rest.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return UpgradeResponse(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def check_accept(response: UpgradeResponse, key: str, offered_protocols: list[str]) -> str | None:
    """Validate a 101 response and return the chosen subprotocol.

    Raises:
        HandshakeError: wrong Upgrade/Connection/Accept headers, an extension
            the gateway did not offer, or a subprotocol the client did not offer.
    """
    if (response.header("Upgrade") or "").lower() != "websocket":
        raise HandshakeError("upstream 101 without Upgrade: websocket")
    if "upgrade" not in (response.header("Connection") or "").lower():
        raise HandshakeError("upstream 101 without Connection: Upgrade")
    if response.header("Sec-WebSocket-Accept") != accept_key(key):
        raise HandshakeError("upstream 101 with a wrong Sec-WebSocket-Accept")
    if response.header("Sec-WebSocket-Extensions"):
        raise HandshakeError("upstream negotiated an extension that was not offered")
    protocol = response.header("Sec-WebSocket-Protocol")
    if protocol is not None and protocol not in offered_protocols:
        raise HandshakeError(f"upstream chose subprotocol {protocol!r}, which the client did not offer")
    return protocol
