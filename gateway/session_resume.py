"""Client resume (docs/resume.md) as the session applies it: waiting for a client that dropped,
and splicing a resuming connection in as the new client leg. A mixin of
:class:`gateway.session.Session`, kept apart so the session module stays one job's size; the
state it keeps is :class:`gateway.resume.ResumeState`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from gateway.core.closerules import Event, LegName, rule_for
from gateway.core.codec import Opcode, build_frame
from gateway.core.compression import DeflateAgreement
from gateway.core.resume import resumed
from gateway.flow import WriteFlow
from gateway.leg import Leg, LegListener

if TYPE_CHECKING:
    from gateway.core.closerules import CloseRule
    from gateway.core.config import ClientConfig, UpstreamConfig
    from gateway.metrics import GatewayMetrics
    from gateway.reconnect import Recovery
    from gateway.resume import ResumeState

__all__ = ["ClientResume"]

logger = logging.getLogger("gateway.session")


class ClientResume:
    """The session's client-resume steps (what they use of the session is declared below)."""

    __slots__ = ()

    if TYPE_CHECKING:
        client: Leg
        upstream: Leg
        resume: ResumeState | None
        recovery: Recovery | None
        metrics: GatewayMetrics
        session_id: str
        client_config: ClientConfig
        upstream_config: UpstreamConfig

        def _relaying(self) -> bool: ...

        def _close(self, rule: CloseRule, reason: str = "", code: int = 0) -> bool: ...

    def _wait_for_client(self) -> bool:
        """A resumable client dropped: keep the app's leg for ``resume.grace`` if its stream allows."""
        resume = self.resume
        assert resume is not None
        if not resume.allowed or not self._resumable_now():
            return False
        resume.wait()
        logger.info("session %s: resumable client dropped; waiting %gs for it", self.session_id, resume.config.grace)
        return True

    def _resumable_now(self) -> bool:
        """The session relays, its replay log is whole, and what the client sent stopped at a message
        boundary with nothing of it waiting in the inflater (half of a message at the app, or complete
        ones not yet handed on, cannot be told apart from what the client will re-send: docs/resume.md,
        "Limits")."""
        resume, client = self.resume, self.client
        return (resume is not None and self._relaying() and resume.log.resumable and client.positions.at_boundary
                and (client.inflater is None or not client.inflater.waiting))

    def can_resume(self, received: int) -> bool:
        """Whether a resume from a client that has ``received`` messages can take over now."""
        return (self._resumable_now() and self.resume is not None
                and self.resume.log.frames_after(received) is not None)

    def client_gone(self, result: str) -> None:
        """The client did not come back in time (``expired``), or the replay log overflowed meanwhile."""
        if not self._relaying():
            return  # the session is closing already (drain, the app's close): nothing to count here
        self.metrics.client_resume(result)
        self._close(rule_for(Event.PEER_LOST, LegName.CLIENT))

    def splice_client(self, transport: asyncio.Transport, flow: WriteFlow, compression: DeflateAgreement | None,
                      received: int) -> bool:
        """A resume: a new client connection replaces the client leg (the ``resumed`` message, then the
        app's messages the client lacks, go out first); False when it cannot resume (:meth:`can_resume`)."""
        resume = self.resume
        if resume is None or not self.can_resume(received):
            return False
        frames = resume.log.frames_after(received)
        assert frames is not None
        old = self.client
        new = Leg(LegName.CLIENT, cast(LegListener, self), transport, flow, self.client_config,
                  self.client_config.close_timeout, scanner_limits=self.upstream_config, compression=compression)
        new.carry_over(old)
        new.other, new.out, self.upstream.other = self.upstream, old.out, new
        self.client = new  # type: ignore[misc]  # a Session slot (mypy checks the mixin's empty __slots__)
        if self.recovery is not None and self.recovery.confirmations is not None:
            self.recovery.confirmations.follow(new.positions)
        if old.closed:
            old.release()
        else:
            old.abort()  # the client came back before its old connection was seen to drop
        transport.write(build_frame(Opcode.TEXT, resumed(resume.issue_token(), new.positions.complete_messages),
                                    masked=False))
        if frames:
            new.sender.write(frames)
        self.metrics.client_resumed(resume.back(new), resume.log.messages - received)
        new.schedule_ping()
        return True
