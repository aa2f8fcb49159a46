"""An upgrade becomes a wired session: the one place that connects upstream, answers the client
and hands both connections to a new session.

:class:`Acceptor` takes a client's upgrade that the gateway's checks let through
(:meth:`gateway.server.Gateway.handle`) and

1. **connects**: opens and upgrades the upstream leg (:func:`gateway.upstream.connect_any`) within
   ``client.handshake_timeout``, mapping every failure to the answer the client gets: 504 when the
   time ran out, 502 when no target is reachable or the app answered something that is not an HTTP
   error, the app's own 4xx/5xx passed through (or, with ``client.refusal: close``, a 101 and then
   close 4000 + status, so browsers can see why);
2. **opens**: answers 101, builds the :class:`~gateway.session.Session` with its
   :class:`~gateway.outage.RecoveryPlan` (reconnection) and :class:`~gateway.resume.ResumeState`
   (client resume), attaches both transports and hands both connections' reads to the session's
   legs.

It also makes each session's reconnect handshake (:meth:`Acceptor.reopener`): the same path, query,
headers and subprotocol offer, plus the attempt number and, with ``at_least_once``, the possible
duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Final

from gateway.core.backoff import Breaker, Delays
from gateway.core.closecodes import CloseCode
from gateway.core.codec import Opcode, build_close_payload, build_frame
from gateway.core.compression import DeflateAgreement
from gateway.core.config import GatewayConfig, RefusalMode
from gateway.core.forwarding import ForwardedRequest
from gateway.core.handshake import accept_key
from gateway.core.labels import ConnectResult
from gateway.core.resume import MARKER, ResumeOffer, hello
from gateway.core.targets import Target, TargetPool
from gateway.http import ClientConnection, RequestHead, sanitise
from gateway.metrics import GatewayMetrics
from gateway.outage import RecoveryPlan
from gateway.reconnect import Reopen
from gateway.resume import ResumeState
from gateway.session import Session
from gateway.upstream import UpstreamConnection, UpstreamRefused, UpstreamUnavailable, connect_any

__all__ = ["DUPLICATES_HEADER", "RECONNECT_HEADER", "SESSION_ID_HEADER", "Acceptor", "refuse", "switch_protocols"]

logger = logging.getLogger("gateway.server")

SESSION_ID_HEADER: Final = "X-Gateway-Session-Id"
"""Sent upstream on every handshake of a session, so the app can restore per-connection state."""
RECONNECT_HEADER: Final = "X-Gateway-Reconnect"
"""Sent upstream on reconnect handshakes: the attempt number within the current outage."""
DUPLICATES_HEADER: Final = "X-Gateway-Possible-Duplicates"
"""Sent on reconnect handshakes with reconnect.delivery at_least_once: how many of the first client
messages on this connection were sent to the lost upstream before (the last ``app_queue_messages``
it confirmed, which its app server may not have handed to the handler, and those it did not
confirm). An app that must not process a message twice de-duplicates those."""


def refuse(metrics: GatewayMetrics, connection: ClientConnection, status: int, text: str,
           headers: dict[str, str] | None = None) -> None:
    """Answer the upgrade with an HTTP error (the connection closes after it), counted by status."""
    metrics.handshake_failed(status)
    connection.refuse(status, text, headers)


def switch_protocols(connection: ClientConnection, head: RequestHead, subprotocol: str | None,
                     agreement: DeflateAgreement | None = None) -> None:
    """Write the 101 for this request (its key's accept value, the subprotocol, the deflate agreement)."""
    key = head.header("Sec-WebSocket-Key")
    assert key is not None  # check_upgrade refuses a request without one
    connection.switch_protocols(accept_key(key), subprotocol, agreement.response if agreement is not None else None)


class Acceptor:
    """Connects, answers and opens sessions for one gateway.

    Args:
        config: the gateway's configuration.
        metrics: where refusals, connect results and negotiations are counted.
        pool: the upstream targets.
        resumable: the gateway's registry of resumable sessions (by token key).
        delays: the reconnect delays every session shares.
        draining: tells whether the gateway drains (a session opened meanwhile does not reconnect).
    """

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, pool: TargetPool,
                 resumable: dict[bytes, Session], delays: Delays, draining: Callable[[], bool]) -> None:
        self.config = config
        self.metrics = metrics
        self.pool = pool
        self.resumable = resumable
        self.delays = delays
        self.draining = draining
        self.handshakes = 0
        """Upstream upgrades under way (they count against max_sessions)."""

    async def accept(self, connection: ClientConnection, head: RequestHead, offered: list[str], offer: ResumeOffer,
                     forwarded: ForwardedRequest, target_path: str,
                     compression: DeflateAgreement | str) -> Session | None:
        """Connect upstream, answer 101 and start relaying; or refuse as the upstream did (None).
        ``offered`` is the client's subprotocol offer, ``offer`` the gateway's part of it."""
        resumable = self.config.resume.enabled and offer.resumable
        if resumable:
            offered = list(offer.app_protocols)  # the app never sees the resumable marker
        session_id = os.urandom(16).hex()
        upstream_headers = [*forwarded.headers, (SESSION_ID_HEADER, session_id)]
        connected = await self._connect(connection, head, target_path, upstream_headers, offered)
        if connected is None:
            return None
        upstream, target = connected
        if connection.transport is None or connection.gone:
            upstream.transport.abort()  # the client left during the upgrade
            return None
        return self._open(connection, head, upstream, target, session_id, forwarded.client_ip, target_path,
                          upstream_headers, offered, resumable, compression)

    async def _connect(self, connection: ClientConnection, head: RequestHead, target_path: str,
                       headers: list[tuple[str, str]],
                       offered: list[str]) -> tuple[UpstreamConnection, Target] | None:
        """The upstream leg, upgraded; or None once the client has been refused as its failure says."""
        client_config = self.config.client
        self.handshakes += 1
        try:
            async with asyncio.timeout(client_config.handshake_timeout):
                return await connect_any(self.pool, self.config.upstream.connect_timeout, target_path, headers,
                                         offered, self.metrics.upstream_connect)
        except TimeoutError:
            refuse(self.metrics, connection, 504, "the upstream did not complete the handshake in time")
        except UpstreamUnavailable as exc:
            logger.warning("upstream unavailable for %s: %s", sanitise(target_path), exc)
            refuse(self.metrics, connection, 504 if exc.result is ConnectResult.TIMEOUT else 502,
                   f"upstream unavailable: {exc}")
        except UpstreamRefused as exc:
            if client_config.refusal is RefusalMode.CLOSE:
                self.metrics.handshake_failed(exc.status)
                self._accept_and_close(connection, head, exc.status)
            elif 400 <= exc.status <= 599:
                refuse(self.metrics, connection, exc.status,
                       f"upstream refused the WebSocket upgrade with HTTP {exc.status}")
            else:  # a 1xx, 2xx or 3xx is no answer a client can be given for its upgrade
                refuse(self.metrics, connection, 502, f"upstream answered the WebSocket upgrade with HTTP {exc.status}")
        finally:
            self.handshakes -= 1
        return None

    def _open(self, connection: ClientConnection, head: RequestHead, upstream: UpstreamConnection, target: Target,
              session_id: str, client_ip: str, target_path: str, upstream_headers: list[tuple[str, str]],
              offered: list[str], resumable: bool, compression: DeflateAgreement | str) -> Session:
        """Answer 101, build the session (reconnection, resume) and hand it both connections."""
        client_transport = connection.transport
        assert client_transport is not None
        subprotocol = upstream.subprotocol or (MARKER if resumable else None)
        if offered and subprotocol is None:
            # Allowed (RFC 6455 4.2.2), but browsers then fail the connection: say so once.
            logger.info(
                "client offered subprotocols %s and the upstream chose none; browsers drop such a connection",
                sanitise(", ".join(offered)),
            )
        agreement = compression if isinstance(compression, DeflateAgreement) else None
        switch_protocols(connection, head, subprotocol, agreement)
        self.metrics.compression_negotiated("negotiated" if agreement is not None else str(compression))
        config = self.config
        session = Session(session_id, client_ip, target_path.partition("?")[0], self.metrics, config.client,
                          config.upstream)
        reconnect = config.reconnect
        recovery = RecoveryPlan(
            config=reconnect,
            reopen=self.reopener(session, target_path, upstream_headers, offered),
            subprotocol=upstream.subprotocol,
            delays=self.delays,
            breaker=Breaker(reconnect.max_reconnects, reconnect.breaker_window),
        ) if reconnect.enabled else None
        session.target = target
        self.pool.opened(target)
        if resumable:
            assert subprotocol is not None
            session.resume = ResumeState(config.resume, self.resumable, session, subprotocol)
            hello_text = hello(session.resume.issue_token(), config.resume.grace)
            client_transport.write(build_frame(Opcode.TEXT, hello_text, masked=False))  # before any app message
        session.attach(client_transport, connection.write_flow(), upstream.transport, upstream.protocol.write_flow(),
                       compression=agreement, recovery=recovery)
        if self.draining():
            session.stop_recovering()
        session.read_upstream(upstream)
        session.read_client(connection)
        return session

    def reopener(self, session: Session, path: str, headers: list[tuple[str, str]], offered: list[str]) -> Reopen:
        """The reconnect handshake: same path, query, headers and subprotocol offer, plus the attempt.

        It may land on another target (the lost one is cooling down); the session moves with it.
        """
        frozen = tuple(headers)

        async def reopen(attempt: int) -> UpstreamConnection:
            headers = [*frozen, (RECONNECT_HEADER, str(attempt))]
            if session.outage is not None and session.outage.announced:
                headers.append((DUPLICATES_HEADER, str(session.outage.announced)))
            connection, target = await connect_any(self.pool, self.config.upstream.connect_timeout, path, headers,
                                                   offered, self.metrics.upstream_connect, wait=False)
            if session.target is not None:
                self.pool.closed(session.target)
            self.pool.opened(target)
            session.target = target
            return connection

        return reopen

    def _accept_and_close(self, connection: ClientConnection, head: RequestHead, status: int) -> None:
        """Refusal mode ``close``: upgrade, then close with 4000 + status so browsers see why."""
        switch_protocols(connection, head, None)
        code = 4000 + status if 100 <= status <= 999 else int(CloseCode.POLICY_VIOLATION)
        reason = f"upstream refused the WebSocket upgrade with HTTP {status}"
        connection.close_after(build_frame(Opcode.CLOSE, build_close_payload(code, reason), masked=False))
