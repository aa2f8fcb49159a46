"""One leg's closing handshake as a small state machine, with no I/O (RFC 6455 sections 5.5.1, 7).

:class:`ClosingHandshake` knows what the gateway sent and received on one
leg and decides what happens to that leg's TCP connection. The asyncio leg
(:mod:`gateway.leg`) writes the frames and closes the transport when this
object says so; tests drive it directly.

States (changed only in :meth:`ClosingHandshake._set_state`)::

    OPEN ──send / receive a close──▶ CLOSING ──TCP gone──▶ CLOSED
      └──────────────TCP gone (no close frame: 1006)────────▶ CLOSED

When TCP closes (RFC 6455 7.1.1): on a leg where the gateway is the
**server** (the client leg) it closes TCP as soon as both close frames have
been exchanged, or at once after its own close when the peer's close was
invalid or its bytes can no longer be framed. Where the gateway is the
**client** (the upstream leg) it waits for the server to close TCP, except
when the peer's bytes can no longer be framed. Either way the leg bounds the
wait with ``close_timeout``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.core.closecodes import CloseCode, explain_code
from gateway.core.codec import build_close_payload

__all__ = ["Close", "ClosingHandshake", "LegState", "Role"]


class LegState(enum.Enum):
    """Lifecycle of one leg's WebSocket connection."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Role(enum.Enum):
    """Which end of the TCP connection the gateway is on this leg."""

    SERVER = "server"
    """The gateway accepted the connection (client leg): it closes TCP first."""
    CLIENT = "client"
    """The gateway opened the connection (upstream leg): the peer closes TCP first."""


@dataclass(frozen=True, slots=True)
class Close:
    """A close frame's content; code 1005 stands for a close frame with no body."""

    code: int
    reason: str = ""

    def payload(self) -> bytes:
        """The frame body: empty for 1005, else the code and the reason cut to fit (RFC 6455 5.5.1)."""
        if self.code == CloseCode.NO_STATUS:
            return b""
        return build_close_payload(self.code, self.reason)

    def __str__(self) -> str:
        if self.code == CloseCode.NO_STATUS:
            return "a close frame with no code"
        text = explain_code(self.code)
        return f"{text} {self.reason}" if self.reason else text


class ClosingHandshake:
    """What one leg has sent and received of its closing handshake, and when its TCP closes.

    Args:
        role: which end the gateway is on this leg.
    """

    __slots__ = ("_close_transport", "peer_finished", "received", "role", "sent", "sent_first", "state")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = LegState.OPEN
        self.sent: Close | None = None
        self.received: Close | None = None
        self.sent_first = False
        """True when the gateway's close went out before the peer's arrived."""
        self.peer_finished = False
        """Nothing more will be read from the peer (its close arrived, valid or not, or its bytes broke)."""
        self._close_transport = False

    def _set_state(self, state: LegState) -> None:
        self.state = state

    @property
    def can_send_data(self) -> bool:
        """Frames other than our close may still go to this peer (no close sent, TCP up): RFC 6455 5.5.1."""
        return self.sent is None and self.state is not LegState.CLOSED

    def send(self, close: Close) -> bool:
        """The gateway closes (or answers a close): True when the frame should be written now."""
        if self.sent is not None or self.state is LegState.CLOSED:
            return False
        self.sent = close
        if self.received is None:
            self.sent_first = True
        self._set_state(LegState.CLOSING)
        self._decide()
        return True

    def receive(self, close: Close) -> None:
        """The peer's valid close frame arrived."""
        if self.received is None:
            self.received = close
        self.peer_finished = True
        if self.state is LegState.OPEN:
            self._set_state(LegState.CLOSING)
        self._decide()

    def peer_broke_off(self) -> None:
        """The peer sent an invalid close, or bytes that can no longer be framed: stop waiting for it."""
        self.peer_finished = True
        if self.state is LegState.OPEN:
            self._set_state(LegState.CLOSING)
        self._decide()

    def _decide(self) -> None:
        if self.sent is None or not self.peer_finished:
            return
        # Both sides are done: a server closes TCP now; a client too when the peer's close was not valid
        # (a server that breaks the protocol may never close its end).
        if self.role is Role.SERVER or self.received is None:
            self._close_transport = True

    @property
    def should_close_transport(self) -> bool:
        """True once the gateway should close this leg's TCP connection (after writing what is queued)."""
        return self._close_transport and self.state is not LegState.CLOSED

    def transport_lost(self) -> None:
        """The TCP connection is gone."""
        self._set_state(LegState.CLOSED)

    @property
    def code(self) -> int:
        """The code that ended this leg, for metrics: the first close frame either way, else 1006."""
        if self.sent_first and self.sent is not None:
            return self.sent.code
        if self.received is not None:
            return self.received.code
        if self.sent is not None:
            return self.sent.code
        return int(CloseCode.ABNORMAL)

    @property
    def reason(self) -> str:
        """The reason that goes with :attr:`code`."""
        if self.sent_first and self.sent is not None:
            return self.sent.reason
        if self.received is not None:
            return self.received.reason
        return self.sent.reason if self.sent is not None else ""

    def describe(self) -> str:
        """The handshake as a sentence, e.g. "sent 1011 (internal error) keepalive ping timeout;
        no close frame received"."""
        sent = f"sent {self.sent}" if self.sent is not None else "sent no close frame"
        if self.received is not None:
            received = f"received {self.received}"
        elif self.peer_finished:
            received = "received an invalid close frame or malformed data"
        else:
            received = "no close frame received"
        return f"{sent}; {received}" if self.sent_first or self.received is None else f"{received}; {sent}"
