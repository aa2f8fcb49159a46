"""What a :class:`gateway.core.scanner.FrameScanner` delivers to, and what it tells about the stream it forwarded.

:class:`ScannerSink` receives the forwarded bytes and the control events (a leg is one; so is the
client leg's inflater, in front of it). :class:`MessagePositions` is where that stream stands in
messages (the scanner is one, and so is the inflater, whose output can lag behind what the scanner
read). :data:`DETACHED_SINK` is a finished scanner's sink. Pure: no sockets, no event loop.
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["DETACHED_SINK", "MessagePositions", "ScannerSink"]


class ScannerSink(Protocol):
    """Where a :class:`FrameScanner` delivers what it reads."""

    def forward(self, data: bytes) -> None:
        """Write whole data frames, as they arrived, to the other leg."""

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        """Write one re-headed data frame (a fragment of the peer's frame) to the other leg."""

    def on_ping(self, payload: bytes) -> None:
        """A ping arrived; the gateway answers it on the same leg."""

    def on_pong(self, payload: bytes) -> None:
        """A pong arrived (keepalive)."""

    def on_close(self, code: int, reason: str) -> None:
        """A valid close frame arrived (1005 when it had no body); the scanner has stopped."""

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        """The peer broke a rule; ``final`` when nothing more will be read from it."""


class MessagePositions(Protocol):
    """Where the stream forwarded to the destination stands, in messages: what retention, the
    delivery ledger and the loss rules read. A :class:`FrameScanner` is one; so is the client
    leg's inflater, whose output can lag behind what the scanner has read."""

    @property
    def complete_messages(self) -> int:
        """Messages whose last byte has been handed on."""

    @property
    def in_message(self) -> bool:
        """The destination has part of a message but not its end."""

    @property
    def at_boundary(self) -> bool:
        """No message is in progress: every counted message has been handed on whole."""

    @property
    def last_message_size(self) -> int:
        """Payload size of the message in progress, or of the last one."""


class _DetachedSink:
    """The sink of a finished leg's scanner (and of a released inflater): nothing is delivered any more."""

    __slots__ = ()

    def forward(self, data: bytes) -> None:
        return None

    def forward_frame(self, header: bytes, payload: bytes) -> None:
        return None

    def on_ping(self, payload: bytes) -> None:
        return None

    def on_pong(self, payload: bytes) -> None:
        return None

    def on_close(self, code: int, reason: str) -> None:
        return None

    def on_violation(self, code: int, reason: str, final: bool) -> None:
        return None


DETACHED_SINK: Final = _DetachedSink()
