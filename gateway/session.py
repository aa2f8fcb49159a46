"""One client session: a state machine that owns both legs and relays frames between them.

A :class:`Session` is created after both handshakes succeeded. Each
:class:`Leg` reads its peer's bytes through a :class:`~gateway.frames.FrameScanner`
whose data spans go straight to the other leg's transport, and answers or
reports the control frames. The session decides how a close on one leg is
carried to the other, so that the client always gets a real close frame
with a meaningful code, and writes one log line and one close count per
leg when both legs are gone.

States (changed only in :meth:`Session._set_state`, each change logged at
debug): ``OPEN`` relays; ``RECONNECTING`` while the upstream leg is being
replaced (:mod:`gateway.reconnect`) and the client's messages are buffered;
``CLOSING`` after the first close, while the legs finish their closing
handshakes; ``CLOSED`` when both transports are gone.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.closecodes import Cause, CloseCode, Initiator, cause_for_code, wire_code
from gateway.config import ClientConfig, LegConfig, UpstreamConfig
from gateway.frames import FrameScanner, Opcode, build_close_payload, build_frame
from gateway.metrics import GatewayMetrics
from gateway.replay import MessageBuffer
from gateway.sessionlog import SessionRecord, log_session
from gateway.targets import Target
from gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from gateway.reconnect import UpstreamRecovery

__all__ = ["Leg", "Session", "SessionState", "WriteFlow"]

logger = logging.getLogger("gateway.session")

_PING_PAYLOAD: Final = struct.Struct("!Q")
CLIENT: Final = "client"
UPSTREAM: Final = "upstream"


class SessionState(enum.Enum):
    """Lifecycle of a session after both handshakes."""

    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSING = "closing"
    CLOSED = "closed"


class WriteFlow:
    """Write-side flow control of one transport, whoever owns its protocol.

    Args:
        is_paused: tells whether the transport's buffer is over its high-water mark.
        wait_resumed: waits until it is below the low-water mark again.
    """

    __slots__ = ("is_paused", "wait_resumed")

    def __init__(self, is_paused: Callable[[], bool], wait_resumed: Callable[[], Awaitable[None]]) -> None:
        self.is_paused = is_paused
        self.wait_resumed = wait_resumed


@dataclass(slots=True)
class _CloseState:
    """What happened to one leg's closing handshake."""

    sent_code: int | None = None
    sent_reason: str = ""
    received_code: int | None = None
    received_reason: str = ""
    first_code: int | None = None
    """The code of the close that ended this leg (ours or the peer's, whichever came first)."""
    lost: bool = False


class Leg:
    """One side of a session: its transport, the scanner of what its peer sends, keepalive, close."""

    __slots__ = (
        "_close_deadline",
        "_ping_counter",
        "_ping_handle",
        "_ping_payload",
        "_ping_sent",
        "_pong_deadline",
        "close",
        "config",
        "flow",
        "holding",
        "masked",
        "name",
        "other",
        "pending",
        "reading_paused",
        "recent",
        "recent_too_large",
        "scanner",
        "session",
        "transport",
    )

    def __init__(
        self,
        name: str,
        session: Session,
        transport: asyncio.Transport,
        flow: WriteFlow,
        config: LegConfig,
        masked: bool,
    ) -> None:
        self.name = name
        self.session = session
        self.transport = transport
        self.flow = flow
        self.config = config
        self.masked = masked
        """True when frames the gateway writes to this peer must be masked (the upstream leg)."""
        self.other: Leg = self
        self.scanner: FrameScanner
        self.pending: list[bytes] = []
        """Control frames waiting until the frame being forwarded to this peer ends."""
        self.close = _CloseState()
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._ping_payload = b""
        self._ping_sent = 0.0
        self._ping_counter = 0
        self._close_deadline: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.holding = False
        """Client leg during an upstream outage: data goes to the replay buffer, not upstream."""
        self.recent: bytearray | None = None
        """Client leg with reconnection: bytes forwarded since the last message boundary, kept only
        while a message is incomplete so an outage can re-send it whole (None: not kept)."""
        self.recent_too_large = False
        """The message in progress outgrew the retention limit; reset at the next message boundary."""
        transport.set_write_buffer_limits(high=config.max_buffered, low=config.max_buffered // 4)

    # --- scanner sink: called for bytes read from this leg's peer -------------------
    def forward(self, data: bytes, at_boundary: bool) -> None:
        """Write data-frame bytes from this leg's peer to the other leg's peer."""
        if self.holding:
            recovery = self.session.recovery
            assert recovery is not None
            recovery.hold(data)
            return
        recent = self.recent
        if recent is not None:
            if at_boundary and not self.scanner.in_message:
                if recent:
                    recent.clear()
                self.recent_too_large = False
            elif not self.recent_too_large:
                if len(recent) + len(data) <= self.session.retain_limit:
                    recent += data
                else:
                    # Too large to re-send whole: an outage during this message drops it (counted).
                    recent.clear()
                    self.recent_too_large = True
        other = self.other
        transport = other.transport
        transport.write(data)
        if at_boundary and other.pending:
            other.flush_pending()
        # On loopback most writes complete at once: one C call decides the common case.
        if transport.get_write_buffer_size() and other.flow.is_paused() and not self.reading_paused:
            self.session.hold_reading(self, other)

    def on_ping(self, payload: bytes) -> None:
        """Answer the peer's ping at the gateway (the other leg never sees it)."""
        self.send_control(Opcode.PONG, payload)

    def on_pong(self, payload: bytes) -> None:
        """Match a pong to the outstanding gateway ping and record the round trip."""
        if self._pong_deadline is None or payload != self._ping_payload:
            return
        self._pong_deadline.cancel()
        self._pong_deadline = None
        self.session.metrics.ping_answered(self.name, time.monotonic() - self._ping_sent)
        self.schedule_ping()

    def on_close(self, code: int, reason: str) -> None:
        """The peer sent a close frame."""
        self.session.leg_close_received(self, code, reason)

    def on_violation(self, code: int, reason: str) -> None:
        """The peer broke the protocol or a size limit."""
        self.session.leg_violation(self, code, reason)

    # --- writing to this leg's peer ---------------------------------------------------
    def send_control(self, opcode: int, payload: bytes) -> None:
        """Write a control frame to this peer, after the frame being forwarded to it, if any."""
        if self.close.lost:
            return
        frame = build_frame(opcode, payload, masked=self.masked)
        if self.other.scanner.mid_frame:
            self.pending.append(frame)
        else:
            self.transport.write(frame)

    def flush_pending(self) -> None:
        """Write the control frames held back by a forwarded frame."""
        frames, self.pending = self.pending, []
        self.transport.write(b"".join(frames))

    def send_close(self, code: int, reason: str) -> None:
        """Start (or answer) the closing handshake on this leg, then bound how long it may take."""
        state = self.close
        if state.sent_code is not None or state.lost:
            return
        state.sent_code = code
        state.sent_reason = reason
        if state.first_code is None:
            state.first_code = code
        payload = b"" if code == CloseCode.NO_STATUS else build_close_payload(code, reason)
        self.send_control(Opcode.CLOSE, payload)
        self.stop_keepalive()
        if state.received_code is not None and self.name == CLIENT:
            # Both close frames exchanged: the server side closes TCP first (RFC 6455 7.1.1).
            self.finish_transport()
        else:
            loop = asyncio.get_running_loop()
            self._close_deadline = loop.call_later(self.session.close_timeout, self.abort)

    def finish_transport(self) -> None:
        """Close the transport once what is buffered has been written."""
        if self.pending and not self.close.lost:
            self.flush_pending()
        self.transport.close()
        if self._close_deadline is None and not self.close.lost:
            loop = asyncio.get_running_loop()
            self._close_deadline = loop.call_later(self.session.close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the connection now (a peer that does not finish its close in time)."""
        self.transport.abort()

    # --- keepalive --------------------------------------------------------------------
    def schedule_ping(self) -> None:
        """Arm the next gateway ping, jittered so pings of many sessions spread out."""
        interval = self.config.ping_interval
        if not interval or self.close.sent_code is not None or self.close.lost:
            return
        delay = interval - random.uniform(0.0, self.config.ping_jitter)  # noqa: S311 - not crypto
        self._ping_handle = asyncio.get_running_loop().call_later(delay, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_handle = None
        if self.close.sent_code is not None or self.close.lost:
            return
        self._ping_counter += 1
        self._ping_payload = _PING_PAYLOAD.pack(self._ping_counter)
        self._ping_sent = time.monotonic()
        self.send_control(Opcode.PING, self._ping_payload)
        self._pong_deadline = asyncio.get_running_loop().call_later(self.config.ping_timeout, self._ping_timeout)

    def _ping_timeout(self) -> None:
        self._pong_deadline = None
        if self.reading_paused:
            # We stopped reading this peer ourselves (backpressure): its pong may be
            # waiting unread. That is not a dead peer; try again next interval.
            self.schedule_ping()
            return
        self.session.metrics.ping_timed_out(self.name)
        self.session.leg_ping_timeout(self)

    def stop_keepalive(self) -> None:
        """Cancel the ping timers (closing or closed)."""
        for handle in (self._ping_handle, self._pong_deadline):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_deadline = None

    def transport_lost(self) -> None:
        """The TCP connection is gone."""
        if self.close.lost:
            return
        self.close.lost = True
        self.stop_keepalive()
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None
        self.pending.clear()
        self.session.leg_lost(self)

    def pause_reading(self) -> None:
        """Stop reading this peer (the other leg's buffer is full)."""
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read this peer again."""
        if self.reading_paused:
            self.reading_paused = False
            if not self.close.lost:
                self.transport.resume_reading()

    def closing_code(self) -> int:
        """The code that ended this leg, for metrics and logs (1006 if no close frame)."""
        first = self.close.first_code
        return int(CloseCode.ABNORMAL) if first is None else first


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
        "_hold_tasks",
        "cause",
        "client",
        "client_config",
        "client_ip",
        "close_timeout",
        "done",
        "initiator",
        "metrics",
        "path",
        "recovery",
        "retain_limit",
        "retired_traffic",
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
        self.close_timeout = client_config.close_timeout
        self.state = SessionState.OPEN
        self.initiator: Initiator | None = None
        self.cause: Cause | None = None
        self.started = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client: Leg
        self.upstream: Leg
        self._hold_tasks: set[asyncio.Task[None]] | None = None
        """Backpressure waits under way; created on first use (most sessions never need one)."""
        self.recovery: UpstreamRecovery | None = None
        """Set when reconnection is enabled: replaces the upstream leg instead of closing the client."""
        self.retain_limit = 0
        """Most bytes of an incomplete client message kept for re-sending after an outage."""
        self.target: Target | None = None
        """The upstream target this session is on (moves on reconnect)."""
        self.retired_traffic = (0, 0, 0)
        """Upstream-to-client counts of upstream legs replaced by reconnection."""

    def attach(
        self,
        client_transport: asyncio.Transport,
        client_flow: WriteFlow,
        upstream_transport: asyncio.Transport,
        upstream_flow: WriteFlow,
    ) -> None:
        """Bind both transports, start keepalive and count the session as open."""
        client = Leg(CLIENT, self, client_transport, client_flow, self.client_config, masked=False)
        # Client frames go to the upstream: the upstream's limits apply to them.
        client.scanner = FrameScanner(
            client,
            expect_masked=True,
            max_message_size=self.upstream_config.max_message_size,
            max_frame_size=self.upstream_config.max_frame_size,
        )
        self.client = client
        if self.recovery is not None:
            self.retain_limit = self.recovery.config.buffer_bytes
            client.recent = bytearray()
        upstream = self._new_upstream_leg(upstream_transport, upstream_flow)
        self.metrics.session_opened(self)
        client.schedule_ping()
        upstream.schedule_ping()

    def _new_upstream_leg(self, transport: asyncio.Transport, flow: WriteFlow) -> Leg:
        """Create the upstream leg (at start and after a reconnect) and pair it with the client leg."""
        upstream = Leg(UPSTREAM, self, transport, flow, self.upstream_config, masked=True)
        upstream.scanner = FrameScanner(
            upstream,
            expect_masked=False,
            max_message_size=self.client_config.max_message_size,
            max_frame_size=self.client_config.max_frame_size,
        )
        upstream.other = self.client
        self.client.other = upstream
        self.upstream = upstream
        return upstream

    def traffic(self) -> tuple[int, int, int, int, int, int]:
        """Per-direction integers for the scrape-time collector."""
        up, down = self.client.scanner, self.upstream.scanner
        retired = self.retired_traffic
        return (
            up.messages,
            up.payload_bytes,
            up.fragmented_messages,
            down.messages + retired[0],
            down.payload_bytes + retired[1],
            down.fragmented_messages + retired[2],
        )

    def replay_state(self) -> tuple[int, int, bool]:
        """Replay buffer use for the collector."""
        return self.recovery.state() if self.recovery is not None else (0, 0, False)

    # --- upstream replacement (gateway.reconnect drives these) ------------------------
    def enter_outage(self, buffer: MessageBuffer) -> None:
        """The upstream leg is gone and being replaced: the client's data goes to ``buffer``."""
        self._set_state(SessionState.RECONNECTING)
        self.upstream.stop_keepalive()
        self.upstream.pending.clear()
        self.client.holding = True
        self.client.resume_reading()  # it may have been paused for the old upstream's buffer

    def resume(self, connection: UpstreamConnection, replay: bytes) -> None:
        """A new upstream is connected: replay first, then relay live again."""
        old = self.upstream.scanner
        retired = self.retired_traffic
        self.retired_traffic = (
            retired[0] + old.messages,
            retired[1] + old.payload_bytes,
            retired[2] + old.fragmented_messages,
        )
        protocol = connection.protocol
        upstream = self._new_upstream_leg(connection.transport, WriteFlow(protocol.is_paused, protocol.wait_resumed))
        if replay:
            connection.transport.write(replay)
        self.client.holding = False
        self.client.recent = bytearray() if self.retain_limit else None
        self.client.recent_too_large = False
        self._set_state(SessionState.OPEN)
        protocol.attach(upstream.scanner.feed, upstream.transport_lost, connection.first_bytes)
        upstream.schedule_ping()

    def tell_client(self, text: str) -> None:
        """Send the client a text message of the gateway's own (opt-in outage notices).

        Only called between messages: an outage starts only when nothing is being relayed
        to the client, and a resume before the new upstream sends anything.
        """
        if not self.client.close.lost:
            self.client.transport.write(build_frame(Opcode.TEXT, text.encode("utf-8"), masked=False))

    def close_client_after_loss(self, code: int, reason: str, cause: Cause) -> None:
        """Reconnection failed or is not possible: close the client with ``code``."""
        if self.state not in (SessionState.OPEN, SessionState.RECONNECTING):
            return
        self.initiator = Initiator.GATEWAY if cause is not Cause.ABNORMAL else Initiator.UPSTREAM
        self.cause = cause
        if self.recovery is not None:
            self.recovery.cancel()
        self.client.holding = False
        self._set_state(SessionState.CLOSING)
        self.client.send_close(code, reason)
        self.upstream.abort()

    def _set_state(self, state: SessionState) -> None:
        logger.debug("session %s: %s -> %s", self.session_id, self.state.value, state.value)
        self.state = state

    def _begin_close(self, initiator: Initiator, cause: Cause) -> bool:
        """Record who started the close and why; False if a close was already under way."""
        if self.state is SessionState.RECONNECTING:
            assert self.recovery is not None
            self.recovery.cancel()
            self.client.holding = False
        elif self.state is not SessionState.OPEN:
            return False
        self.initiator = initiator
        self.cause = cause
        self._set_state(SessionState.CLOSING)
        return True

    # --- events from the legs ---------------------------------------------------------------
    def leg_close_received(self, leg: Leg, code: int, reason: str) -> None:
        """A peer's close frame: echo it on that leg and carry it to the other."""
        if leg is not self.client and leg is not self.upstream:
            return  # an upstream leg already replaced by reconnection
        state = leg.close
        state.received_code = code
        state.received_reason = reason
        if state.first_code is None:
            state.first_code = code
        initiator = Initiator.CLIENT if leg.name == CLIENT else Initiator.UPSTREAM
        if leg is self.upstream and self.state is not SessionState.CLOSING and self._recoverable(code):
            leg.send_close(wire_code(code), reason)
            if self.state is SessionState.OPEN:
                assert self.recovery is not None
                self.recovery.begin(code)
            return
        if self._begin_close(initiator, cause_for_code(code)):
            leg.other.send_close(wire_code(code), reason)
        # Echo the code (RFC 6455 5.5.1); aiohttp would answer 1000 instead.
        leg.send_close(code if code == CloseCode.NO_STATUS else wire_code(code), reason)
        if leg.name == CLIENT:
            leg.finish_transport()

    def _recoverable(self, code: int | None) -> bool:
        """Whether an upstream loss with ``code`` is handled by reconnecting (or already is)."""
        if self.state is SessionState.RECONNECTING:
            return True
        return self.recovery is not None and self.state is SessionState.OPEN and self.recovery.should_retry(code)

    def leg_violation(self, leg: Leg, code: int, reason: str) -> None:
        """The peer on ``leg`` sent a malformed frame or an oversized message."""
        if code == CloseCode.MESSAGE_TOO_BIG:
            self.metrics.message_refused(leg.name)
            cause = Cause.MESSAGE_TOO_BIG
        else:
            self.metrics.protocol_error(leg.name)
            cause = Cause.PROTOCOL_ERROR
        logger.info("session %s: %s leg: closing with %d: %s", self.session_id, leg.name, code, reason)
        if not self._begin_close(Initiator.GATEWAY, cause):
            leg.abort()
            return
        leg.send_close(code, reason)
        if leg.name == CLIENT:
            leg.other.send_close(CloseCode.GOING_AWAY, f"client {reason}"[:123])
        elif code == CloseCode.MESSAGE_TOO_BIG:
            leg.other.send_close(CloseCode.GOING_AWAY, f"upstream {reason}"[:123])
        else:
            leg.other.send_close(CloseCode.BAD_GATEWAY, f"upstream protocol error: {reason}"[:123])

    def leg_ping_timeout(self, leg: Leg) -> None:
        """A gateway ping on ``leg`` went unanswered: that peer is presumed dead."""
        if leg is self.upstream and self.state is SessionState.OPEN and self._recoverable(None):
            leg.send_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            leg.abort()  # a frozen or vanished upstream will not answer the close either
            assert self.recovery is not None
            self.recovery.begin(None)
            return
        if not self._begin_close(Initiator.GATEWAY, Cause.PING_TIMEOUT):
            return
        leg.send_close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        if leg.name == CLIENT:
            leg.other.send_close(CloseCode.GOING_AWAY, "client keepalive ping timeout")
        else:
            leg.other.send_close(CloseCode.INTERNAL_ERROR, "upstream keepalive ping timeout")

    def leg_lost(self, leg: Leg) -> None:
        """A transport closed. Mid-session, that is an abnormal close (1006) the other leg hears of."""
        if leg is not self.client and leg is not self.upstream:
            return  # an upstream leg already replaced by reconnection
        if leg is self.upstream and self.state is not SessionState.CLOSING and self._recoverable(None):
            if self.state is SessionState.OPEN:
                assert self.recovery is not None
                self.recovery.begin(None)
            if self.client.close.lost:
                self._finish()
            return
        if self._begin_close(Initiator.CLIENT if leg.name == CLIENT else Initiator.UPSTREAM, Cause.ABNORMAL):
            if leg.name == CLIENT:
                leg.other.send_close(CloseCode.GOING_AWAY, "client connection lost")
            else:
                leg.other.send_close(CloseCode.INTERNAL_ERROR, "upstream closed the connection without a close frame")
        if self.client.close.lost and self.upstream.close.lost:
            self._finish()

    def close_by_gateway(self, cause: Cause, client_code: int, reason: str) -> None:
        """Close both legs on the gateway's own account (shutdown, slow consumer)."""
        if not self._begin_close(Initiator.GATEWAY, cause):
            return
        self.client.send_close(client_code, reason)
        self.upstream.send_close(CloseCode.GOING_AWAY, reason)

    def hold_reading(self, source: Leg, destination: Leg) -> None:
        """Backpressure: stop reading ``source`` until ``destination`` drains.

        A client that stays behind past ``client.slow_consumer_timeout`` is
        closed with 1008 (cause ``slow_consumer``).
        """
        source.pause_reading()
        task = asyncio.get_running_loop().create_task(self._wait_drained(source, destination))
        if self._hold_tasks is None:
            self._hold_tasks = set()
        self._hold_tasks.add(task)
        task.add_done_callback(self._hold_tasks.discard)

    async def _wait_drained(self, source: Leg, destination: Leg) -> None:
        timeout = self.client_config.slow_consumer_timeout if destination.name == CLIENT else None
        try:
            await asyncio.wait_for(destination.flow.wait_resumed(), timeout)
        except TimeoutError:
            logger.info(
                "session %s: client read nothing for %.1fs with its buffer full; closing", self.session_id, timeout
            )
            self.close_by_gateway(
                Cause.SLOW_CONSUMER, CloseCode.POLICY_VIOLATION, "slow consumer: client is not reading"
            )
            return
        except ConnectionError:
            if self.state is SessionState.RECONNECTING:
                source.resume_reading()  # the lost upstream will not drain; the buffer takes over
            return
        source.resume_reading()

    def _finish(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self._set_state(SessionState.CLOSED)
        for task in self._hold_tasks or ():
            task.cancel()
        initiator = self.initiator or Initiator.GATEWAY
        cause = self.cause or Cause.INTERNAL
        legs = [
            (CLIENT, self.client.closing_code(), initiator, cause),
            (UPSTREAM, self.upstream.closing_code(), initiator, cause),
        ]
        self.metrics.session_closed(self, legs)
        up, down = self.client.scanner, self.upstream.scanner
        log_session(
            SessionRecord(
                session_id=self.session_id,
                client_ip=self.client_ip,
                path=self.path,
                client_code=self.client.closing_code(),
                client_reason=self.client.close.received_reason or self.client.close.sent_reason,
                upstream_code=self.upstream.closing_code(),
                upstream_reason=self.upstream.close.received_reason or self.upstream.close.sent_reason,
                initiator=initiator.value,
                cause=cause.value,
                duration=time.monotonic() - self.started,
                messages_in=up.messages,
                bytes_in=up.payload_bytes,
                messages_out=down.messages + self.retired_traffic[0],
                bytes_out=down.payload_bytes + self.retired_traffic[1],
                reconnects=self.recovery.reconnects if self.recovery else 0,
                outage_seconds=self.recovery.outage_total if self.recovery else 0.0,
            )
        )
        if not self.done.done():
            self.done.set_result(None)
