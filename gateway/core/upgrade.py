"""Checking a client's WebSocket upgrade request, strictly (RFC 6455 section 4.2.1), with no I/O.

:func:`check_upgrade` takes what the HTTP parser read (method, version,
target, headers in order with duplicates) and returns either the request
target in origin-form, to relay upstream, or a :class:`Refusal` with the HTTP
status and a sentence for the client. The rules, each with its status:

* a plain HTTP request (no ``Upgrade: websocket`` / ``Connection: upgrade``): 426;
* HTTP/1.0, a method other than GET, a body (``Transfer-Encoding`` or a
  non-zero ``Content-Length``), no or several ``Host`` headers: 400;
* no, several, or a malformed ``Sec-WebSocket-Key`` (16 bytes, base64): 400;
* several ``Sec-WebSocket-Version`` values: 400; one that is not 13: 426
  with ``Sec-WebSocket-Version: 13``;
* a target in absolute-form (``http://host/path?q``) is reduced to its path
  and query, so the upstream never sees an authority the client chose;
  authority-form and asterisk-form targets, and ones that are not a path: 400.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

__all__ = ["Refusal", "check_upgrade", "origin_form"]

_ABSOLUTE_SCHEMES: Final = frozenset({"http", "https", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An upgrade the gateway refuses: the HTTP status, why, and headers for the answer."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


def _by_name(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The headers' values by lower-cased name, in order (one pass over them)."""
    values: dict[str, list[str]] = {}
    for key, value in headers:
        values.setdefault(key.lower(), []).append(value)
    return values


def _items(values: list[str]) -> list[str]:
    """The comma-separated items of a header's values (RFC 9110 5.3)."""
    return [part.strip() for value in values for part in value.split(",")]


def origin_form(target: str) -> str | None:
    """The request target as ``/path?query`` (RFC 9112 3.2), or None when it cannot be one."""
    if target.startswith("/"):
        return target if not target.startswith("//") else None
    parts = urlsplit(target)
    if parts.scheme.lower() not in _ABSOLUTE_SCHEMES or not parts.netloc:
        return None
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def check_upgrade(
    method: str,
    version: tuple[int, int],
    target: str,
    headers: Sequence[tuple[str, str]],
) -> str | Refusal:
    """Validate a client's upgrade request.

    Args:
        method: the request method.
        version: the HTTP version as ``(major, minor)``.
        target: the request target as sent.
        headers: the request headers in order, duplicates kept.

    Returns:
        The target in origin-form to relay upstream, or the refusal to answer with.
    """
    named = _by_name(headers)
    upgrade = {item.lower() for item in _items(named.get("upgrade", []))}
    connection = {item.lower() for item in _items(named.get("connection", []))}
    if "websocket" not in upgrade or "upgrade" not in connection:
        return Refusal(
            426,
            "ws-gateway relays WebSocket upgrades only; this was a plain HTTP request",
            {"Upgrade": "websocket", "Connection": "Upgrade"},
        )
    if version < (1, 1):
        return Refusal(400, "a WebSocket upgrade needs HTTP/1.1 or later")
    if method != "GET":
        return Refusal(400, "a WebSocket upgrade must use GET")
    if "transfer-encoding" in named or any(v not in ("", "0") for v in _items(named.get("content-length", []))):
        return Refusal(400, "a WebSocket upgrade request has no body")
    if len(named.get("host", ())) != 1:
        return Refusal(400, "a request needs exactly one Host header")
    versions = [item for item in _items(named.get("sec-websocket-version", [])) if item]
    if len(versions) > 1:
        return Refusal(400, "exactly one Sec-WebSocket-Version is allowed")
    if versions != ["13"]:
        return Refusal(426, "unsupported WebSocket version; use 13", {"Sec-WebSocket-Version": "13"})
    keys = named.get("sec-websocket-key", [])
    if len(keys) != 1:
        return Refusal(400, "exactly one Sec-WebSocket-Key is needed")
    try:
        if len(base64.b64decode(keys[0].strip(), validate=True)) != 16:
            raise ValueError
    except (binascii.Error, ValueError):
        return Refusal(400, "malformed Sec-WebSocket-Key: 16 bytes in base64 expected")
    relayed = origin_form(target)
    if relayed is None:
        return Refusal(400, "the request target must be a path (origin-form) or an http(s)/ws(s) URL")
    return relayed
