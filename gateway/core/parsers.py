"""Parsers of single configuration values: each returns the parsed value or raises ValueError.

The sentence in each ValueError says what is allowed; :mod:`gateway.core.config`
adds the key and the value and collects every problem into one error. Lists take
one syntax everywhere (a YAML list, ``a,b``, or a single value), sizes and
durations human units (:mod:`gateway.core.units`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gateway.core.units import parse_duration, parse_size

__all__ = [
    "Parser",
    "as_list",
    "boolean",
    "choice",
    "cidrs",
    "close_codes",
    "enum_choice",
    "host_port",
    "int_between",
    "non_negative_int",
    "non_negative_size",
    "optional_duration",
    "origins",
    "parse_host_port",
    "positive_duration",
    "positive_int",
    "positive_size",
    "string_list",
    "template",
    "ws_url",
    "ws_urls",
]

Parser = Callable[[Any], Any]
"""Turns a raw value (from YAML, the environment or a flag) into a setting, or raises ValueError."""


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def positive_size(value: object) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be greater than 0")
    return size


def non_negative_size(value: object) -> int:
    return parse_size(value)


def non_negative_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a whole number greater than 0")
    return value


def int_between(low: int, high: int) -> Parser:
    """A whole number from ``low`` to ``high`` inclusive."""

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def as_list(value: object) -> object:
    """One list syntax for every list key: a YAML list, or (in GATEWAY_* variables) ``a,b`` or one value."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return value


def close_codes(value: object) -> frozenset[int]:
    value = as_list(value)
    if isinstance(value, list):
        value = [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError("expected a list of close codes such as [1001, 1006, 1011, 1012]")
    bad = [v for v in value if not (1000 <= v <= 4999)]
    if bad:
        raise ValueError(f"{bad} are not close codes (1000-4999)")
    return frozenset(value)


def template(fields: tuple[str, ...]) -> Parser:
    def parse(value: object) -> str:
        text = "" if value is None else str(value)
        try:
            text.format(**{name: 0 for name in fields})
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"a template may use only {', '.join('{' + f + '}' for f in fields)}") from None
        return text

    return parse


def optional_duration(value: object) -> float | None:
    return None if value is None else positive_duration(value)


def enum_choice(kind: type[enum.Enum]) -> Parser:
    def parse(value: object) -> enum.Enum:
        text = str(value).lower()
        for member in kind:
            if member.value == text:
                return member
        raise ValueError(f"expected one of {', '.join(str(m.value) for m in kind)}")

    return parse


def choice(options: tuple[str, ...]) -> Parser:
    def parse(value: object) -> str:
        text = str(value).lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return text

    return parse


def parse_host_port(value: object) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    Raises:
        ValueError: no port, or a port outside 1-65535.
    """
    text = str(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    return host.strip("[]") or "0.0.0.0", int(port_text)  # noqa: S104 - a listener binds all interfaces by design


def host_port(value: object) -> str:
    parse_host_port(value)
    return str(value)


def ws_urls(value: object) -> tuple[str, ...]:
    items = as_list(value)
    if not isinstance(items, list):
        items = [items]
    if not items:
        raise ValueError("expected at least one ws:// URL")
    return tuple(ws_url(item) for item in items)


def ws_url(value: object) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme != "ws" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("expected ws://HOST[:PORT][/PREFIX] (wss is not supported on the loopback leg)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("the port must be from 1 to 65535") from None
    return text


def string_list(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    value = as_list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(v.strip() for v in value)


def origins(value: object) -> tuple[str, ...]:
    """Browser origins, ``scheme://host[:port]``, lower-cased."""
    listed = string_list(value)
    for origin in listed:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ValueError(f"origin {origin!r} is not scheme://host[:port]")
    return tuple(o.lower() for o in listed)


def cidrs(value: object) -> tuple[str, ...]:
    """IP addresses or networks (``10.0.0.0/8``)."""
    listed = string_list(value)
    for cidr in listed:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    return listed
