"""One side of a session: its transport, the scanner of what its peer sends, keepalive and closing.

A :class:`Leg` is the :class:`~gateway.core.sink.ScannerSink` of the
frames its peer sends: data goes out through ``out`` (the other leg's
transport, or the replay hold during an upstream outage), control frames are
answered here, and closes and violations are reported to the session through
the :class:`LegListener` interface. Its closing handshake is a
:class:`~gateway.core.closing.ClosingHandshake`: the leg writes the frames,
and closes TCP when the handshake says so, or aborts at ``close_timeout``.

Because the scanner ends every write on a frame boundary, a control frame
(pong, ping, close) can always be written at once: nothing waits for the end
of a frame. Nothing is written to a peer after the gateway's close on its leg.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Iterable
from typing import Final, Protocol

from gateway.core.closerules import LegName
from gateway.core.closing import Close, ClosingHandshake, LegState, Role
from gateway.core.codec import Opcode, build_frame
from gateway.core.compression import DeflateAgreement
from gateway.core.config import LegConfig
from gateway.core.counts import DirectionCounts
from gateway.core.deflate import Deflater
from gateway.core.inflate import Inflater
from gateway.core.scanner import FrameScanner
from gateway.core.sink import MessagePositions, ScannerSink
from gateway.delivery import Confirmations
from gateway.flow import WriteFlow
from gateway.keepalive import wheel
from gateway.masking import FAST_MASK

__all__ = ["DROP", "DataOut", "Leg", "LegListener"]

_PING_PAYLOAD: Final = struct.Struct("!Q")


class DataOut(Protocol):
    """Where a leg's forwarded data goes: a transport, or the replay hold during an outage."""

    def write(self, data: bytes) -> None:
        """Write bytes of whole frames."""

    def writelines(self, parts: Iterable[bytes]) -> None:
        """Write a re-headed frame (header, payload)."""

    def get_write_buffer_size(self) -> int:
        """Bytes buffered and not yet sent (0: nothing for backpressure to do)."""


class PongListener(Protocol):
    """Gets the pongs that answer no keepalive ping (the gateway's confirmation pings)."""

    def pong(self, payload: bytes) -> None:
        """A pong arrived with ``payload``."""


class TextLog(Protocol):
    """Where a resumable client leg also records the gateway's own text messages (opt-in notices)."""

    def append(self, data: bytes) -> None:
        """Frames written to the client."""


class _Drop:
    """The data destination after the other leg's close: nothing goes there (the scanners discard)."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        return None

    def writelines(self, parts: Iterable[bytes]) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


DROP: Final = _Drop()


class LegListener(Protocol):
    """What a leg tells its session."""

    def leg_closed(self, leg: Leg, close: Close) -> None:
        """The peer sent a valid close frame."""

    def leg_failed(self, leg: Leg, code: int, reason: str) -> None:
        """The peer broke the protocol (1002, 1007) or a size limit (1009)."""

    def leg_ping_timeout(self, leg: Leg) -> None:
        """A gateway ping went unanswered."""

    def leg_lost(self, leg: Leg) -> None:
        """The TCP connection is gone."""

    def leg_backlogged(self, source: Leg, destination: Leg) -> None:
        """A write left ``destination`` over its high-water mark: stop reading ``source``."""

    def ping_answered(self, leg: Leg, seconds: float) -> None:
        """A gateway ping's pong came back after ``seconds``."""


class _DetachedListener:
    """The listener of a finished leg: the session is over and hears nothing more."""

    __slots__ = ()

    def leg_closed(self, leg: Leg, close: Close) -> None:
        return None

    def leg_failed(self, leg: Leg, code: int, reason: str) -> None:
        return None

    def leg_ping_timeout(self, leg: Leg) -> None:
        return None

    def leg_lost(self, leg: Leg) -> None:
        return None

    def leg_backlogged(self, source: Leg, destination: Leg) -> None:
        return None

    def ping_answered(self, leg: Leg, seconds: float) -> None:
        return None


_DETACHED_LISTENER: Final = _DetachedListener()


class Leg:
    """One side of a session.

    Args:
        name: which leg.
        listener: the session.
        transport: the TCP transport to this leg's peer.
        flow: write-side flow control of that transport.
        config: this leg's settings.
        close_timeout: seconds a closing handshake (or the TCP close after it) may take.
        scanner_limits: the other leg's settings: its limits apply to what this peer sends.
        from_peer: the session's counts of the direction this peer sends (its scanner and inflater
            write them); to_peer: of the direction towards this peer (its deflater writes them).
            The session's own objects, so a leg that replaces another counts on where it left off.
        compression: the client leg's permessage-deflate agreement, if one was made: this peer's
            compressed messages are inflated before they go on, and data for it is deflated.
    """

    __slots__ = (
        "_close_deadline",
        "_ping_counter",
        "_ping_payload",
        "_ping_sent",
        "_ping_slot",
        "_pong_deadline",
        "close_timeout",
        "config",
        "delivery",
        "failed",
        "flow",
        "handshake",
        "inflater",
        "listener",
        "lost_by_reset",
        "masked",
        "name",
        "other",
        "out",
        "pong_listener",
        "positions",
        "reading_paused",
        "recent",
        "recent_too_large",
        "retain_limit",
        "scanner",
        "sender",
        "text_log",
        "transport",
    )

    def __init__(
        self,
        name: LegName,
        listener: LegListener,
        transport: asyncio.Transport,
        flow: WriteFlow,
        config: LegConfig,
        close_timeout: float,
        scanner_limits: LegConfig,
        from_peer: DirectionCounts,
        to_peer: DirectionCounts,
        compression: DeflateAgreement | None = None,
    ) -> None:
        self.name = name
        self.listener = listener
        self.transport = transport
        self.flow = flow
        self.config = config
        self.close_timeout = close_timeout
        self.masked = name is LegName.UPSTREAM
        """Frames the gateway writes to this peer must be masked (the gateway is the client here)."""
        self.handshake = ClosingHandshake(Role.CLIENT if self.masked else Role.SERVER)
        # Frames from this peer go to the other leg: the other leg's limits apply to them.
        sink: ScannerSink = self
        self.inflater: Inflater | None = None
        """Client leg with compression agreed: inflates this peer's compressed messages."""
        if compression is not None:
            sink = self.inflater = Inflater(self, compression, scanner_limits.max_message_size,
                                            scanner_limits.max_frame_size, FAST_MASK, from_peer)
        self.scanner = FrameScanner(
            sink,
            expect_masked=not self.masked,
            max_message_size=scanner_limits.max_message_size,
            max_frame_size=scanner_limits.max_frame_size,
            compressed=compression is not None,
            counts=from_peer,
        )
        self.positions: MessagePositions = self.scanner
        """Message positions of the stream as forwarded (the inflater's, where inflating may wait)."""
        if self.inflater is not None:
            self.inflater.scanner = self.scanner
            self.inflater.paused = self._reading_is_paused
            self.positions = self.inflater
        self.sender: DataOut = transport if compression is None else Deflater(transport, compression,
                                                                              config.max_frame_size, to_peer)
        """Where the other leg writes data for this peer: the transport, or the deflater in front of it."""
        self.other: Leg = self
        self.out: DataOut = DROP
        """Where this peer's data goes; the session points it at the other leg."""
        self.failed = False
        """A violation by this peer was reported (later ones only end the reading)."""
        self._ping_slot = 0
        """The keepalive wheel's slot this leg waits in for its next ping (0: none; gateway.keepalive)."""
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._ping_payload = b""
        self._ping_sent = 0.0
        self._ping_counter = 0
        self._close_deadline: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.lost_by_reset = False
        """The TCP connection ended with a reset (or a failed write), not an orderly close."""
        self.recent: bytearray | None = None
        """Client leg with reconnection: bytes forwarded since the last message boundary, kept only
        while a message is incomplete so an outage can re-send it whole (None: not kept)."""
        self.recent_too_large = False
        """The message in progress outgrew the retention limit; reset at the next message boundary."""
        self.retain_limit = 0
        self.delivery: Confirmations | None = None
        """Client leg, while relaying to an upstream with reconnection on: told of every write upstream."""
        self.pong_listener: PongListener | None = None
        """Gets the pongs that answer no keepalive ping (confirmation pings: the upstream leg's, or a
        resumable client's)."""
        self.text_log: TextLog | None = None
        """Resumable client leg: the replay log, which counts the gateway's notices as messages too."""
        transport.set_write_buffer_limits(high=config.max_buffered, low=config.max_buffered // 4)

    # --- scanner sink: what this leg's peer sends -----------------------------------------
    def forward(self, data: bytes) -> None:
        """Write whole data frames from this leg's peer to the other leg."""
        recent = self.recent
        # Nothing to do for the common case: no message in progress and nothing kept.
        if recent is not None and (recent or self.recent_too_large or self.positions.in_message):
            self._retain(data, b"")
        out = self.out
        # Read before writing: a write into the outage hold may resume the session (and re-attach
        # delivery) inside it, and those bytes went to the hold, not upstream.
        delivery = self.delivery
        out.write(data)
        if delivery is not None:
            delivery.wrote(data)
        # On loopback most writes complete at once: one C call decides the common case.
        if out.get_write_buffer_size() and self.other.flow.is_paused() and not self.reading_paused:
            self.listener.leg_backlogged(self, self.other)

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        """Write one re-headed frame (a fragment of the peer's frame) to the other leg."""
        if self.recent is not None:
            self._retain(header, payload)
        out = self.out
        delivery = self.delivery  # before writing: see forward()
        out.writelines((header, payload))
        if delivery is not None:
            delivery.wrote(header, payload)
        if out.get_write_buffer_size() and self.other.flow.is_paused() and not self.reading_paused:
            self.listener.leg_backlogged(self, self.other)

    def _retain(self, data: bytes, more: bytes) -> None:
        """Keep the start of an incomplete client message (``data`` then ``more``) so an outage
        can re-send it whole."""
        recent = self.recent
        assert recent is not None
        if not self.positions.in_message:
            recent.clear()
            self.recent_too_large = False
        elif not self.recent_too_large:
            if len(recent) + len(data) + len(more) <= self.retain_limit:
                recent += data
                if more:
                    recent += more
            else:
                # Too large to re-send whole: an outage during this message drops it (counted).
                recent.clear()
                self.recent_too_large = True

    def on_ping(self, payload: bytes) -> None:
        """Answer the peer's ping at the gateway (the other leg never sees it)."""
        if self.handshake.can_send_data:
            self.transport.write(build_frame(Opcode.PONG, payload, masked=self.masked))

    def on_pong(self, payload: bytes) -> None:
        """Match a pong to the outstanding gateway ping and record the round trip."""
        if self._pong_deadline is None or payload != self._ping_payload:
            if self.pong_listener is not None:
                self.pong_listener.pong(payload)
            return
        self._pong_deadline.cancel()
        self._pong_deadline = None
        self.listener.ping_answered(self, time.monotonic() - self._ping_sent)
        self.schedule_ping()

    def on_close(self, code: int, reason: str) -> None:
        """The peer's close frame: the session decides what goes where, then TCP may close."""
        close = Close(code, reason)
        self.handshake.receive(close)
        self.stop_keepalive()
        self.listener.leg_closed(self, close)
        self._settle()

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        """The peer broke a rule; ``final`` when nothing more can be read from it."""
        if final:
            self.handshake.peer_broke_off()
        if not self.failed and self.handshake.sent is None:
            self.failed = True
            self.listener.leg_failed(self, code, reason)
        self._settle()

    # --- writing to this leg's peer ---------------------------------------------------------
    def send_ping(self, payload: bytes) -> None:
        """Send the peer a ping of the gateway's own (keepalive or confirmation), if data may still go."""
        if self.handshake.can_send_data:
            self.transport.write(build_frame(Opcode.PING, payload, masked=self.masked))

    def write_text(self, text: str) -> None:
        """Send the peer a text message of the gateway's own (opt-in notices), if data may still go."""
        if self.handshake.can_send_data:
            frame = build_frame(Opcode.TEXT, text.encode("utf-8"), masked=self.masked)
            self.transport.write(frame)
            if self.text_log is not None:
                self.text_log.append(frame)

    def continue_numbering(self, old: Leg) -> None:
        """This client leg replaces ``old`` (a resume, docs/resume.md): its forwarded stream goes on
        with ``old``'s message numbers. The scanner's numbers are the session's counts already (both
        legs share them); an inflater counts the messages it handed on, so it starts where ``old``'s
        forwarded stream stood."""
        if self.inflater is not None:
            self.inflater.complete_messages = old.positions.complete_messages

    def send_close(self, close: Close) -> None:
        """Start (or answer) the closing handshake on this leg, then bound how long it may take."""
        if not self.handshake.send(close):
            return
        self.other.out = DROP  # RFC 6455 5.5.1: no data frame to this peer after our close
        self.transport.write(build_frame(Opcode.CLOSE, close.payload(), masked=self.masked))
        self.stop_keepalive()
        self.resume_reading()  # the peer's close reply must be read, even if backpressure paused us
        if self._close_deadline is None:
            self._close_deadline = asyncio.get_running_loop().call_later(self.close_timeout, self.abort)
        self._settle()

    def _settle(self) -> None:
        """Close TCP once the handshake says so (what is buffered is written first)."""
        if self.handshake.should_close_transport and not self.transport.is_closing():
            self.transport.close()
            if self._close_deadline is None:
                self._close_deadline = asyncio.get_running_loop().call_later(self.close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the connection now (a peer that does not finish its close in time)."""
        self.scanner.stop()
        self.transport.abort()

    # --- keepalive --------------------------------------------------------------------------
    def schedule_ping(self) -> None:
        """Arm the next gateway ping, jittered so pings of many sessions spread out."""
        interval = self.config.ping_interval
        if not interval or not self.handshake.can_send_data:
            return
        delay = interval - random.uniform(0.0, self.config.ping_jitter)  # noqa: S311 - not crypto
        if self._ping_slot:
            wheel().discard(self, self._ping_slot)
        self._ping_slot = wheel().add(self, delay)

    def keepalive_due(self) -> None:
        """The keepalive wheel's call: this leg's ping is due."""
        self._ping_slot = 0
        self._send_ping()

    def _send_ping(self) -> None:
        if not self.handshake.can_send_data:
            return
        self._ping_counter += 1
        self._ping_payload = _PING_PAYLOAD.pack(self._ping_counter)
        self._ping_sent = time.monotonic()
        self.send_ping(self._ping_payload)
        self._pong_deadline = asyncio.get_running_loop().call_later(self.config.ping_timeout, self._ping_timeout)

    def _ping_timeout(self) -> None:
        self._pong_deadline = None
        if self.reading_paused:
            # We stopped reading this peer ourselves (backpressure): its pong may be
            # waiting unread. That is not a dead peer; try again next interval.
            self.schedule_ping()
            return
        self.listener.leg_ping_timeout(self)

    def stop_keepalive(self) -> None:
        """Cancel the ping timers (closing or closed)."""
        if self._ping_slot:
            wheel().discard(self, self._ping_slot)
            self._ping_slot = 0
        if self._pong_deadline is not None:
            self._pong_deadline.cancel()
            self._pong_deadline = None

    # --- transport events ----------------------------------------------------------------------
    def transport_lost(self, reset: bool = False) -> None:
        """The TCP connection is gone (``reset``: not by an orderly close)."""
        if self.handshake.state is LegState.CLOSED:
            return
        self.lost_by_reset = reset
        self.handshake.transport_lost()
        self.scanner.stop()
        self.stop_keepalive()
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None
        self.listener.leg_lost(self)

    @property
    def closed(self) -> bool:
        """True once the TCP connection is gone."""
        return self.handshake.state is LegState.CLOSED

    def pause_reading(self) -> None:
        """Stop reading this peer (the other leg's buffer is full)."""
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read this peer again (first inflating what waited, which may fill the other leg again)."""
        if self.reading_paused:
            self.reading_paused = False
            if self.closed:
                return
            inflater = self.inflater
            if inflater is not None and inflater.waiting:
                inflater.resume()
                if self.reading_paused:
                    return
            self.transport.resume_reading()

    def _reading_is_paused(self) -> bool:
        return self.reading_paused

    def discard_data(self) -> None:
        """The session is closing: this peer's data goes nowhere now (its control frames are still read)."""
        self.scanner.discard_data()
        if self.inflater is not None:
            self.inflater.discard_data()

    def release(self) -> None:
        """The session is over: drop this leg's links to the session, the other leg and the scanner's
        sink. Those links are reference cycles; without them reference counting frees a finished
        session at once, instead of leaving it to a garbage-collector pass over every live session."""
        self.stop_keepalive()
        if self._close_deadline is not None:
            self._close_deadline.cancel()
            self._close_deadline = None
        self.scanner.detach()
        if self.inflater is not None:
            self.inflater.release()
        self.listener = _DETACHED_LISTENER
        self.out = DROP
        self.delivery = self.pong_listener = self.text_log = None
        del self.other

    def closing_code(self) -> int:
        """The code that ended this leg, for metrics and logs (1006 if no close frame)."""
        return self.handshake.code
