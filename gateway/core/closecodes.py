"""Close codes and causes as named data (RFC 6455 section 7.4).

Every close the gateway sends, relays or observes goes through this module:
:class:`CloseCode` names the registered codes, :func:`is_valid_wire_code` says
which may appear in a close frame (1005 travels as an empty close body,
``gateway.core.closing``), :func:`cause_for_code` turns
a peer's code into one of the fixed :class:`Cause` labels, and
:func:`code_label` buckets codes into the bounded label set used by the
``ws_gateway_closes_total`` metric.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CODE_LABELS",
    "NOT_ON_WIRE",
    "Cause",
    "CloseCode",
    "Initiator",
    "cause_for_code",
    "code_label",
    "explain_code",
    "is_valid_wire_code",
]


class CloseCode(enum.IntEnum):
    """Registered WebSocket close codes with what each one means."""

    NORMAL = 1000
    """The purpose of the connection was fulfilled."""
    GOING_AWAY = 1001
    """An endpoint is going away (server shutdown, page navigated away)."""
    PROTOCOL_ERROR = 1002
    """A peer broke the protocol (bad frame, bad length, unmasked client frame)."""
    UNSUPPORTED_DATA = 1003
    """A peer received a data type it cannot accept."""
    NO_STATUS = 1005
    """Reserved: a close frame carried no code. Never sent on the wire."""
    ABNORMAL = 1006
    """Reserved: the connection dropped with no close frame. Never sent."""
    INVALID_DATA = 1007
    """A message's data was inconsistent with its type (bad UTF-8 in text)."""
    POLICY_VIOLATION = 1008
    """A message violated a policy (generic refusal)."""
    MESSAGE_TOO_BIG = 1009
    """A message was larger than the receiver accepts."""
    MANDATORY_EXTENSION = 1010
    """The client expected an extension the server did not negotiate."""
    INTERNAL_ERROR = 1011
    """The server met an unexpected condition (also: keepalive ping timeout)."""
    SERVICE_RESTART = 1012
    """The server is restarting; the client may reconnect."""
    TRY_AGAIN_LATER = 1013
    """The server is overloaded or the backend unavailable; retry later."""
    BAD_GATEWAY = 1014
    """A gateway got an invalid response from its upstream."""
    TLS_HANDSHAKE = 1015
    """Reserved: TLS handshake failure. Never sent on the wire."""


NOT_ON_WIRE: Final = frozenset(
    {CloseCode.NO_STATUS, CloseCode.ABNORMAL, CloseCode.TLS_HANDSHAKE}
)
"""Codes that exist only as local status (RFC 6455 section 7.4.1)."""

_REGISTERED_ON_WIRE: Final = frozenset(int(c) for c in CloseCode) - {int(c) for c in NOT_ON_WIRE}


class Cause(enum.Enum):
    """Why a session ended: the fixed, bounded ``cause`` metric label."""

    NORMAL = "normal"
    GOING_AWAY = "going_away"
    PING_TIMEOUT = "ping_timeout"
    MESSAGE_TOO_BIG = "message_too_big"
    SLOW_CONSUMER = "slow_consumer"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    SHUTDOWN = "shutdown"
    PROTOCOL_ERROR = "protocol_error"
    POLICY = "policy"
    INTERNAL = "internal"
    ABNORMAL = "abnormal"


class Initiator(enum.Enum):
    """Which party started the close: the bounded ``initiator`` label."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"


def is_valid_wire_code(code: int) -> bool:
    """Tell whether a peer may put ``code`` in a close frame (RFC 6455 7.4).

    Args:
        code: the status code read from a close frame.

    Returns:
        True for registered codes other than 1005/1006/1015 and for the
        3000-4999 range reserved for libraries and applications.
    """
    return code in _REGISTERED_ON_WIRE or 3000 <= code <= 4999


_CAUSE_BY_CODE: Final[dict[int, Cause]] = {
    CloseCode.NORMAL: Cause.NORMAL,
    CloseCode.NO_STATUS: Cause.NORMAL,
    CloseCode.GOING_AWAY: Cause.GOING_AWAY,
    CloseCode.PROTOCOL_ERROR: Cause.PROTOCOL_ERROR,
    CloseCode.UNSUPPORTED_DATA: Cause.PROTOCOL_ERROR,
    CloseCode.INVALID_DATA: Cause.PROTOCOL_ERROR,
    CloseCode.MANDATORY_EXTENSION: Cause.PROTOCOL_ERROR,
    CloseCode.POLICY_VIOLATION: Cause.POLICY,
    CloseCode.MESSAGE_TOO_BIG: Cause.MESSAGE_TOO_BIG,
    CloseCode.INTERNAL_ERROR: Cause.INTERNAL,
    CloseCode.SERVICE_RESTART: Cause.SHUTDOWN,
    CloseCode.TRY_AGAIN_LATER: Cause.UPSTREAM_UNAVAILABLE,
    CloseCode.BAD_GATEWAY: Cause.UPSTREAM_UNAVAILABLE,
    CloseCode.ABNORMAL: Cause.ABNORMAL,
}


def cause_for_code(code: int) -> Cause:
    """Derive the cause label for a close a peer started with ``code``.

    Application codes (3000-4999) are deliberate closes and count as normal.
    """
    cause = _CAUSE_BY_CODE.get(code)
    if cause is not None:
        return cause
    if 3000 <= code <= 4999:
        return Cause.NORMAL
    return Cause.PROTOCOL_ERROR


CODE_LABELS: Final = (*tuple(str(int(c)) for c in CloseCode), "3xxx", "4xxx", "other")
"""Every value the ``code`` label can take, so all series can be pre-exported."""


def code_label(code: int) -> str:
    """Bucket a close code into the bounded ``code`` label set."""
    if 1000 <= code <= 1015 and code in CloseCode._value2member_map_:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


_EXPLANATIONS: Final[dict[int, str]] = {
    CloseCode.NORMAL: "normal closure",
    CloseCode.GOING_AWAY: "going away",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNSUPPORTED_DATA: "unsupported data",
    CloseCode.NO_STATUS: "no status code",
    CloseCode.ABNORMAL: "connection closed abnormally",
    CloseCode.INVALID_DATA: "invalid frame payload data",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.MANDATORY_EXTENSION: "mandatory extension",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.SERVICE_RESTART: "service restart",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.BAD_GATEWAY: "bad gateway",
    CloseCode.TLS_HANDSHAKE: "TLS handshake failure",
}


def explain_code(code: int) -> str:
    """A few words for ``code``, as logs show it: ``"1011 (internal error)"``."""
    words = _EXPLANATIONS.get(code)
    if words is None:
        words = "registered" if 3000 <= code <= 3999 else "private use" if 4000 <= code <= 4999 else "unknown"
    return f"{code} ({words})"
