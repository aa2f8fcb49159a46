"""permessage-deflate negotiation (RFC 7692 section 7.1) for the client leg.

The gateway terminates compression (docs/design.md): it answers a client's offer itself, within
``client.compression``, and never forwards ``Sec-WebSocket-Extensions`` to the app. This module
reads the offers and chooses the agreement; :mod:`gateway.core.deflate` compresses and inflates
by it. Pure: no sockets, no event loop.

Exceptions::

    ExtensionHeaderError   the Sec-WebSocket-Extensions header does not parse (RFC 7230 lists)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["EXTENSION", "CompressionSettings", "DeflateAgreement", "ExtensionHeaderError", "negotiate",
           "parse_extensions"]


class CompressionSettings(Protocol):
    """What negotiation reads of ``client.compression`` (``gateway.core.config.CompressionConfig`` is one):
    a protocol, so this module does not depend on the configuration module."""

    @property
    def enabled(self) -> bool: ...
    @property
    def server_max_window_bits(self) -> int: ...
    @property
    def client_max_window_bits(self) -> int: ...
    @property
    def mem_level(self) -> int: ...
    @property
    def min_size(self) -> int: ...
    @property
    def level(self) -> int: ...


EXTENSION: Final = "permessage-deflate"
_WIDEST: Final = 15
"""The window (log2 bytes) an endpoint may use when the agreement names none (RFC 7692 7.1.2)."""
_SMALLEST_COMPRESSOR: Final = 9
"""zlib cannot compress raw deflate with an 8-bit window: with 8 agreed, the gateway sends every
message uncompressed (allowed message by message, RFC 7692 section 6)."""

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED: Final = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SPACE: Final = re.compile(r"[ \t]*")
_BITS: Final = re.compile(r"8|9|1[0-5]")
"""A window size as RFC 7692 writes it: 8 to 15, no leading zero."""


class ExtensionHeaderError(ValueError):
    """A Sec-WebSocket-Extensions header that does not follow RFC 6455 section 9.1's grammar."""


Params = tuple[tuple[str, str | None], ...]


def parse_extensions(header: str) -> list[tuple[str, Params]]:
    """The extension offers in a Sec-WebSocket-Extensions value (several header lines joined by
    commas), in order: ``[(name, ((param, value or None), ...)), ...]``, names lowercased.

    Raises:
        ExtensionHeaderError: naming where the header stops following the grammar.
    """
    offers: list[tuple[str, Params]] = []
    pos, end = 0, len(header)

    def skip_space(at: int) -> int:
        match = _SPACE.match(header, at)
        return match.end() if match else at

    def token(at: int, what: str) -> tuple[str, int]:
        match = _TOKEN.match(header, at)
        if match is None:
            raise ExtensionHeaderError(f"expected {what} at character {at + 1}")
        return match.group(), match.end()

    while True:
        pos = skip_space(pos)
        if pos < end and header[pos] == ",":  # empty list elements are allowed (RFC 7230 7)
            pos += 1
            continue
        if pos >= end:
            break
        name, pos = token(pos, "an extension name")
        params: list[tuple[str, str | None]] = []
        pos = skip_space(pos)
        while pos < end and header[pos] == ";":
            param, pos = token(skip_space(pos + 1), "a parameter name")
            value: str | None = None
            pos = skip_space(pos)
            if pos < end and header[pos] == "=":
                pos = skip_space(pos + 1)
                quoted = _QUOTED.match(header, pos)
                if quoted is not None:
                    value, pos = re.sub(r"\\(.)", r"\1", quoted.group(1)), quoted.end()
                else:
                    value, pos = token(pos, "a parameter value")
                pos = skip_space(pos)
            params.append((param.lower(), value))
        offers.append((name.lower(), tuple(params)))
        if pos < end and header[pos] != ",":
            raise ExtensionHeaderError(f"expected ',' or ';' at character {pos + 1}")
    return offers


@dataclass(frozen=True, slots=True)
class DeflateAgreement:
    """What was agreed with one client, and how the gateway keeps its side (shared by sessions
    that made the same agreement)."""

    response: str
    """The Sec-WebSocket-Extensions value of the 101."""
    server_max_window_bits: int
    """Window of the gateway's compressor (messages to the client)."""
    client_max_window_bits: int
    """Largest window the client compresses with (15 when the response names none)."""
    server_no_context_takeover: bool
    """The gateway starts every compressed message with an empty window."""
    client_no_context_takeover: bool
    """The client does: the gateway need not keep its decompressor between messages."""
    mem_level: int
    min_size: int
    level: int
    """zlib level of the gateway's compressor (``client.compression.level``)."""

    @property
    def compresses(self) -> bool:
        """False when the agreed window is one zlib cannot compress with (8 bits): the gateway then
        sends every message uncompressed and still inflates the client's."""
        return self.server_max_window_bits >= _SMALLEST_COMPRESSOR


def _window(value: str | None) -> int:
    if value is None or not _BITS.fullmatch(value):
        raise ValueError(value)
    return int(value)


def _accept(params: Params, config: CompressionSettings) -> DeflateAgreement | None:
    """The agreement for one permessage-deflate offer, or None to decline it (RFC 7692 7.1: a
    parameter repeated, unknown, or with an invalid value)."""
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        return None
    values = dict(params)
    server_bits = config.server_max_window_bits
    client_bits = _WIDEST
    answer = [EXTENSION]
    for name, value in values.items():
        try:
            if name in ("server_no_context_takeover", "client_no_context_takeover"):
                if value is not None:
                    return None
            elif name == "server_max_window_bits":
                server_bits = min(server_bits, _window(value))
            elif name == "client_max_window_bits":
                client_bits = min(config.client_max_window_bits, _window(value) if value is not None else _WIDEST)
            else:
                return None
        except ValueError:
            return None
    server_reset = "server_no_context_takeover" in values
    client_reset = "client_no_context_takeover" in values
    if server_reset:
        answer.append("server_no_context_takeover")
    if client_reset:
        answer.append("client_no_context_takeover")
    if server_bits < _WIDEST:
        answer.append(f"server_max_window_bits={server_bits}")
    if client_bits < _WIDEST:
        answer.append(f"client_max_window_bits={client_bits}")
    return DeflateAgreement(
        response="; ".join(answer),
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
        server_no_context_takeover=server_reset,
        client_no_context_takeover=client_reset,
        mem_level=config.mem_level,
        min_size=config.min_size,
        level=config.level,
    )


@functools.lru_cache(maxsize=256)
def negotiate(header: str, config: CompressionSettings) -> DeflateAgreement | None:
    """The agreement for the first acceptable permessage-deflate offer in ``header`` (the client's
    Sec-WebSocket-Extensions lines joined by commas), or None: compression off, or no offer the
    gateway can accept (the session then runs uncompressed). Cached: browsers send the same header
    on every connection, and sessions share the agreement.

    Raises:
        ExtensionHeaderError: the header does not parse.
    """
    if not config.enabled:
        return None  # the header is not even read, as before compression existed
    for name, params in parse_extensions(header):
        if name == EXTENSION:
            agreement = _accept(params, config)
            if agreement is not None:
                return agreement
    return None
