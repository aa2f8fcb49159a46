"""The bounded values of every metric label that is not a close code: one vocabulary, in the core.

The modules that produce a value (the upstream connector, the reconnect loop, client resume, the
traffic port) and :mod:`gateway.metrics`, which exports every series at 0 in advance, read these
names from here, so the metrics module depends on the core alone. Close codes, causes, initiators
and legs are :mod:`gateway.core.closecodes` and :mod:`gateway.core.closerules`.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["COMPRESSION_RESULTS", "CONNECT_RESULTS", "DIRECTIONS", "HANDSHAKE_STATUSES", "RECONNECT_RESULTS",
           "RECONNECT_SUBPROTOCOL", "REPLAY_DROP_REASONS", "RESUME_RESULTS", "ConnectResult"]


class ConnectResult(enum.Enum):
    """How an upstream connection attempt ended: the ``result`` label of the connect metrics."""

    OK = "ok"
    """101 Switching Protocols."""
    REFUSED = "refused"
    """TCP connection refused (nothing listens)."""
    ERROR = "error"
    """Another socket error, or the connection closed during the handshake."""
    TIMEOUT = "timeout"
    """No complete handshake within the time allowed."""
    INVALID = "invalid"
    """An answer that is not a valid WebSocket handshake."""
    REJECTED = "rejected"
    """An HTTP status other than 101."""


CONNECT_RESULTS: Final = tuple(result.value for result in ConnectResult)
"""``result`` of upstream connection attempts (:class:`ConnectResult`)."""
RECONNECT_SUBPROTOCOL: Final = "subprotocol"
"""Reconnect attempt result: the new upstream chose another subprotocol than the first one."""
RECONNECT_RESULTS: Final = (*CONNECT_RESULTS, RECONNECT_SUBPROTOCOL)
"""``result`` of reconnect attempts: the connect results, plus ``subprotocol``."""
DIRECTIONS: Final = ("client_to_upstream", "upstream_to_client")
"""``direction`` of relayed traffic."""
HANDSHAKE_STATUSES: Final = ("400", "403", "404", "408", "426", "429", "431", "500", "502", "503", "504", "505",
                              "other")
"""Bounded ``status`` label values of handshake failures."""
COMPRESSION_RESULTS: Final = ("negotiated", "not_offered", "declined")
"""``result`` of permessage-deflate negotiation at client handshakes: agreed; the client offered none;
offered and declined (client.compression.enabled false, or no offer the gateway accepts)."""
REPLAY_DROP_REASONS: Final = ("unhandled", "unconfirmed", "cut", "overflow", "too_large", "refused")
"""Why a client message was lost at an upstream outage (gateway.core.delivery, gateway.core.replay)."""
RESUME_RESULTS: Final = ("resumed", "expired", "overflow", "refused")
"""``result`` of client resumes: spliced back in; the grace period passed; the replay log
overflowed while the client was away; a resume attempt refused with 4410 (unknown, wrong, reused
or expired token, a malformed entry, or a session that could not take it)."""
