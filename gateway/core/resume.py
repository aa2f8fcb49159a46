"""Client resume (issue 11): the pure parts of resumable sessions, the wire protocol and the buffer.

A resumable client (``clients/js/resumable-websocket.js``, or the Python helper) asks for it in
its subprotocol offer, the one handshake field a browser may set; docs/resume.md has the whole
protocol. This module holds what needs no socket:

* :func:`parse_offer`: the gateway's entries in an offer (taken out before the offer goes to
  the app): a new resumable session, or a resume with its token and how many of the app's
  messages the client has;
* :func:`new_token` and :func:`token_key`: 192-bit tokens, looked up by their SHA-256 (a token
  is never kept, logged or compared byte by byte);
* :func:`hello` and :func:`resumed`: the gateway's one message at the start of each connection of a
  resumable session, which the helper takes out of the stream before the app code sees it;
* :class:`ReplayLog`: the app's messages to the client that the client has not confirmed (by
  answering a ping sent after them), so that a resume can re-send exactly those it lacks.

Pure: no sockets, no event loop.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

import orjson

from gateway.core.codec import read_header

__all__ = ["MARKER", "RESUME_PREFIX", "RESUME_REFUSED", "ReplayLog", "ResumeOffer", "hello", "new_token",
           "parse_offer", "resumed", "token_key"]

MARKER: Final = "ws-gateway.resumable"
"""Offered by a resumable client on every connection. The gateway answers it as the subprotocol
when the app chose none (a browser that offered subprotocols fails a 101 that names none)."""
RESUME_PREFIX: Final = "ws-gateway.resume."
"""``ws-gateway.resume.<token>.<messages received>``: offered by a client that resumes."""
RESUME_REFUSED: Final = 4410
"""The close code of a refused resume (unknown, wrong, reused or expired token; anything else that
prevents it): the helper then fires ``reset`` and connects afresh. 4000 + HTTP 410 Gone."""
TOKEN_BYTES: Final = 24
"""192 random bits per token (the issue asks for at least 128)."""
_RESUME: Final = re.compile(r"ws-gateway\.resume\.([A-Za-z0-9_-]{32})\.(0|[1-9][0-9]{0,15})")


@dataclass(frozen=True, slots=True)
class ResumeOffer:
    """The gateway's part of a client's subprotocol offer."""

    resumable: bool
    """The client can resume (it offered :data:`MARKER`)."""
    token: str | None
    """The token of the session it resumes (None: a new session)."""
    received: int
    """How many of the app's messages it has (a resume only)."""
    malformed: bool
    """It offered a resume entry that does not parse: refused like an unknown token."""
    app_protocols: tuple[str, ...]
    """The offer without the gateway's entries: what the app is offered."""


def parse_offer(protocols: list[str]) -> ResumeOffer:
    """Split a client's subprotocol offer into the gateway's entries and the app's."""
    app: list[str] = []
    resumable = malformed = False
    token: str | None = None
    received = 0
    for protocol in protocols:
        if protocol == MARKER:
            resumable = True
        elif protocol.startswith(RESUME_PREFIX):
            match = _RESUME.fullmatch(protocol)
            if match is None or token is not None:
                malformed = True
            else:
                token, received = match.group(1), int(match.group(2))
        else:
            app.append(protocol)
    if token is not None and not resumable:
        malformed = True
    return ResumeOffer(resumable, token, received, malformed, tuple(app))


def new_token() -> str:
    """A fresh resume token: 192 bits from the OS, 32 URL-safe characters."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_key(token: str) -> bytes:
    """What the gateway keeps of a token: its SHA-256. Lookups go by this key, so a wrong token and
    an unknown one take the same path."""
    return hashlib.sha256(token.encode("ascii")).digest()


def hello(token: str, grace_seconds: float) -> bytes:
    """The first message of a new resumable session (a text payload)."""
    return orjson.dumps({"ws-gateway": "resumable", "token": token, "grace_ms": round(grace_seconds * 1000)})


def resumed(token: str, received: int) -> bytes:
    """The first message after a resume: the next token, and how many client messages reached the app."""
    return orjson.dumps({"ws-gateway": "resumed", "token": token, "received": received})


class ReplayLog:
    """The app's messages to the client since the client last confirmed, as the frames that carried them.

    Writes are whole frames (the relay's rule), appended as they go to the client. A ping sent
    after message N and answered confirms messages 1..N: :meth:`confirm` drops them. A resume
    that says the client has ``received`` messages gets the frames of the messages after it
    (:meth:`frames_after`), the last possibly incomplete (its rest follows live).

    Args:
        limit: the most bytes kept (``resume.buffer_bytes``). Past it everything kept is dropped,
            and until the client confirms the messages dropped a resume is impossible
            (:attr:`resumable` is false); later messages are kept again meanwhile.
    """

    __slots__ = ("_data", "_dropping", "_first", "_lost_through", "_open", "_starts", "confirmed", "limit",
                 "messages")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self._starts: list[int] = []
        """Offset in ``_data`` where each kept message begins (the first is message ``_first``)."""
        self._first = 1
        self._open = False
        """The last message written has not ended yet."""
        self._dropping = False
        """The message in progress lost its start to an overflow: its other frames are not kept."""
        self._lost_through = 0
        """The last message an overflow dropped bytes of."""
        self.messages = 0
        """Messages the app sent the client in this session (complete ones)."""
        self.confirmed = 0
        """Messages the client has confirmed."""

    @property
    def size(self) -> int:
        """Bytes kept."""
        return len(self._data)

    @property
    def resumable(self) -> bool:
        """Every message the client may lack is kept."""
        return self.confirmed >= self._lost_through

    def append(self, data: bytes) -> None:
        """Frames written to the client (whole frames, data only)."""
        pos, end = 0, len(data)
        keep_from = 0
        while pos < end:
            header = read_header(data, pos, end)
            assert header is not None, "writes to the client are whole frames"
            frame_end = pos + header[0] + header[1]
            if not self._open:
                self._starts.append(len(self._data) + pos - keep_from)
                self._open = True
            if data[pos] & 0x80:
                self._open = False
                self.messages += 1
                if self._dropping:
                    self._dropping = False
                    keep_from = frame_end  # the rest of a message whose start was dropped
            pos = frame_end
        if self._dropping:
            return
        self._data += data[keep_from:] if keep_from else data
        if len(self._data) > self.limit:
            self._lost_through = self.messages + (1 if self._open else 0)
            self._dropping = self._open
            self._data.clear()
            self._starts.clear()
            self._first = self._lost_through + 1

    def confirm(self, messages: int) -> None:
        """The client has the first ``messages`` messages (a ping sent after them was answered): forget them."""
        messages = min(messages, self.messages)
        if messages <= self.confirmed:
            return
        self.confirmed = messages
        drop = messages - self._first + 1
        if drop <= 0:
            return
        cut = self._starts[drop] if drop < len(self._starts) else len(self._data)
        del self._data[:cut]
        self._starts = [start - cut for start in self._starts[drop:]]
        self._first = messages + 1

    def frames_after(self, received: int) -> bytes | None:
        """The frames of every message after the first ``received``; None when they are not all kept
        (an overflow dropped some, or the client claims fewer than it confirmed or more than were sent)."""
        if received < self._lost_through or received < self._first - 1 or received > self.messages:
            return None
        index = received - self._first + 1
        if index >= len(self._starts):
            return b""
        return bytes(self._data[self._starts[index]:])
