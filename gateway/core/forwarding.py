"""Header rules for the upstream handshake: what is forwarded, what is set.

Pure functions. Hop-by-hop and handshake headers are dropped (RFC 7230
section 6.1, RFC 6455 section 4.1). Headers the gateway owns
(:func:`is_gateway_owned`: its ``X-Gateway-*`` namespace, ``X-Forwarded-*``,
``Forwarded``, ``X-Real-IP``, ``X-Request-ID``) are never passed on as the
client sent them: ``X-Gateway-*`` is always removed (the server adds its own),
the forwarding headers are believed only from a trusted proxy (and then merged
into one value each), and the upstream sees exactly one value of each. Names
are compared with ``_`` read as ``-``, because WSGI/CGI-style servers merge
the two. The client address in logs is the right-most address in
X-Forwarded-For that is not a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["GATEWAY_PREFIX", "ForwardedRequest", "forward_headers", "is_gateway_owned", "is_trusted",
           "offered_subprotocols"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one hop and never go upstream."""

HANDSHAKE: Final = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)
"""Handshake headers the gateway writes itself for the upstream leg."""

GATEWAY_PREFIX: Final = "x-gateway-"
"""The gateway's own header namespace (X-Gateway-Session-Id, X-Gateway-Reconnect): never from a client."""

FORWARDING: Final = frozenset({"forwarded", "x-real-ip", "x-request-id"})
"""Forwarding headers besides ``X-Forwarded-*``: believed from trusted proxies only."""

REBUILT: Final = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"})
"""Headers the gateway always sets itself (from a trusted proxy's value, or from the connection)."""


def is_gateway_owned(name: str) -> bool:
    """Whether the gateway owns header ``name``: one list, used for every request (issue 9, point 1)."""
    lowered = name.lower().replace("_", "-")
    return lowered.startswith((GATEWAY_PREFIX, "x-forwarded-")) or lowered in FORWARDING

_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """What the upstream handshake carries beyond the handshake headers."""

    headers: list[tuple[str, str]]
    client_ip: str
    request_id: str


def is_trusted(address: str, networks: Sequence[_Network]) -> bool:
    """Tell whether ``address`` lies in one of the trusted proxy networks."""
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _client_ip(peer: str, forwarded_for: str | None, networks: Sequence[_Network]) -> str:
    if forwarded_for is None or not is_trusted(peer, networks):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def offered_subprotocols(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The client's Sec-WebSocket-Protocol offer, in order (RFC 6455 4.1)."""
    offered: list[str] = []
    for name, value in headers:
        if name.lower() == "sec-websocket-protocol":
            offered.extend(p.strip() for p in value.split(",") if p.strip())
    return offered


def forward_headers(
    headers: Iterable[tuple[str, str]],
    peer: str,
    networks: Sequence[_Network],
) -> ForwardedRequest:
    """Compute the headers sent upstream for a client's upgrade request.

    Args:
        headers: the client's request headers, in order, duplicates kept.
        peer: the TCP peer address of the client connection.
        networks: trusted proxy networks.
    """
    items = list(headers)
    connection_tokens = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    trusted = is_trusted(peer, networks)
    kept: list[tuple[str, str]] = []
    incoming: dict[str, str] = {}
    for name, value in items:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in HANDSHAKE or lowered in connection_tokens:
            continue
        if is_gateway_owned(lowered):
            lowered = lowered.replace("_", "-")
            if trusted and not lowered.startswith(GATEWAY_PREFIX):
                incoming[lowered] = f"{incoming[lowered]}, {value}" if lowered in incoming else value
            continue
        kept.append((name, value))
    host = next((v for n, v in items if n.lower() == "host"), "")
    forwarded_for = incoming.get("x-forwarded-for") if trusted else None
    xff = f"{forwarded_for}, {peer}" if forwarded_for else peer
    proto = incoming.get("x-forwarded-proto", "http") if trusted else "http"
    forwarded_host = incoming.get("x-forwarded-host", host) if trusted else host
    request_id = incoming.get("x-request-id", "") if trusted else ""
    if not _REQUEST_ID.match(request_id):
        request_id = os.urandom(16).hex()
    kept.append(("X-Forwarded-For", xff))
    kept.append(("X-Forwarded-Proto", proto.split(",")[0].strip()))
    if forwarded_host:
        kept.append(("X-Forwarded-Host", forwarded_host.split(",")[0].strip()))
    kept.append(("X-Request-ID", request_id))
    # Other forwarding headers of a trusted proxy (Forwarded, X-Real-IP, X-Forwarded-Port, ...): one value each.
    kept.extend((name, value) for name, value in incoming.items() if name not in REBUILT)
    return ForwardedRequest(kept, _client_ip(peer, forwarded_for, networks), request_id)
