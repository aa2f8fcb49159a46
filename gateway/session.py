"""One client session: both legs, the close table applied to them, and upstream replacement.

A :class:`Session` is created after both handshakes succeeded. Its legs
(:mod:`gateway.leg`) read their peers through frame scanners whose data goes
straight to the other leg's transport. Everything that ends a session is an
:class:`~gateway.core.closerules.Event` on a leg; :meth:`Session._close`
looks up its :class:`~gateway.core.closerules.CloseRule` and sends what the
rule says on each leg, so the client always gets a real close frame with a
meaningful code. When both transports are gone the session counts one close
per leg and writes one log line.

States (changed only in :meth:`Session._set_state`, each change logged at
debug; :class:`SessionState` says when each one begins and ends). Client resume
(:mod:`gateway.resume`) is reached through the session's :class:`~gateway.resume.ResumeHost`
methods, upstream replacement (:mod:`gateway.outage`) through its
:class:`~gateway.outage.OutageHost` ones; the session alone writes its legs' data paths.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from gateway.core.closecodes import Cause, CloseCode, Initiator
from gateway.core.closerules import CloseRule, Event, From, LegName, rule_for
from gateway.core.closing import Close
from gateway.core.compression import DeflateAgreement
from gateway.core.config import ClientConfig, UpstreamConfig
from gateway.core.counts import DirectionCounts
from gateway.core.delivery import DeliveryMode, Ledger
from gateway.core.outage import LossCause
from gateway.core.targets import Target
from gateway.delivery import Confirmations
from gateway.flow import Backpressure, Pausable, WriteFlow
from gateway.leg import Leg
from gateway.metrics import GatewayMetrics
from gateway.outage import Outage, RecoveryPlan
from gateway.resume import ResumeState
from gateway.sessionlog import SessionRecord, log_session, session_fields
from gateway.upstream import UpstreamConnection

__all__ = ["ClientReads", "Session", "SessionState"]

logger = logging.getLogger("gateway.session")

_VIOLATION_EVENTS: Final = {int(CloseCode.MESSAGE_TOO_BIG): Event.MESSAGE_TOO_BIG}


class SessionState(enum.Enum):
    """Lifecycle of a session after both handshakes."""

    OPEN = "open"
    """Relaying both ways (the first state)."""
    CLIENT_AWAY = "client_away"
    """A resumable client dropped: the app's leg stays open and its messages go to the replay log,
    until a resume splices a new client leg in (back to OPEN) or the grace period ends (CLOSING)."""
    RECONNECTING = "reconnecting"
    """The upstream was lost: the client's data is held while a new upstream is sought
    (:class:`~gateway.outage.Outage`); then OPEN again, or CLOSING when the outage closes the client."""
    REPLAY_PENDING = "replay_pending"
    """A new upstream is connected, but the client is in the middle of a message the outage cut:
    the replay waits for that message's end (then OPEN)."""
    CLOSING = "closing"
    """After the first close, while the legs finish their closing handshakes."""
    CLOSED = "closed"
    """Both transports are gone; counted and logged."""


class ClientReads(Protocol):
    """The client connection as the session starts reading it (:class:`gateway.http.ClientConnection`)."""

    def relay(self, feed: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        """Hand every read to ``feed`` from now on; tell ``on_lost`` when the connection is gone."""
        ...


_IN_OUTAGE: Final = frozenset({SessionState.RECONNECTING, SessionState.REPLAY_PENDING})
_TAKES_CLIENT: Final = frozenset({SessionState.OPEN, SessionState.CLIENT_AWAY})


class Session:
    """Both legs of one client connection and the rules that tie their closes together.

    Slotted: idle sessions are most of a gateway's memory.

    Args:
        session_id: stable id, also sent upstream and logged.
        client_ip: the client address after trusted-proxy rules.
        path: request path without the query (logged).
        metrics: where counts go.
        client_config / upstream_config: per-leg settings.
    """

    __slots__ = (
        "_backpressure",
        "cause",
        "client",
        "client_config",
        "client_ip",
        "done",
        "initiator",
        "metrics",
        "outage",
        "path",
        "resume",
        "session_id",
        "started",
        "state",
        "target",
        "to_client",
        "to_upstream",
        "upstream",
        "upstream_config",
    )

    def __init__(
        self,
        session_id: str,
        client_ip: str,
        path: str,
        metrics: GatewayMetrics,
        client_config: ClientConfig,
        upstream_config: UpstreamConfig,
    ) -> None:
        self.session_id = session_id
        self.client_ip = client_ip
        self.path = path
        self.metrics = metrics
        self.client_config = client_config
        self.upstream_config = upstream_config
        self.state = SessionState.OPEN
        self.initiator: Initiator | None = None
        self.cause: Cause | None = None
        self.started = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client: Leg
        self.upstream: Leg
        self._backpressure: Backpressure | None = None
        """Created on first use: most sessions never wait for a destination to drain."""
        self.outage: Outage | None = None
        """Set at attach when reconnection is enabled: an upstream loss replaces the leg instead of closing."""
        self.target: Target | None = None
        """The upstream target this session is on (the server moves it on reconnect)."""
        self.to_upstream = DirectionCounts()
        """What the client sent, for the session's life: every client leg's parsers write here."""
        self.to_client = DirectionCounts()
        """What the app sent, for the session's life: every upstream leg's scanner (and the client
        leg's deflater) write here, so a replaced upstream's counts need no copying."""
        self.resume: ResumeState | None = None
        """Set for a resumable client (docs/resume.md): it may drop and be spliced back in."""

    # --- set-up ---------------------------------------------------------------------------
    def attach(
        self,
        client_transport: asyncio.Transport,
        client_flow: WriteFlow,
        upstream_transport: asyncio.Transport,
        upstream_flow: WriteFlow,
        compression: DeflateAgreement | None = None,
        recovery: RecoveryPlan | None = None) -> None:
        """Bind both transports (with the client's compression agreement and, if reconnection is
        enabled, how to replace the upstream), start keepalive, count it open."""
        self.client = self._new_client_leg(client_transport, client_flow, compression)
        if recovery is not None:
            config = recovery.config
            ledger = Ledger(keep_bytes=config.delivery is DeliveryMode.AT_LEAST_ONCE, limit=config.buffer_bytes,
                            window=config.app_queue_messages, window_bytes=config.app_queue_bytes)
            confirmations = Confirmations(ledger, self.client.positions, config.confirm_interval,
                                          self._send_confirmation, self._hear_writes)
            self.outage = Outage(recovery, confirmations, self, self.metrics, self.session_id)
            self.client.delivery = confirmations
            self._keep_message_starts(self.client)
        if self.resume is not None:
            self.resume.attach_client(self.client)
        self._pair(self._new_upstream_leg(upstream_transport, upstream_flow))
        self.metrics.session_opened(self)
        self.client.schedule_ping()
        self.upstream.schedule_ping()

    def _new_client_leg(self, transport: asyncio.Transport, flow: WriteFlow,
                        compression: DeflateAgreement | None) -> Leg:
        return Leg(LegName.CLIENT, self, transport, flow, self.client_config, self.client_config.close_timeout,
                   scanner_limits=self.upstream_config, from_peer=self.to_upstream, to_peer=self.to_client,
                   compression=compression)

    def _keep_message_starts(self, client: Leg) -> None:
        """at_most_once keeps only the start of a message in progress (re-sent whole after an
        outage: the old upstream never had all of it); at_least_once's ledger keeps more."""
        outage = self.outage
        if outage is not None and not outage.confirmations.ledger.keeps_bytes:
            client.retain_limit = outage.plan.config.buffer_bytes
            client.recent = bytearray()

    def _new_upstream_leg(self, transport: asyncio.Transport, flow: WriteFlow) -> Leg:
        return Leg(LegName.UPSTREAM, self, transport, flow, self.upstream_config, self.client_config.close_timeout,
                   scanner_limits=self.client_config, from_peer=self.to_client, to_peer=self.to_upstream)

    def _pair(self, upstream: Leg) -> None:
        """Make ``upstream`` the session's upstream leg and connect the data paths both ways."""
        self.upstream = upstream
        upstream.other = self.client
        self.client.other = upstream
        self.client.out = upstream.transport
        # A resumable session's app messages also go into the replay log (the tap in front of the client).
        upstream.out = self.client.sender if self.resume is None else self.resume.tap
        if self.outage is not None:
            upstream.pong_listener = self.outage.confirmations

    def read_upstream(self, connection: UpstreamConnection) -> None:
        """Hand the upstream connection's reads (those that came with its handshake first) to the upstream leg."""
        upstream = self.upstream
        connection.protocol.attach(upstream.scanner.feed, upstream.transport_lost, connection.first_bytes)

    def read_client(self, connection: ClientReads) -> None:
        """Hand the client connection's reads to the client leg (after :meth:`attach` or a splice)."""
        client = self.client
        connection.relay(client.scanner.feed, client.transport_lost)

    def _send_confirmation(self, payload: bytes) -> None:
        self.upstream.send_ping(payload)

    def _hear_writes(self, confirmations: Confirmations | None) -> None:
        if self.state in _TAKES_CLIENT:  # during an outage nothing is written upstream
            self.client.delivery = confirmations

    def _set_state(self, state: SessionState) -> None:
        logger.debug("%s -> %s", self.state.value, state.value, extra=session_fields(self.session_id))
        self.state = state

    # --- what the collector reads (besides to_upstream and to_client) -----------------------
    def replay_state(self) -> tuple[int, int, bool]:
        """Replay buffer use for the collector."""
        return self.outage.buffered() if self.outage is not None else (0, 0, False)

    # --- events from the legs (LegListener) -------------------------------------------------
    def leg_closed(self, leg: Leg, close: Close) -> None:
        """A peer's close frame: echoed on its leg and carried to the other, or a reconnect."""
        if not self._current(leg):
            return  # an upstream leg that reconnection is replacing or has replaced
        if leg is self.upstream and self.state is SessionState.OPEN and self._may_reconnect(close.code):
            leg.send_close(close)  # echo, then let the old connection finish on its own
            self._upstream_lost(close.code)
            return
        self._close(rule_for(Event.PEER_CLOSED, leg.name), close.reason, close.code)

    def leg_failed(self, leg: Leg, code: int, reason: str) -> None:
        """The peer on ``leg`` sent a malformed frame or an oversized message."""
        event = _VIOLATION_EVENTS.get(code, Event.PROTOCOL_ERROR)
        if event is Event.MESSAGE_TOO_BIG:
            self.metrics.message_refused(leg.name.value)
        else:
            self.metrics.protocol_error(leg.name.value)
        logger.info("%s leg: closing with %d: %s", leg.name.value, code, reason, extra=session_fields(self.session_id))
        if not self._current(leg):
            leg.abort()
            return
        if not self._close(rule_for(event, leg.name), reason, code):
            leg.send_close(Close(code, reason))  # already closing: still answer this leg's peer

    def leg_ping_timeout(self, leg: Leg) -> None:
        """A gateway ping on ``leg`` went unanswered: that peer is presumed dead."""
        self.metrics.ping_timed_out(leg.name.value)
        if leg is self.client and self._wait_for_client():
            leg.abort()
            return
        if not self._current(leg):
            leg.abort()
            return
        if leg is self.upstream and self.state is SessionState.OPEN and self._may_reconnect(None):
            leg.send_close(Close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            leg.abort()  # a frozen or vanished upstream will not answer the close either
            self._upstream_lost(None, LossCause(timed_out=True))
            return
        self._close(rule_for(Event.PING_TIMEOUT, leg.name))

    def leg_lost(self, leg: Leg) -> None:
        """A transport closed. Mid-session, that is an abnormal close (1006) the other leg hears of."""
        if leg is self.client and (self.state is SessionState.CLIENT_AWAY or self._wait_for_client()):
            return
        if leg is self.upstream and self.state is SessionState.OPEN and self._may_reconnect(None):
            self._upstream_lost(None)
        elif self._current(leg):
            self._close(rule_for(Event.PEER_LOST, leg.name))
        elif leg is not self.upstream:
            leg.release()  # a replaced upstream leg has finished: nothing refers to it any more
        if self.client.closed and self.upstream.closed:
            self._finish()

    def _current(self, leg: Leg) -> bool:
        """False for an upstream leg that reconnection is replacing or has replaced (its events are past)."""
        if leg is self.client:
            return True
        return leg is self.upstream and self.state not in _IN_OUTAGE

    def leg_backlogged(self, source: Leg, destination: Leg) -> None:
        """Backpressure: stop reading ``source`` until ``destination`` drains.

        A client that stays behind past ``client.slow_consumer_timeout`` is
        closed with 1008 (cause ``slow_consumer``).
        """
        if self._backpressure is None:
            self._backpressure = Backpressure(self._stuck)
        timeout = self.client_config.slow_consumer_timeout if destination is self.client else None
        self._backpressure.hold(source, destination, timeout)

    def _stuck(self, destination: Pausable) -> None:
        logger.info(
            "client read nothing for %.1fs with its buffer full; closing",
            self.client_config.slow_consumer_timeout,
            extra=session_fields(self.session_id),
        )
        self._close(rule_for(Event.SLOW_CONSUMER, LegName.CLIENT))

    def ping_answered(self, leg: Leg, seconds: float) -> None:
        """A gateway ping's round trip, for the RTT histogram."""
        self.metrics.ping_answered(leg.name.value, seconds)

    # --- closing by the table ---------------------------------------------------------------
    def close_by_gateway(self, event: Event) -> None:
        """Close both legs on the gateway's own account (``Event.SHUTDOWN`` when draining)."""
        self._close(rule_for(event, LegName.CLIENT))

    def stop_recovering(self) -> None:
        """Draining: from now on an upstream loss closes the client, and a client that drops is not waited for."""
        if self.outage is not None:
            self.outage.allowed = False
        if self.resume is not None:
            self.resume.allowed = False

    def abort(self) -> None:
        """Drop both connections now (a drain's deadline, the process closing)."""
        self.client.abort()
        self.upstream.abort()

    def _close(self, rule: CloseRule, reason: str = "", code: int = 0) -> bool:
        """Apply ``rule``: the first close decides initiator and cause; False if one was under way.

        Args:
            rule: the row of the close table.
            reason: the event's reason (the peer's reason for a relayed close).
            code: the peer's code (relayed closes) or the violation's code.
        """
        if self.state in _IN_OUTAGE and self.outage is not None:
            self.outage.end()
        elif self.state not in _TAKES_CLIENT:
            return False
        self.initiator = rule.initiator_for()
        self.cause = rule.cause_for(code)
        self._set_state(SessionState.CLOSING)
        # Neither peer's data goes anywhere now; both are still read, so their close replies are seen.
        self.client.discard_data()
        self.upstream.discard_data()
        event_leg = self.client if rule.leg is LegName.CLIENT else self.upstream
        for leg in (event_leg, event_leg.other):
            send = rule.send_on(leg.name)
            if send.code is From.NOTHING:
                continue
            wire = code if isinstance(send.code, From) else int(send.code)
            leg.send_close(Close(wire, send.reason.format(reason=reason)))
        return True

    # --- upstream replacement (gateway.outage) ------------------------------------------------
    def _may_reconnect(self, code: int | None) -> bool:
        return self.outage is not None and self.outage.may_retry(code)

    def _upstream_lost(self, code: int | None, cause: LossCause | None = None) -> None:
        """The upstream is gone with a retryable code (or none): hold the client while the outage
        finds a new upstream, unless it closed the client instead."""
        assert self.outage is not None
        self.client.delivery = None  # nothing is written upstream until the replay
        self.upstream.pong_listener = None
        cause = cause or LossCause(reset=self.upstream.lost_by_reset)
        hold = self.outage.begin(code, cause, self.client, self.upstream.scanner.in_message)
        if hold is None:
            return
        self._set_state(SessionState.RECONNECTING)
        self.upstream.stop_keepalive()
        self.client.out = hold
        self.client.resume_reading()  # it may have been paused for the old upstream's buffer

    def close_client(self, event: Event, reason: str, code: int = 0) -> None:
        """Reconnection failed or is not possible: close the client as the table says (OutageHost)."""
        self._close(rule_for(event, LegName.UPSTREAM), reason, code)
        self.upstream.abort()

    def upstream_waiting(self) -> None:
        """A new upstream is connected; the replay waits for the end of the message the outage cut (OutageHost)."""
        self._set_state(SessionState.REPLAY_PENDING)

    def upstream_back(self) -> None:
        """A new upstream is connected and the held client data is at a message boundary: replay,
        pair the new leg, relay (OutageHost)."""
        assert self.outage is not None
        replay = self.outage.replay(self.client)
        connection = replay.connection
        retired_leg = self.upstream
        protocol = connection.protocol
        upstream = self._new_upstream_leg(connection.transport, protocol.write_flow())
        if replay.data:
            connection.transport.write(replay.data)
        self._pair(upstream)
        if retired_leg.closed:
            retired_leg.release()  # else when its connection ends (leg_lost)
        if self.client.recent is not None:
            # The replay may end with the start of a message still in progress: that start is what
            # a next outage must re-send, with the fragments that follow.
            self.client.recent[:] = replay.data[replay.whole:]
        self.client.recent_too_large = False
        self._set_state(SessionState.OPEN)
        self.read_upstream(connection)
        upstream.schedule_ping()
        self.outage.confirmations.restart()

    # --- client resume (gateway.resume) --------------------------------------------------------
    def takes_client(self) -> bool:
        """Relaying, or waiting for a resumable client: no outage, not closing (ResumeHost)."""
        return self.state in _TAKES_CLIENT

    def _wait_for_client(self) -> bool:
        """The client's connection is gone: True if the session waits for it (CLIENT_AWAY)."""
        if self.resume is None or self.state is not SessionState.OPEN or not self.resume.wait_for_client():
            return False
        self._set_state(SessionState.CLIENT_AWAY)
        return True

    def client_gone(self, result: str) -> None:
        """The client did not come back in time (``expired``), or the replay log overflowed while it
        was away: the session ends as a client loss (ResumeHost)."""
        if self.state is not SessionState.CLIENT_AWAY:
            return  # the session is closing already (drain, the app's close): nothing to count here
        self.metrics.client_resume(result)
        self._close(rule_for(Event.PEER_LOST, LegName.CLIENT))

    def splice_client(self, transport: asyncio.Transport, flow: WriteFlow, compression: DeflateAgreement | None,
                      received: int) -> bool:
        """A resume: a new client connection replaces the client leg, and gets what it lacks first;
        False when it cannot resume now (:meth:`gateway.resume.ResumeState.frames_for`)."""
        resume = self.resume
        frames = resume.frames_for(received) if resume is not None else None
        if resume is None or frames is None:
            return False
        old = self.client
        new = self._new_client_leg(transport, flow, compression)
        new.continue_numbering(old)
        new.delivery = old.delivery  # pong_listener and text_log: ResumeState.took_over
        self._keep_message_starts(new)
        new.other, new.out, self.upstream.other = self.upstream, old.out, new
        self.client = new
        if self.outage is not None:
            self.outage.confirmations.follow(new.positions)
        if old.closed:
            old.release()
        else:
            old.abort()  # the client came back before its old connection was seen to drop
        self._set_state(SessionState.OPEN)
        self.metrics.client_resumed(resume.took_over(new, frames), resume.log.messages - received)
        new.schedule_ping()
        return True

    # --- the end ---------------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self._set_state(SessionState.CLOSED)
        if self._backpressure is not None:
            self._backpressure.cancel()
        initiator = self.initiator or Initiator.GATEWAY
        cause = self.cause or Cause.INTERNAL
        client, upstream = self.client, self.upstream
        self.metrics.session_closed(
            self,
            [
                (LegName.CLIENT.value, client.closing_code(), initiator, cause),
                (LegName.UPSTREAM.value, upstream.closing_code(), initiator, cause),
            ],
        )
        stats = self.outage.stats if self.outage is not None else None
        log_session(
            SessionRecord(
                session_id=self.session_id,
                client_ip=self.client_ip,
                path=self.path,
                client_code=client.closing_code(),
                client_reason=client.handshake.reason,
                client_close=client.handshake.describe(),
                upstream_code=upstream.closing_code(),
                upstream_reason=upstream.handshake.reason,
                upstream_close=upstream.handshake.describe(),
                initiator=initiator.value,
                cause=cause.value,
                duration=time.monotonic() - self.started,
                messages_in=self.to_upstream.messages,
                bytes_in=self.to_upstream.payload_bytes,
                messages_out=self.to_client.messages,
                bytes_out=self.to_client.payload_bytes,
                discarded=self.to_upstream.discarded_messages + self.to_client.discarded_messages,
                reconnects=stats.reconnects if stats else 0,
                outage_seconds=stats.outage_seconds if stats else 0.0,
                lost_messages=stats.lost_messages if stats else 0,
                possible_duplicates=stats.possible_duplicates if stats else 0,
                client_resumes=self.resume.resumes if self.resume is not None else 0,
                compressed=client.inflater is not None,
            )
        )
        # Break the reference cycles (session <-> legs <-> scanners, the reopen closure, the
        # backpressure callback) so that reference counting frees this session now.
        self.client.release()
        self.upstream.release()
        self._backpressure = None
        if self.outage is not None:
            self.outage.confirmations.stop()
        self.outage = None
        if self.resume is not None:
            self.resume.end()
            self.resume = None
        if not self.done.done():
            self.done.set_result(None)
