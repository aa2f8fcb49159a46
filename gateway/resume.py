"""Client resume (issue 11, docs/resume.md): the asyncio side of a resumable session.

A session whose client asked to be resumable gets a :class:`ResumeState`. While the client is
connected, what the app sends it goes through a :class:`ReplayTap` into the session's
:class:`~gateway.core.resume.ReplayLog` as well as to the client, and confirmation pings (a ping
after the app's latest message, its pong confirming everything before it) let the log forget what
the client has. When the client drops without a close frame and could resume now
(:meth:`ResumeState.wait_for_client`), the session waits in its ``CLIENT_AWAY`` state: the app's
leg stays open, its messages go to the log only, and after ``resume.grace`` (or when the log
overflows) the session ends as a client loss (:meth:`ResumeHost.client_gone`). A resume with the
session's token splices a new client connection in: the session builds the new leg
(``Session.splice_client``), :meth:`ResumeState.took_over` sends it what it lacks and points the
tap at it. The session is reached only through the small :class:`ResumeHost` protocol.

The registry maps each session's current token, by its SHA-256 (:func:`~gateway.core.resume.token_key`),
to the session: a token is valid from the message that carried it until the next resume replaces
it or the session ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from gateway.core.codec import Opcode, build_frame
from gateway.core.config import ResumeConfig
from gateway.core.resume import ReplayLog, new_token, resumed, token_key
from gateway.leg import DROP, DataOut, Leg
from gateway.sessionlog import session_fields

__all__ = ["ReplayTap", "ResumeHost", "ResumeState"]

logger = logging.getLogger("gateway.session")

_CONFIRM_TAG: Final = b"resume:"


class ReplayTap:
    """The upstream leg's data destination on a resumable session: the client, and the replay log."""

    __slots__ = ("log", "on_write", "target")

    def __init__(self, log: ReplayLog, target: DataOut, on_write: Callable[[], None]) -> None:
        self.log = log
        self.target = target
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.log.append(data)
        self.target.write(data)
        self.on_write()

    def writelines(self, parts: Iterable[bytes]) -> None:
        pieces = tuple(parts)
        self.log.append(b"".join(pieces))
        self.target.writelines(pieces)
        self.on_write()

    def get_write_buffer_size(self) -> int:
        return self.target.get_write_buffer_size()


class ResumeHost(Protocol):
    """What client resume asks of its session."""

    @property
    def session_id(self) -> str:
        """For log lines."""

    @property
    def client(self) -> Leg:
        """The current client leg."""

    def takes_client(self) -> bool:
        """The session relays or waits for its client: not closing, no upstream outage."""

    def client_gone(self, result: str) -> None:
        """The client will not be back (``expired``, ``overflow``): end the session as a client loss."""


class ResumeState:
    """The resume side of one resumable session.

    Args:
        config: the ``resume`` section.
        registry: the gateway's map from token key to session (shared by all sessions).
        owner: the session (what the registry maps to).
        subprotocol: what the first 101 named (the app's choice, or the resumable marker).
    """

    __slots__ = ("_confirm_handle", "_counter", "_grace_handle", "_outstanding", "_previous_key", "_token_ping",
                 "allowed", "away_since", "config", "key", "log", "on_lost", "owner", "registry", "resumes",
                 "send_ping", "subprotocol", "tap")

    def __init__(self, config: ResumeConfig, registry: dict[bytes, Any], owner: ResumeHost, subprotocol: str) -> None:
        self.config = config
        self.registry = registry
        self.owner: ResumeHost | None = owner
        self.subprotocol = subprotocol
        self.on_lost: Callable[[str], None] = owner.client_gone
        self.log = ReplayLog(config.buffer_bytes)
        self.tap = ReplayTap(self.log, DROP, self.wrote)
        self.key: bytes | None = None
        self._previous_key: bytes | None = None
        """The token before the last resume: still valid until the client shows it has the new one."""
        self._token_ping: bytes | None = None
        self.allowed = True
        """False while the gateway drains: a client that drops then is not waited for."""
        self.away_since: float | None = None
        """When the client dropped (None while it is connected)."""
        self.send_ping: Callable[[bytes], None] = _no_ping
        """The current client leg's ``send_ping``."""
        self._grace_handle: asyncio.TimerHandle | None = None
        self._confirm_handle: asyncio.TimerHandle | None = None
        self._outstanding: tuple[bytes, int] | None = None
        self._counter = 0
        self.resumes = 0
        """Times a new client connection took over (the session log's ``client_resumes``)."""

    # --- can the client resume? ------------------------------------------------------------
    def resumable_now(self) -> bool:
        """The session takes its client, the replay log is whole, and what the client sent stopped at
        a message boundary with nothing of it waiting in the inflater (half of a message at the app,
        or complete ones not yet handed on, cannot be told apart from what the client will re-send:
        docs/resume.md, "Limits")."""
        host = self.owner
        if host is None or not host.takes_client() or not self.log.resumable:
            return False
        client = host.client
        return client.positions.at_boundary and (client.inflater is None or not client.inflater.waiting)

    def can_resume(self, received: int) -> bool:
        """Whether a resume from a client that has ``received`` of the app's messages can take over now."""
        return self.frames_for(received) is not None

    def frames_for(self, received: int) -> bytes | None:
        """What a resuming client that has ``received`` messages lacks; None if it cannot resume now."""
        return self.log.frames_after(received) if self.resumable_now() else None

    # --- away and back ------------------------------------------------------------------------
    def wait_for_client(self) -> bool:
        """The client's connection dropped: wait for it (True) if it could resume now, keeping the
        app's messages in the log only, for ``resume.grace``."""
        if not self.allowed or not self.resumable_now():
            return False
        loop = asyncio.get_running_loop()
        self.away_since = loop.time()
        self.tap.target = DROP
        self.send_ping = _no_ping
        self._outstanding = None
        if self._confirm_handle is not None:
            self._confirm_handle.cancel()
            self._confirm_handle = None
        self._grace_handle = loop.call_later(self.config.grace, self.on_lost, "expired")
        if self.owner is not None:
            logger.info("resumable client dropped; waiting %gs for it", self.config.grace,
                        extra=session_fields(self.owner.session_id))
        return True

    def issue_token(self) -> str:
        """A new token for the session. The one before it stays valid until the client answers the
        ping that follows the message carrying the new one (:meth:`took_over`): a connection lost before
        the client read that message can still be resumed with the old token."""
        token = new_token()
        if self._previous_key is not None:
            self.registry.pop(self._previous_key, None)
        self._previous_key = self.key
        self.key = token_key(token)
        self.registry[self.key] = self.owner
        return token

    def _retire_previous(self) -> None:
        if self._previous_key is not None:
            self.registry.pop(self._previous_key, None)
            self._previous_key = None
        self._token_ping = None

    # --- confirmations while the client is connected --------------------------------------
    def wrote(self) -> None:
        """The app's data went into the log (and to the client, if it is connected)."""
        if self.away_since is not None:
            if not self.log.resumable:
                self.on_lost("overflow")
            return
        if self._confirm_handle is None:
            self._confirm_handle = asyncio.get_running_loop().call_later(self.config.confirm_interval, self._confirm)

    def _confirm(self) -> None:
        """Ping after the app's latest message. An earlier confirmation still unanswered is replaced (a
        client may answer only the latest ping, RFC 6455 5.5.3)."""
        self._confirm_handle = None
        if self.away_since is not None or self.log.messages <= self.log.confirmed:
            return
        self._outstanding = (self._ping(), self.log.messages)

    def _ping(self) -> bytes:
        self._counter += 1
        payload = _CONFIRM_TAG + self._counter.to_bytes(8, "big")
        self.send_ping(payload)
        return payload

    def pong(self, payload: bytes) -> None:
        """A pong on the client leg that answered no keepalive ping: maybe one of ours."""
        if payload == self._token_ping:
            self._retire_previous()
            return
        outstanding = self._outstanding
        if outstanding is None or payload != outstanding[0]:
            return
        self._outstanding = None
        self.log.confirm(outstanding[1])
        if self.log.messages > self.log.confirmed:
            self.wrote()

    # --- the client leg -------------------------------------------------------------------------
    def attach_client(self, leg: Leg) -> None:
        """``leg`` is the session's client leg now: the app's messages go to it (through the tap), it
        answers our pings, and the gateway's own notices on it are recorded as messages too."""
        self.tap.target = leg.sender
        self.send_ping = leg.send_ping
        leg.pong_listener = self
        leg.text_log = self.log

    def took_over(self, leg: Leg, frames: bytes) -> float:
        """``leg``, a resuming client's, is the session's client leg now: send it the ``resumed``
        message (its next token, and how many of its messages reached the app), then ``frames`` (the
        app's messages it lacks, :meth:`frames_for`). Returns how long the client was away."""
        leg.transport.write(build_frame(Opcode.TEXT, resumed(self.issue_token(), leg.positions.complete_messages),
                                        masked=False))
        if frames:
            leg.sender.write(frames)
        gap = 0.0 if self.away_since is None else asyncio.get_running_loop().time() - self.away_since
        self.away_since = None
        self.resumes += 1
        if self._grace_handle is not None:
            self._grace_handle.cancel()
            self._grace_handle = None
        self.attach_client(leg)
        self._outstanding = None
        self._token_ping = self._ping()  # its pong: the client has the new token (the old one stops working)
        if self.log.messages > self.log.confirmed:
            self.wrote()
        return gap

    def end(self) -> None:
        """The session is over: its tokens stop working, timers stop, and nothing here refers back to
        the session any more (it is freed by reference counting)."""
        for handle in (self._grace_handle, self._confirm_handle):
            if handle is not None:
                handle.cancel()
        self._grace_handle = self._confirm_handle = None
        for key in (self.key, self._previous_key):
            if key is not None and self.registry.get(key) is self.owner:
                del self.registry[key]
        self.key = self._previous_key = None
        self.send_ping = _no_ping
        self.on_lost = _ignore
        self.owner = None
        self.tap.on_write = _nothing
        self.tap.target = DROP


def _no_ping(payload: bytes) -> None:
    return None


def _ignore(result: str) -> None:
    return None


def _nothing() -> None:
    return None
