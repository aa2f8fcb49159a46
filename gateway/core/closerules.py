"""How a session ends, as data: one table the session applies and the metrics pre-export reads.

Each :class:`CloseRule` says, for one :class:`Event` on one leg, who started
the close, the ``cause`` label, and what the gateway sends on each leg. The
README's close table is this table in words (``tests/unit/test_session.py``
pins each row on a real session); :func:`known_series` gives every
``ws_gateway_closes_total`` series the table can produce, so all of them are
exported at 0 from start-up.

Upstream losses that reconnection handles do not close the session: the
session decides that (:func:`gateway.core.backoff.worth_retrying`) before it
looks a rule up.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from gateway.core.closecodes import Cause, CloseCode, Initiator, cause_for_code

__all__ = ["CLOSE_RULES", "CloseRule", "Event", "From", "LegName", "Send", "known_series", "rule_for"]


class LegName(enum.Enum):
    """The two legs of a session; the value is the ``leg`` metric label."""

    CLIENT = "client"
    UPSTREAM = "upstream"

    @property
    def initiator(self) -> Initiator:
        """The initiator label for a close this leg's peer started."""
        return Initiator.CLIENT if self is LegName.CLIENT else Initiator.UPSTREAM


class Event(enum.Enum):
    """What ends a session."""

    PEER_CLOSED = "peer_closed"
    """The peer sent a close frame."""
    PEER_LOST = "peer_lost"
    """The peer's TCP connection dropped without a close frame."""
    PING_TIMEOUT = "ping_timeout"
    """A gateway ping went unanswered."""
    MESSAGE_TOO_BIG = "message_too_big"
    """The peer sent a message over the destination's limit."""
    PROTOCOL_ERROR = "protocol_error"
    """The peer sent a malformed frame."""
    SLOW_CONSUMER = "slow_consumer"
    """The client kept its buffer full past ``client.slow_consumer_timeout``."""
    SHUTDOWN = "shutdown"
    """The gateway drains (SIGTERM)."""
    RECONNECT_GAVE_UP = "reconnect_gave_up"
    """The upstream stayed unreachable past ``reconnect.give_up_after``."""
    REPLAY_OVERFLOW = "replay_overflow"
    """The replay buffer filled up under the ``close`` policy."""
    BREAKER_TRIPPED = "breaker_tripped"
    """The upstream was lost too often within the breaker window."""
    SUBPROTOCOL_CHANGED = "subprotocol_changed"
    """A reconnected upstream chose another subprotocol."""
    LOST_MID_MESSAGE = "lost_mid_message"
    """The upstream was lost while a message to the client was half relayed (cannot be spliced)."""
    MESSAGE_REFUSED = "message_refused"
    """A client message the upstream refused or failed on (gateway.core.delivery.judge_loss): 1007, 1009, 1011."""


class From(enum.Enum):
    """Where a leg's close code comes from when the rule does not fix it."""

    PEER = "peer"
    """The peer's code: echoed on its own leg, relayed to the other (1005 stays an empty close)."""
    EVENT = "event"
    """The code of the violation the scanner found (1002, or 1007 for a close reason that is not UTF-8)."""
    NOTHING = "nothing"
    """No close frame is sent: the leg is already gone (its record stands, 1006 or the app's code)."""


@dataclass(frozen=True, slots=True)
class Send:
    """What the gateway sends on one leg: a code (or where it comes from) and a reason template."""

    code: int | From
    reason: str = "{reason}"
    """``{reason}`` is the event's reason (the peer's reason for ``From.PEER``)."""
    recorded: tuple[int, ...] = ()
    """For a code that is not fixed: the values the metrics may see, pre-exported at 0."""


@dataclass(frozen=True, slots=True)
class CloseRule:
    """One row of the close table."""

    event: Event
    leg: LegName
    """Where the event happened (shutdown: the client leg)."""
    initiator: Initiator | None
    """None: the peer of ``leg`` started it."""
    cause: Cause | None
    """None: derived from the peer's code (:func:`cause_for_code`)."""
    client: Send
    upstream: Send

    def send_on(self, leg: LegName) -> Send:
        """What the gateway sends on ``leg``."""
        return self.client if leg is LegName.CLIENT else self.upstream

    def initiator_for(self) -> Initiator:
        """The initiator label."""
        return self.initiator if self.initiator is not None else self.leg.initiator

    def cause_for(self, code: int) -> Cause:
        """The cause label, given the peer's code for rules that derive it."""
        return self.cause if self.cause is not None else cause_for_code(code)


_G: Final = Initiator.GATEWAY
_GONE: Final = Send(From.NOTHING, "", recorded=(int(CloseCode.ABNORMAL),))
_UPSTREAM_GONE: Final = Send(
    From.NOTHING, "", recorded=(int(CloseCode.ABNORMAL), int(CloseCode.SERVICE_RESTART), int(CloseCode.GOING_AWAY))
)
_NORMAL_CODES: Final = (int(CloseCode.NORMAL), int(CloseCode.GOING_AWAY))
_C, _U = LegName.CLIENT, LegName.UPSTREAM

CLOSE_RULES: Final[tuple[CloseRule, ...]] = (
    CloseRule(Event.PEER_CLOSED, _C, None, None,
              client=Send(From.PEER, recorded=_NORMAL_CODES), upstream=Send(From.PEER, recorded=_NORMAL_CODES)),
    CloseRule(Event.PEER_CLOSED, _U, None, None,
              client=Send(From.PEER, recorded=(*_NORMAL_CODES, int(CloseCode.INTERNAL_ERROR),
                                               int(CloseCode.SERVICE_RESTART))),
              upstream=Send(From.PEER, recorded=(*_NORMAL_CODES, int(CloseCode.INTERNAL_ERROR),
                                                 int(CloseCode.SERVICE_RESTART)))),
    CloseRule(Event.PEER_LOST, _C, None, Cause.ABNORMAL,
              client=_GONE, upstream=Send(CloseCode.GOING_AWAY, "client connection lost")),
    CloseRule(Event.PEER_LOST, _U, None, Cause.ABNORMAL,
              client=Send(CloseCode.INTERNAL_ERROR, "upstream closed the connection without a close frame"),
              upstream=_GONE),
    CloseRule(Event.PING_TIMEOUT, _C, _G, Cause.PING_TIMEOUT,
              client=Send(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"),
              upstream=Send(CloseCode.GOING_AWAY, "client keepalive ping timeout")),
    CloseRule(Event.PING_TIMEOUT, _U, _G, Cause.PING_TIMEOUT,
              client=Send(CloseCode.INTERNAL_ERROR, "upstream keepalive ping timeout"),
              upstream=Send(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")),
    CloseRule(Event.MESSAGE_TOO_BIG, _C, _G, Cause.MESSAGE_TOO_BIG,
              client=Send(CloseCode.MESSAGE_TOO_BIG), upstream=Send(CloseCode.GOING_AWAY, "client {reason}")),
    CloseRule(Event.MESSAGE_TOO_BIG, _U, _G, Cause.MESSAGE_TOO_BIG,
              client=Send(CloseCode.GOING_AWAY, "upstream {reason}"), upstream=Send(CloseCode.MESSAGE_TOO_BIG)),
    CloseRule(Event.PROTOCOL_ERROR, _C, _G, Cause.PROTOCOL_ERROR,
              client=Send(From.EVENT, recorded=(int(CloseCode.PROTOCOL_ERROR), int(CloseCode.INVALID_DATA))),
              upstream=Send(CloseCode.GOING_AWAY, "client {reason}")),
    CloseRule(Event.PROTOCOL_ERROR, _U, _G, Cause.PROTOCOL_ERROR,
              client=Send(CloseCode.BAD_GATEWAY, "upstream protocol error: {reason}"),
              upstream=Send(From.EVENT, recorded=(int(CloseCode.PROTOCOL_ERROR), int(CloseCode.INVALID_DATA)))),
    CloseRule(Event.SLOW_CONSUMER, _C, _G, Cause.SLOW_CONSUMER,
              client=Send(CloseCode.POLICY_VIOLATION, "slow consumer: client is not reading"),
              upstream=Send(CloseCode.GOING_AWAY, "slow consumer: client is not reading")),
    CloseRule(Event.SHUTDOWN, _C, _G, Cause.SHUTDOWN,
              client=Send(CloseCode.SERVICE_RESTART, "gateway shutting down"),
              upstream=Send(CloseCode.GOING_AWAY, "gateway shutting down")),
    CloseRule(Event.RECONNECT_GAVE_UP, _U, _G, Cause.UPSTREAM_UNAVAILABLE,
              client=Send(CloseCode.TRY_AGAIN_LATER), upstream=_UPSTREAM_GONE),
    CloseRule(Event.REPLAY_OVERFLOW, _U, _G, Cause.UPSTREAM_UNAVAILABLE,
              client=Send(CloseCode.TRY_AGAIN_LATER), upstream=_UPSTREAM_GONE),
    CloseRule(Event.BREAKER_TRIPPED, _U, _G, Cause.INTERNAL,
              client=Send(CloseCode.INTERNAL_ERROR), upstream=_UPSTREAM_GONE),
    CloseRule(Event.SUBPROTOCOL_CHANGED, _U, _G, Cause.PROTOCOL_ERROR,
              client=Send(CloseCode.INTERNAL_ERROR), upstream=_UPSTREAM_GONE),
    CloseRule(Event.MESSAGE_REFUSED, _U, _G, None,
              client=Send(From.EVENT, recorded=(int(CloseCode.INVALID_DATA), int(CloseCode.MESSAGE_TOO_BIG),
                                                int(CloseCode.INTERNAL_ERROR))),
              upstream=_UPSTREAM_GONE),
    CloseRule(Event.LOST_MID_MESSAGE, _U, None, Cause.ABNORMAL,
              client=Send(CloseCode.INTERNAL_ERROR, "upstream lost in the middle of a message to the client"),
              upstream=_UPSTREAM_GONE),
)

_BY_KEY: Final = {(rule.event, rule.leg): rule for rule in CLOSE_RULES}


def rule_for(event: Event, leg: LegName) -> CloseRule:
    """The rule for ``event`` on ``leg`` (shutdown and slow consumer are client-leg events).

    Raises:
        KeyError: no rule covers that pair (a bug: every event the session raises has one).
    """
    return _BY_KEY[(event, leg)]


def known_series() -> Iterator[tuple[str, int, Initiator, Cause]]:
    """Every ``(leg, code, initiator, cause)`` of ``closes_total`` the table can produce."""
    seen: set[tuple[str, int, Initiator, Cause]] = set()
    for rule in CLOSE_RULES:
        for leg in LegName:
            send = rule.send_on(leg)
            codes = (int(send.code),) if isinstance(send.code, int) else send.recorded
            for code in codes:
                series = (leg.value, code, rule.initiator_for(), rule.cause_for(code))
                if series not in seen:
                    seen.add(series)
                    yield series
