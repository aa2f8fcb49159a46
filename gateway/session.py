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
debug): ``OPEN`` relays; ``RECONNECTING`` while the upstream leg is being
replaced and the client's data goes to an :class:`~gateway.reconnect.OutageHold`;
``CLOSING`` after the first close, while the legs finish their closing
handshakes; ``CLOSED`` when both transports are gone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass
from typing import Final

from gateway.core.backoff import worth_retrying
from gateway.core.closecodes import Cause, CloseCode, Initiator
from gateway.core.closerules import CloseRule, Event, From, LegName, rule_for
from gateway.core.closing import Close
from gateway.core.compression import DeflateAgreement
from gateway.core.config import ClientConfig, UpstreamConfig
from gateway.core.deflate import compression_counts
from gateway.core.delivery import DeliveryMode, Ledger, Unconfirmed
from gateway.core.replay import MessageBuffer
from gateway.core.targets import Target
from gateway.delivery import Confirmations
from gateway.flow import Backpressure, Pausable, WriteFlow
from gateway.leg import Leg
from gateway.metrics import GatewayMetrics
from gateway.reconnect import GaveUp, OutageHold, Reconnected, Recovery, judge_outage, outage_buffer, reconnect
from gateway.resume import ResumeState
from gateway.session_resume import ClientResume
from gateway.sessionlog import SessionRecord, log_session

__all__ = ["Session", "SessionState", "Traffic"]

logger = logging.getLogger("gateway.session")

_VIOLATION_EVENTS: Final = {int(CloseCode.MESSAGE_TOO_BIG): Event.MESSAGE_TOO_BIG}


class SessionState(enum.Enum):
    """Lifecycle of a session after both handshakes."""

    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(slots=True)
class Traffic:
    """Upstream-to-client counts of upstream legs that reconnection replaced."""

    messages: int = 0
    payload_bytes: int = 0
    fragmented_messages: int = 0
    discarded_messages: int = 0


class Session(ClientResume):
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
        "path",
        "recovery",
        "resume",
        "retired",
        "session_id",
        "started",
        "state",
        "target",
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
        self.recovery: Recovery | None = None
        """Set when reconnection is enabled: an upstream loss replaces the leg instead of closing."""
        self.target: Target | None = None
        """The upstream target this session is on (the server moves it on reconnect)."""
        self.retired = Traffic()
        self.resume: ResumeState | None = None
        """Set for a resumable client (docs/resume.md): it may drop and be spliced back in."""

    # --- set-up ---------------------------------------------------------------------------
    def attach(
        self,
        client_transport: asyncio.Transport,
        client_flow: WriteFlow,
        upstream_transport: asyncio.Transport,
        upstream_flow: WriteFlow,
        compression: DeflateAgreement | None = None) -> None:
        """Bind both transports (and the client's compression agreement), start keepalive, count it open."""
        self.client = Leg(
            LegName.CLIENT,
            self,
            client_transport,
            client_flow,
            self.client_config,
            self.client_config.close_timeout,
            scanner_limits=self.upstream_config, compression=compression,
        )
        recovery = self.recovery
        if recovery is not None:
            config = recovery.config
            ledger = Ledger(keep_bytes=config.delivery is DeliveryMode.AT_LEAST_ONCE, limit=config.buffer_bytes,
                            window=config.app_queue_messages, window_bytes=config.app_queue_bytes)
            recovery.confirmations = Confirmations(ledger, self.client.positions, config.confirm_interval,
                                                   self._send_confirmation, self._hear_writes)
            self.client.delivery = recovery.confirmations
            if not ledger.keeps_bytes:
                # at_most_once keeps only the start of a message in progress (re-sent whole after an
                # outage: the old upstream never had all of it); at_least_once's ledger keeps more.
                self.client.retain_limit = config.buffer_bytes
                self.client.recent = bytearray()
        if self.resume is not None:
            self.resume.attach_client(self.client)
        self._pair(self._new_upstream_leg(upstream_transport, upstream_flow))
        self.metrics.session_opened(self)
        self.client.schedule_ping()
        self.upstream.schedule_ping()

    def _new_upstream_leg(self, transport: asyncio.Transport, flow: WriteFlow) -> Leg:
        return Leg(
            LegName.UPSTREAM,
            self,
            transport,
            flow,
            self.upstream_config,
            self.client_config.close_timeout,
            scanner_limits=self.client_config,
        )

    def _pair(self, upstream: Leg) -> None:
        """Make ``upstream`` the session's upstream leg and connect the data paths both ways."""
        self.upstream = upstream
        upstream.other = self.client
        self.client.other = upstream
        self.client.out = upstream.transport
        # A resumable session's app messages also go into the replay log (the tap in front of the client).
        upstream.out = self.client.sender if self.resume is None else self.resume.tap
        if self.recovery is not None:
            upstream.pong_listener = self.recovery.confirmations

    def _send_confirmation(self, payload: bytes) -> None:
        self.upstream.send_ping(payload)

    def _hear_writes(self, confirmations: Confirmations | None) -> None:
        if self.state is SessionState.OPEN:  # during an outage nothing is written upstream
            self.client.delivery = confirmations

    def _relaying(self) -> bool:
        return self.state is SessionState.OPEN

    def _set_state(self, state: SessionState) -> None:
        logger.debug("session %s: %s -> %s", self.session_id, self.state.value, state.value)
        self.state = state

    # --- what the collector reads ---------------------------------------------------------
    def traffic(self) -> tuple[int, int, int, int, int, int]:
        """Per-direction integers for the scrape-time collector."""
        up, down, retired = self.client.scanner, self.upstream.scanner, self.retired
        return (
            up.messages,
            up.payload_bytes,
            up.fragmented_messages,
            down.messages + retired.messages,
            down.payload_bytes + retired.payload_bytes,
            down.fragmented_messages + retired.fragmented_messages,
        )

    def compression(self) -> tuple[int, int, int, int, int, int]:
        """permessage-deflate counts for the collector (:func:`gateway.core.deflate.compression_counts`)."""
        return compression_counts(self.client.inflater, self.client.sender)
    def discarded(self) -> tuple[int, int]:
        """Messages each way that arrived after the session began to close (not relayed)."""
        return self.client.discarded_messages, (
            self.upstream.scanner.discarded_messages + self.retired.discarded_messages
        )

    def replay_state(self) -> tuple[int, int, bool]:
        """Replay buffer use for the collector."""
        hold = self.recovery.hold if self.recovery is not None else None
        if hold is None:
            return 0, 0, False
        return len(hold.buffer.messages), hold.buffer.bytes, True

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
        logger.info("session %s: %s leg: closing with %d: %s", self.session_id, leg.name.value, code, reason)
        if not self._current(leg):
            leg.abort()
            return
        if not self._close(rule_for(event, leg.name), reason, code):
            leg.send_close(Close(code, reason))  # already closing: still answer this leg's peer

    def leg_ping_timeout(self, leg: Leg) -> None:
        """A gateway ping on ``leg`` went unanswered: that peer is presumed dead."""
        self.metrics.ping_timed_out(leg.name.value)
        if leg is self.client and self.resume is not None and self._wait_for_client():
            leg.abort()
            return
        if not self._current(leg):
            leg.abort()
            return
        if leg is self.upstream and self.state is SessionState.OPEN and self._may_reconnect(None):
            leg.send_close(Close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout"))
            leg.abort()  # a frozen or vanished upstream will not answer the close either
            self._upstream_lost(None, timed_out=True)
            return
        self._close(rule_for(Event.PING_TIMEOUT, leg.name))

    def leg_lost(self, leg: Leg) -> None:
        """A transport closed. Mid-session, that is an abnormal close (1006) the other leg hears of."""
        if leg is self.client and self.resume is not None and (self.resume.away or self._wait_for_client()):
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
        return leg is self.upstream and self.state is not SessionState.RECONNECTING

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
            "session %s: client read nothing for %.1fs with its buffer full; closing",
            self.session_id,
            self.client_config.slow_consumer_timeout,
        )
        self._close(rule_for(Event.SLOW_CONSUMER, LegName.CLIENT))

    def ping_answered(self, leg: Leg, seconds: float) -> None:
        """A gateway ping's round trip, for the RTT histogram."""
        self.metrics.ping_answered(leg.name.value, seconds)

    # --- closing by the table ---------------------------------------------------------------
    def close_by_gateway(self, event: Event) -> None:
        """Close both legs on the gateway's own account (``Event.SHUTDOWN`` when draining)."""
        self._close(rule_for(event, LegName.CLIENT))

    def _close(self, rule: CloseRule, reason: str = "", code: int = 0) -> bool:
        """Apply ``rule``: the first close decides initiator and cause; False if one was under way.

        Args:
            rule: the row of the close table.
            reason: the event's reason (the peer's reason for a relayed close).
            code: the peer's code (relayed closes) or the violation's code.
        """
        if self.state is SessionState.RECONNECTING:
            self._end_outage()
        elif self.state is not SessionState.OPEN:
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

    # --- upstream replacement ------------------------------------------------------------------
    def _may_reconnect(self, code: int | None) -> bool:
        recovery = self.recovery
        if self.resume is not None and self.resume.away:
            return False  # no upstream replacement while the client is away: the session ends
        return recovery is not None and recovery.allowed and worth_retrying(code, recovery.config.codes)

    def _upstream_lost(self, code: int | None, timed_out: bool = False) -> None:
        """The upstream is gone with a retryable code (or ``timed_out``: its ping went unanswered):
        hold the client and start reconnecting."""
        recovery = self.recovery
        assert recovery is not None
        now = time.monotonic()
        unconfirmed = self._unconfirmed(recovery)
        verdict = judge_outage(recovery, unconfirmed, self.client.positions, self.upstream.lost_by_reset, timed_out)
        # Closing instead of reconnecting: the window's and the unconfirmed messages are all lost.
        closing_loss = {"unhandled": unconfirmed.window, "unconfirmed": unconfirmed.messages}
        if verdict.code:
            named_complete = verdict.message <= self.client.positions.complete_messages
            closing_loss["unconfirmed"] -= 1 if named_complete else 0
            self._count_lost(recovery, {"refused": 1, **closing_loss})
            logger.info("session %s: closing the client with %d: %s", self.session_id, verdict.code, verdict.reason)
            self._close_client(Event.MESSAGE_REFUSED, verdict.reason, verdict.code)
            return
        if recovery.breaker.record_loss(now):
            self.metrics.breaker_tripped()
            self._count_lost(recovery, closing_loss)
            self._close_client(
                Event.BREAKER_TRIPPED,
                f"circuit breaker: upstream lost {recovery.breaker.losses} times in {recovery.breaker.window:g}s",
            )
            return
        if self.upstream.scanner.in_message:
            self._count_lost(recovery, closing_loss)
            self._close_client(Event.LOST_MID_MESSAGE, "")
            return
        buffer = self._outage_buffer(recovery, unconfirmed)
        if buffer is None:
            return
        client = self.client
        config = recovery.config
        recovery.hold = OutageHold(buffer, self._replay_overflow, self._resume)
        recovery.outage_started = now
        self._set_state(SessionState.RECONNECTING)
        self.upstream.stop_keepalive()
        client.out = recovery.hold
        client.resume_reading()  # it may have been paused for the old upstream's buffer
        if config.notify_loss:
            client.write_text(config.notify_loss.format(session_id=self.session_id))
        resend, lost = recovery.possible_duplicates, recovery.lost_in_outage
        logger.info(
            "session %s: upstream lost (%s); reconnecting; %d messages to re-send, %d possibly lost%s",
            self.session_id,
            "no close frame" if code is None else f"close {code}",
            resend, lost, f", from message #{unconfirmed.assumed_handled + 1}" if resend or lost else "",
        )
        recovery.task = asyncio.get_running_loop().create_task(self._reconnect(recovery))

    def _outage_buffer(self, recovery: Recovery, unconfirmed: Unconfirmed) -> MessageBuffer | None:
        """The replay buffer for an outage starting now (:func:`gateway.reconnect.outage_buffer`);
        None if the session was closed (kept messages overflowing under the ``close`` policy)."""
        client = self.client
        recovery.lost_in_outage = 0
        buffer, lost, overflow = outage_buffer(recovery.config, unconfirmed, client.positions.in_message,
                                               client.recent, client.recent_too_large)
        self._count_lost(recovery, lost)
        if overflow:
            self._close_client(Event.REPLAY_OVERFLOW, overflow)
            return None
        recovery.possible_duplicates = unconfirmed.resend_messages
        recovery.duplicates_total += unconfirmed.resend_messages
        return buffer

    def _unconfirmed(self, recovery: Recovery) -> Unconfirmed:
        """Stop confirming on the lost upstream leg and read what it left unconfirmed."""
        self.client.delivery = None  # nothing is written upstream until the replay
        self.upstream.pong_listener = None
        confirmations = recovery.confirmations
        assert confirmations is not None
        confirmations.stop()
        scanner = self.client.positions
        return confirmations.ledger.lost(scanner.complete_messages, scanner.in_message)

    def _count_lost(self, recovery: Recovery, lost: dict[str, int], overflowed: bool = False) -> None:
        """Count client messages lost at an outage, by reason: metrics, this outage, the session."""
        self.metrics.replay_lost(lost, overflowed, recovery.config.overflow.value)
        total = sum(lost.values())
        recovery.lost_in_outage += total
        recovery.lost_total += total

    async def _reconnect(self, recovery: Recovery) -> None:
        result = await reconnect(
            recovery.reopen,
            recovery.delays,
            recovery.outage_started + recovery.config.give_up_after,
            recovery.subprotocol,
            self.metrics.reconnect_attempt,
        )
        recovery.task = None  # ending on its own: the outage's end must not cancel this task
        if self.state is not SessionState.RECONNECTING:
            if isinstance(result, Reconnected):
                result.connection.transport.abort()
            return
        if isinstance(result, GaveUp):
            self._close_client(result.event, result.reason)
            return
        recovery.ready = result.connection
        hold = recovery.hold
        assert hold is not None
        hold.upstream_ready = True
        if not hold.buffer.skipping:
            self._resume()

    def _replay_overflow(self, reason: str) -> None:
        self._close_client(Event.REPLAY_OVERFLOW, reason)

    def _close_client(self, event: Event, reason: str, code: int = 0) -> None:
        """Reconnection failed or is not possible: close the client as the table says."""
        self._close(rule_for(event, LegName.UPSTREAM), reason, code)
        self.upstream.abort()

    def _resume(self) -> None:
        """A new upstream is connected and the buffer is at a message boundary: replay, then relay."""
        recovery = self.recovery
        assert recovery is not None and recovery.ready is not None and recovery.hold is not None
        connection, buffer = recovery.ready, recovery.hold.buffer
        recovery.ready = recovery.hold = None
        replayed = len(buffer.messages)
        whole = buffer.bytes
        outage = time.monotonic() - recovery.outage_started
        recovery.reconnects += 1
        recovery.outage_total += outage
        self._count_lost(recovery, buffer.dropped, buffer.overflows > 0)
        self.metrics.session_resumed(outage, replayed)
        config = recovery.config
        if config.notify_resume:
            self.client.write_text(
                config.notify_resume.format(session_id=self.session_id, outage_ms=round(outage * 1000),
                                            replayed=replayed, lost=recovery.lost_in_outage)
            )
        retired_leg = self.upstream
        old = retired_leg.scanner
        self.retired.messages += old.messages
        self.retired.payload_bytes += old.payload_bytes
        self.retired.fragmented_messages += old.fragmented_messages
        self.retired.discarded_messages += old.discarded_messages
        protocol = connection.protocol
        upstream = self._new_upstream_leg(connection.transport, protocol.write_flow())
        replay = buffer.drain()
        if replay:
            connection.transport.write(replay)
        self._pair(upstream)
        if retired_leg.closed:
            retired_leg.release()  # else when its connection ends (leg_lost)
        if self.client.recent is not None:
            # The replay may end with the start of a message still in progress: that start is what
            # a next outage must re-send, with the fragments that follow.
            self.client.recent[:] = replay[whole:]
        self.client.recent_too_large = False
        confirmations = recovery.confirmations
        assert confirmations is not None
        confirmations.ledger.resent(replay, whole, self.client.positions.complete_messages, replayed)
        self._set_state(SessionState.OPEN)
        protocol.attach(upstream.scanner.feed, upstream.transport_lost, connection.first_bytes)
        upstream.schedule_ping()
        confirmations.restart()
        logger.info("session %s: upstream back after %.3fs; %d messages replayed, %d lost", self.session_id, outage,
                    replayed, recovery.lost_in_outage)

    def _end_outage(self) -> None:
        """The session closes during an outage: stop reconnecting, count what the buffer lost."""
        recovery = self.recovery
        assert recovery is not None
        if recovery.task is not None:
            recovery.task.cancel()
            recovery.task = None
        if recovery.ready is not None:
            recovery.ready.transport.abort()
            recovery.ready = None
        if recovery.hold is not None:
            buffer = recovery.hold.buffer
            self._count_lost(recovery, buffer.dropped, buffer.overflows > 0)
            recovery.outage_total += time.monotonic() - recovery.outage_started
            recovery.hold = None

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
        recovery = self.recovery
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
                messages_in=client.scanner.messages,
                bytes_in=client.scanner.payload_bytes,
                messages_out=upstream.scanner.messages + self.retired.messages,
                bytes_out=upstream.scanner.payload_bytes + self.retired.payload_bytes,
                discarded=sum(self.discarded()),
                reconnects=recovery.reconnects if recovery else 0,
                outage_seconds=recovery.outage_total if recovery else 0.0,
                lost_messages=recovery.lost_total if recovery else 0,
                possible_duplicates=recovery.duplicates_total if recovery else 0,
                client_resumes=self.resume.resumes if self.resume is not None else 0,
                compressed=client.inflater is not None,
            )
        )
        # Break the reference cycles (session <-> legs <-> scanners, the reopen closure, the
        # backpressure callback) so that reference counting frees this session now.
        self.client.release()
        self.upstream.release()
        self._backpressure = None
        if recovery is not None and recovery.confirmations is not None:
            recovery.confirmations.stop()
        self.recovery = None
        if self.resume is not None:
            self.resume.end()
            self.resume = None
        if not self.done.done():
            self.done.set_result(None)
