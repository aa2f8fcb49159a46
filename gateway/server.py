"""The gateway process: the traffic listener, the admin listener and graceful drain.

Each client connection's protocol (:mod:`gateway.http`) reads its request
head and hands it to :meth:`Gateway.handle`, which checks it (drain, upgrade
rules, origin, limits, compression offer, resume) and gives it to the
:class:`~gateway.accept.Acceptor`: it opens the upstream leg, writes the 101
and hands the connection's reads to a new session; from then on both legs
are relayed frame by frame. The admin port (/metrics, /healthz, /readyz) is an aiohttp
application.

SIGTERM (and SIGINT) start the drain: /readyz fails at once, the listener
closes after ``drain.listener_delay``, open sessions get 1012 spread over
``drain.spread``, and the process exits by ``drain.timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.accept import Acceptor, refuse, switch_protocols
from gateway.core.backoff import full_jitter_backoff
from gateway.core.closerules import Event
from gateway.core.codec import Opcode, build_close_payload, build_frame
from gateway.core.compression import DeflateAgreement, ExtensionHeaderError, negotiate
from gateway.core.config import GatewayConfig, parse_host_port
from gateway.core.forwarding import forward_headers, offered_subprotocols
from gateway.core.resume import MARKER, RESUME_REFUSED, ResumeOffer, parse_offer, token_key
from gateway.core.targets import TargetPool
from gateway.core.upgrade import Refusal, check_upgrade
from gateway.gcpolicy import tune_after_start
from gateway.http import BadRequestLog, ClientConnection, RequestHead, TrafficPort
from gateway.metrics import GatewayMetrics
from gateway.session import Session

__all__ = ["Gateway", "run_gateway"]

logger = logging.getLogger("gateway.server")

_READY_CACHE_SECONDS: Final = 1.0
_READY_PROBE_TIMEOUT: Final = 1.0


class Gateway:
    """Owns configuration, metrics, live sessions and the drain state."""

    def __init__(self, config: GatewayConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        registry = registry or CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=registry)  # python_info
        GCCollector(registry=registry)  # python_gc_collections_total{generation}: see gateway.gcpolicy
        self.metrics = GatewayMetrics(registry)
        self.sessions: set[Session] = set()
        self.resumable: dict[bytes, Session] = {}
        """Resumable sessions by their current token's key (gateway.resume)."""
        self.per_client: dict[str, int] = {}
        """Sessions (and upgrades under way) per client address, when client.max_sessions_per_client is set."""
        self.draining = False
        self._networks = config.proxy.networks
        upstream = config.upstream
        self.pool = TargetPool(upstream.url, upstream.selection, upstream.cooldown, time.monotonic)
        # One maker of reconnect delays for every session (a closure per session cost memory).
        delays = functools.partial(full_jitter_backoff, config.reconnect.initial_backoff, config.reconnect.max_backoff)
        self._acceptor = Acceptor(config, self.metrics, self.pool, self.resumable, delays, lambda: self.draining)
        self._upstream_ok_at = 0.0
        self._admin_runner: web.BaseRunner | None = None
        self._traffic: TrafficPort | None = None
        self._traffic_server: asyncio.AbstractServer | None = None
        self.stopped = asyncio.Event()

    # --- traffic port -----------------------------------------------------------------
    def _precheck(self, head: RequestHead, resuming: bool = False) -> Refusal | str:
        """Refuse what must not be relayed; else the request target to relay, in origin-form. A
        resume (``resuming``) adds no session, so ``max_sessions`` does not stop it."""
        client = self.config.client
        if self.draining:
            return Refusal(503, "the gateway is shutting down; retry on another instance")
        checked = check_upgrade(head.method, head.version, head.target, head.headers)
        if isinstance(checked, Refusal):
            return checked
        origin = head.header("Origin")
        if client.allowed_origins and origin is not None and origin.lower() not in client.allowed_origins:
            return Refusal(403, f"origin {origin!r} is not allowed")
        if not resuming and not self._has_room(0):
            return Refusal(503, self._full())
        return checked

    def _has_room(self, waiting_heads: int) -> bool:
        """Connections still sending their request head count against max_sessions with the sessions."""
        return len(self.sessions) + self._acceptor.handshakes + waiting_heads < self.config.max_sessions

    def _full(self) -> str:
        """The 503's text at ``max_sessions``, the same whether the connection or its request head is refused."""
        return f"the gateway holds its limit of {self.config.max_sessions} sessions (with request heads still arriving)"

    def _refuse(self, connection: ClientConnection, status: int, text: str,
                headers: dict[str, str] | None = None) -> None:
        """Answer the upgrade with an HTTP error (the connection closes after it), counted by status."""
        refuse(self.metrics, connection, status, text, headers)

    async def handle(self, connection: ClientConnection, head: RequestHead) -> None:
        """One client's upgrade: check it, open the upstream, answer 101 and start relaying; or refuse.

        It returns once the session relays: from then on the session lives on its connections'
        callbacks, and this task's frame (the handshake's headers and buffers) is freed.
        """
        offered = offered_subprotocols(head.headers)
        offer = parse_offer(offered)
        resuming = offer.token is not None or offer.malformed
        checked = self._precheck(head, resuming)
        if isinstance(checked, Refusal):
            self._refuse(connection, checked.status, checked.reason, checked.headers or None)
            return
        target_path = checked
        compression = self._compression_for(head.headers)
        if isinstance(compression, Refusal):
            self._refuse(connection, compression.status, compression.reason)
            return
        if resuming:  # never relayed to the app, even with resume off (a token must not reach it)
            self._resume(connection, head, offer, offered, compression)
            return
        per_client = self.config.client.max_sessions_per_client
        forwarded = forward_headers(head.headers, head.peer_ip, self._networks)
        if per_client:
            held = self.per_client.get(forwarded.client_ip, 0)
            if held >= per_client:
                self._refuse(connection, 429, f"client {forwarded.client_ip} holds its limit of {per_client} sessions")
                return
            self.per_client[forwarded.client_ip] = held + 1
        session = await self._acceptor.accept(connection, head, offered, offer, forwarded, target_path, compression)
        if session is None:
            self._client_left(forwarded.client_ip)
            return
        self.sessions.add(session)
        session.done.add_done_callback(functools.partial(self._session_ended, session))

    def _session_ended(self, session: Session, _: object) -> None:
        self.sessions.discard(session)
        self._client_left(session.client_ip)
        if session.target is not None:
            self.pool.closed(session.target)

    def _client_left(self, client_ip: str) -> None:
        if self.config.client.max_sessions_per_client:
            left = self.per_client.get(client_ip, 1) - 1
            if left > 0:
                self.per_client[client_ip] = left
            else:
                self.per_client.pop(client_ip, None)

    def _compression_for(self, headers: list[tuple[str, str]]) -> DeflateAgreement | str | Refusal:
        """The permessage-deflate agreement for this client (gateway.core.compression); else the
        ``result`` label of what happened to its offer, or a 400 for a header that does not parse."""
        values = [value for name, value in headers if name.lower() == "sec-websocket-extensions"]
        if not values:
            return "not_offered"
        try:
            agreement = negotiate(", ".join(values), self.config.client.compression)
        except ExtensionHeaderError as exc:
            return Refusal(400, f"malformed Sec-WebSocket-Extensions header: {exc}")
        return "declined" if agreement is None else agreement

    def _resume(self, connection: ClientConnection, head: RequestHead, offer: ResumeOffer, offered: list[str],
                compression: DeflateAgreement | str) -> None:
        """A client resumes (docs/resume.md): splice its new connection into its session; or refuse
        with 4410, the same way whatever the reason."""
        session = self.resumable.get(token_key(offer.token)) if offer.token is not None else None
        resume = session.resume if session is not None else None
        transport = connection.transport
        if (session is None or resume is None or resume.subprotocol not in offered or transport is None
                or not resume.can_resume(offer.received)):
            switch_protocols(connection, head, MARKER if MARKER in offered else None)
            self._close_resume(connection)
            return
        agreement = compression if isinstance(compression, DeflateAgreement) else None
        switch_protocols(connection, head, resume.subprotocol, agreement)
        if not session.splice_client(transport, connection.write_flow(), agreement, offer.received):
            self._close_resume(connection)  # cannot happen between can_resume and here: no await
            return
        self.metrics.compression_negotiated("negotiated" if agreement is not None else str(compression))
        session.read_client(connection)

    def _close_resume(self, connection: ClientConnection) -> None:
        """What a browser can see of a refused resume: a 101 (naming the resumable marker, since a
        browser that offered subprotocols fails a 101 naming none), then close 4410."""
        self.metrics.client_resume("refused")
        payload = build_close_payload(RESUME_REFUSED, "session cannot be resumed")
        connection.close_after(build_frame(Opcode.CLOSE, payload, masked=False))

    # --- admin port -------------------------------------------------------------------
    async def _upstream_reachable(self) -> bool:
        """True when any target accepts TCP (cached for a second)."""
        now = time.monotonic()
        if now - self._upstream_ok_at < _READY_CACHE_SECONDS:
            return True
        for target in self.pool.targets:
            try:
                async with asyncio.timeout(_READY_PROBE_TIMEOUT):
                    _, writer = await asyncio.open_connection(target.host, target.port)
            except (OSError, TimeoutError):
                continue
            writer.close()
            self._upstream_ok_at = now
            return True
        return False

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process runs its event loop."""
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: accepting, not draining, upstream reachable."""
        if self.draining:
            self.metrics.set_ready(False)
            return web.Response(status=503, text="draining\n")
        if not await self._upstream_reachable():
            self.metrics.set_ready(False)
            return web.Response(status=503, text="upstream unreachable\n")
        self.metrics.set_ready(True)
        return web.Response(text="ready\n")

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the traffic and admin listeners."""
        client = self.config.client
        # Every connection gets a request-head deadline, a head size limit and quiet error reports
        # (gateway.http); every complete head goes to handle(), whatever its path.
        self._traffic = TrafficPort(self.handle, client.handshake_timeout, client.max_header_size, self._has_room,
                                    self.metrics.handshake_failed, BadRequestLog(), self._full())
        admin = web.Application()
        admin.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        admin.router.add_get("/healthz", self.healthz)
        admin.router.add_get("/readyz", self.readyz)
        self._admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        host, port = parse_host_port(self.config.listen)
        self._traffic_server = await asyncio.get_running_loop().create_server(
            self._traffic.connection, host, port, backlog=1024)
        admin_host, admin_port = parse_host_port(self.config.admin_listen)
        await web.TCPSite(self._admin_runner, admin_host, admin_port).start()
        self.metrics.set_ready(True)
        logger.info(
            "listening",
            extra={
                "fields": {
                    "listen": self.config.listen,
                    "admin_listen": self.config.admin_listen,
                    "upstream": list(self.config.upstream.url),
                }
            },
        )

    def begin_drain(self) -> None:
        """SIGTERM: fail readiness now, then stop listening and close sessions over the window."""
        if self.draining:
            return
        self.draining = True
        for session in self.sessions:
            session.stop_recovering()
        self.metrics.set_draining(True)
        self.metrics.set_ready(False)
        drain = self.config.drain
        logger.info(
            f"drain started: /readyz fails now; the listener stays open {drain.listener_delay:g}s more so load "
            f"balancers stop sending clients, then {len(self.sessions)} open sessions get 1012 over "
            f"{drain.spread:g}s; exit within {drain.timeout:g}s",
            extra={"fields": {"sessions": len(self.sessions), "listener_delay": drain.listener_delay,
                              "spread": drain.spread, "timeout": drain.timeout}},
        )
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        drain = self.config.drain
        deadline = time.monotonic() + drain.timeout
        await asyncio.sleep(drain.listener_delay)
        if self._traffic_server is not None:
            self._traffic_server.close()  # stop listening; the connections stay
        sessions = list(self.sessions)
        loop = asyncio.get_running_loop()
        for index, session in enumerate(sessions):
            delay = drain.spread * index / len(sessions)
            loop.call_later(delay, session.close_by_gateway, Event.SHUTDOWN)
        waiting = [asyncio.shield(s.done) for s in sessions]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic() - 0.5))
        for session in list(self.sessions):
            session.abort()
        logger.info("drain finished", extra={"fields": {"left_open": len(self.sessions)}})
        self.stopped.set()

    async def close(self) -> None:
        """Release the listeners and drop every connection still open (after a drain, none)."""
        if self._traffic_server is not None:
            self._traffic_server.close()
            self._traffic_server = None
        if self._traffic is not None:
            self._traffic.close()
        for session in list(self.sessions):
            session.abort()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None


async def run_gateway(config: GatewayConfig) -> None:
    """Run until SIGTERM/SIGINT has drained the gateway."""
    gateway = Gateway(config)
    await gateway.start()
    tune_after_start()
    loop = asyncio.get_running_loop()
    def on_signal() -> None:
        if gateway.draining:
            logger.warning("second stop signal: exiting without waiting for the drain")
            gateway.stopped.set()
        gateway.begin_drain()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await gateway.stopped.wait()
    finally:
        await gateway.close()
