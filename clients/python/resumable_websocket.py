"""A resumable WebSocket client for Python asyncio, over the ``websockets`` library (docs/resume.md).

Connect through ws-gateway, and a network drop (no close frame) is resumed: the helper reconnects
with the session's token, the gateway splices it onto the same app connection, and both sides
re-send exactly what the other lacks. The app sees one WebSocket; this client sees every app
message once, in order::

    ws = ResumableWebSocket("wss://example.com/ws/chat", ["chat.v1"])
    await ws.connect()
    await ws.send("hello")
    message = await ws.recv()     # resumes across drops; raises ResumeReset if it cannot
    await ws.close()

When a resume is refused (close 4410: the grace period passed, the gateway restarted, another pod
answered) or cannot be made within the grace period, :meth:`recv` and :meth:`send` raise
:class:`ResumeReset`: the session is gone, and :meth:`connect` starts a new one.

Not part of the gateway package: it needs ``websockets`` (a test dependency of the project).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["MARKER", "RESUME_REFUSED", "ResumableWebSocket", "ResumeReset"]

MARKER = "ws-gateway.resumable"
RESUME_PREFIX = "ws-gateway.resume."
RESUME_REFUSED = 4410
RETRY_DELAYS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)


class ResumeReset(Exception):
    """The session could not be resumed (a refusal with 4410, or no connection within the grace period)."""


class ResumableWebSocket:
    """One resumable session through ws-gateway.

    One reader task reads the current connection into an inbox, counting each message as it is
    read (that count is what a resume tells the gateway), and resumes after a drop; :meth:`recv`
    takes from the inbox, :meth:`send` writes to the current connection under a lock that a resume
    also holds while it re-sends, so messages keep their order.

    Args:
        url: the gateway's WebSocket URL.
        subprotocols: the app's subprotocols (the gateway's marker is added).
        buffer_bytes: the most bytes of sent messages kept until the gateway confirms them on a
            resume; a resume that needs older ones resets.
        connect_options: passed to ``websockets.asyncio.client.connect``.
    """

    def __init__(self, url: str, subprotocols: Sequence[str] = (), *, buffer_bytes: int = 1 << 20,
                 **connect_options: Any) -> None:
        self.url = url
        self.app_protocols = list(subprotocols)
        self.buffer_bytes = buffer_bytes
        self.connect_options = {"open_timeout": 10, "close_timeout": 5, "max_size": None, **connect_options}
        self.subprotocol: str | None = None
        """The app's subprotocol (None when it chose none)."""
        self.resumes = 0
        """Drops resumed."""
        self.received = 0
        """App messages read from the gateway (delivered by :meth:`recv`, or waiting for it)."""
        self._ws: ClientConnection | None = None
        self._token = ""
        self._grace = 0.0
        self._sent: deque[tuple[int, str | bytes]] = deque()
        self._sent_bytes = 0
        self._sent_count = 0
        self._forgot_through = 0
        """The last sent message dropped from the buffer before the gateway confirmed it."""
        self._lock = asyncio.Lock()
        self._closing = False
        self._inbox: asyncio.Queue[str | bytes | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    # --- the session's first connection ----------------------------------------------------
    async def connect(self) -> None:
        """Open a new session (after a reset, the next one)."""
        if self._reader is not None:
            self._reader.cancel()
        ws = await connect(self.url, subprotocols=[*self.app_protocols, MARKER], **self.connect_options)
        hello = await self._first_message(ws)
        if hello.get("ws-gateway") != "resumable":
            await ws.close()
            raise ResumeReset(f"the gateway did not start a resumable session: {hello}")
        self._ws, self._token, self._grace = ws, hello["token"], hello["grace_ms"] / 1000
        self.subprotocol = None if ws.subprotocol == MARKER else ws.subprotocol
        self.received = self._sent_count = self._sent_bytes = self._forgot_through = 0
        self._sent.clear()
        self._inbox = asyncio.Queue()
        self._closing = False
        self._reader = asyncio.ensure_future(self._read())

    @staticmethod
    async def _first_message(ws: ClientConnection) -> dict[str, Any]:
        try:
            first = await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == RESUME_REFUSED:
                raise ResumeReset(f"resume refused: {closed.rcvd.reason}") from None
            raise
        data = json.loads(first)
        if not isinstance(data, dict):
            raise ResumeReset("the gateway's first message is not an object")
        return data

    # --- sending and receiving -------------------------------------------------------------
    async def send(self, message: str | bytes) -> None:
        """Send one message; kept until a resume tells whether the gateway got it (then re-sent if not)."""
        async with self._lock:
            if self._closing:
                raise ConnectionError("the session is closed")
            self._sent_count += 1
            self._sent.append((self._sent_count, message))
            self._sent_bytes += len(message)
            while self._sent_bytes > self.buffer_bytes and len(self._sent) > 1:
                index, old = self._sent.popleft()
                self._sent_bytes -= len(old)
                self._forgot_through = index
            assert self._ws is not None, "connect() first"
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(message)  # on a drop the reader resumes and re-sends what is missing

    async def recv(self) -> str | bytes:
        """The next message from the app. Raises :class:`ResumeReset` when the session is gone, or
        ``ConnectionClosed`` when it was closed with a close frame."""
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # every later call says the same
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        async with self._lock:
            self._closing = True
            if self._ws is not None:
                await self._ws.close(code, reason)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 10)

    async def _read(self) -> None:
        """Read the current connection into the inbox; resume after a drop."""
        while True:
            ws = self._ws
            assert ws is not None
            try:
                while True:
                    message = await ws.recv()
                    self.received += 1
                    self._inbox.put_nowait(message)
            except ConnectionClosed as exc:
                closed = exc
            rcvd = closed.rcvd
            if rcvd is not None and rcvd.code == RESUME_REFUSED:
                self._inbox.put_nowait(ResumeReset(f"resume refused: {rcvd.reason}"))
                return
            if rcvd is not None or self._closing:
                self._inbox.put_nowait(closed)  # closed with a close frame: the session is over
                return
            try:
                await self._resume()
            except ResumeReset as reset:
                self._inbox.put_nowait(reset)
                return

    # --- resuming ----------------------------------------------------------------------------
    async def _resume(self) -> None:
        """Reconnect with the token, then re-send what the gateway lacks (under the send lock)."""
        async with self._lock:
            deadline = time.monotonic() + self._grace
            attempt = 0
            while True:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                if time.monotonic() + delay > deadline:
                    raise ResumeReset(f"no connection within the grace period ({self._grace:g}s)")
                await asyncio.sleep(delay)
                offer = [*self.app_protocols, MARKER, f"{RESUME_PREFIX}{self._token}.{self.received}"]
                try:
                    ws = await connect(self.url, subprotocols=offer, **self.connect_options)
                    resumed = await self._first_message(ws)
                except InvalidStatus as exc:
                    if exc.response.status_code < 500:
                        raise ResumeReset(f"resume refused with HTTP {exc.response.status_code}") from None
                    continue
                except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                    continue  # dropped again before the gateway's first message: the token is still good
                break
            if resumed.get("ws-gateway") != "resumed":
                await ws.close()
                raise ResumeReset(f"unexpected first message on a resume: {resumed}")
            got = int(resumed["received"])
            if got < self._forgot_through or got > self._sent_count:
                await ws.close()
                raise ResumeReset(f"the gateway has {got} of our messages; we kept those after {self._forgot_through}")
            while self._sent and self._sent[0][0] <= got:
                self._sent_bytes -= len(self._sent.popleft()[1])
            self._ws, self._token = ws, resumed["token"]
            self.resumes += 1
            with contextlib.suppress(ConnectionClosed):  # dropped again: the reader resumes once more
                for _, message in self._sent:
                    await ws.send(message)
