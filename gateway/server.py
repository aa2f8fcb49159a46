"""The gateway process: the traffic listener, the admin listener and graceful drain.

aiohttp parses the client's HTTP upgrade request and routes it. The handler
checks it, opens the upstream leg (:mod:`gateway.upstream`), answers the
client with a 101 it writes itself, and hands the client connection's bytes
to the session through ``request.protocol.set_parser()`` (an aiohttp
internal: the aiohttp version range is pinned in pyproject.toml and the
mechanism is covered by the integration tests). From then on no aiohttp
message object is built: both legs are relayed frame by frame.

SIGTERM (and SIGINT) start the drain: /readyz fails at once, the listener
closes after ``drain.listener_delay``, open sessions get 1012 spread over
``drain.spread``, and the process exits by ``drain.timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway.core.backoff import Breaker, full_jitter_backoff
from gateway.core.closecodes import CloseCode
from gateway.core.closerules import Event
from gateway.core.codec import Opcode, build_close_payload, build_frame
from gateway.core.compression import DeflateAgreement, ExtensionHeaderError, negotiate
from gateway.core.config import GatewayConfig, RefusalMode, parse_host_port
from gateway.core.forwarding import ForwardedRequest, forward_headers, offered_subprotocols
from gateway.core.handshake import accept_key
from gateway.core.resume import MARKER, RESUME_REFUSED, ResumeOffer, hello, parse_offer, token_key
from gateway.core.targets import TargetPool
from gateway.core.upgrade import Refusal, check_upgrade
from gateway.flow import WriteFlow
from gateway.gcpolicy import tune_after_start
from gateway.http import BadRequestLog, GuardedRequestHandler, HeadGuard, TrafficServer, sanitise
from gateway.metrics import GatewayMetrics
from gateway.reconnect import Recovery, Reopen
from gateway.resume import ResumeState
from gateway.session import Session
from gateway.upstream import ConnectResult, UpstreamConnection, UpstreamRefused, UpstreamUnavailable, connect_any

__all__ = ["Gateway", "run_gateway"]

logger = logging.getLogger("gateway.server")

SESSION_ID_HEADER: Final = "X-Gateway-Session-Id"
"""Sent upstream on every handshake of a session, so the app can restore per-connection state."""
RECONNECT_HEADER: Final = "X-Gateway-Reconnect"
"""Sent upstream on reconnect handshakes: the attempt number within the current outage."""
DUPLICATES_HEADER: Final = "X-Gateway-Possible-Duplicates"
"""Sent on reconnect handshakes with reconnect.delivery at_least_once: how many of the first client
messages on this connection were sent to the lost upstream without its confirmation (it may have
read them). An app that must not process a message twice de-duplicates those."""
_READY_CACHE_SECONDS: Final = 1.0
_READY_PROBE_TIMEOUT: Final = 1.0


class _ClientFeeder:
    """Receives the upgraded client connection's reads from aiohttp (``set_parser``).

    ``ended`` (a resumed connection's) is set when the connection is gone: its handler waits for it.
    """

    __slots__ = ("ended", "feed", "lost")

    def __init__(self, session: Session, ended: asyncio.Future[None] | None = None) -> None:
        self.feed = session.client.scanner.feed
        self.lost = session.client.transport_lost
        self.ended = ended

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.feed(data)
        return False, b""

    def feed_eof(self) -> None:
        self.lost()
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)


def _refuse(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """An HTTP refusal of the upgrade; the connection closes after it (no second request on it)."""
    response = web.Response(status=status, text=text + "\n", headers=headers)
    response.force_close()
    return response


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
        self.handshakes = 0
        self.resumable: dict[bytes, Session] = {}
        """Resumable sessions by their current token's key (gateway.resume)."""
        self.per_client: dict[str, int] = {}
        """Sessions (and upgrades under way) per client address, when client.max_sessions_per_client is set."""
        self.draining = False
        self._networks = config.proxy.networks
        upstream = config.upstream
        self.pool = TargetPool(upstream.url, upstream.selection, upstream.cooldown)
        self._delays = functools.partial(full_jitter_backoff, config.reconnect.initial_backoff,
                                         config.reconnect.max_backoff)
        """One maker of reconnect delays for every session (a closure per session cost memory)."""
        self._upstream_ok_at = 0.0
        self._runners: list[web.BaseRunner] = []
        self._traffic_site: web.TCPSite | None = None
        self.stopped = asyncio.Event()

    # --- traffic port -----------------------------------------------------------------
    def _precheck(self, request: web.BaseRequest, headers: list[tuple[str, str]],
                  resuming: bool = False) -> web.Response | str:
        """Refuse what must not be relayed; else the request target to relay, in origin-form. A
        resume (``resuming``) adds no session, so ``max_sessions`` does not stop it."""
        client = self.config.client
        if self.draining:
            return _refuse(503, "the gateway is shutting down; retry on another instance")
        checked = check_upgrade(request.method, (request.version.major, request.version.minor),
                                request.raw_path, headers)
        if isinstance(checked, Refusal):
            return _refuse(checked.status, checked.reason, checked.headers or None)
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers)
        if header_bytes > client.max_header_size:
            return _refuse(431, f"request headers of {header_bytes} bytes exceed {client.max_header_size}")
        origin = request.headers.get("Origin")
        if client.allowed_origins and origin is not None and origin.lower() not in client.allowed_origins:
            return _refuse(403, f"origin {origin!r} is not allowed")
        if not resuming and len(self.sessions) + self.handshakes >= self.config.max_sessions:
            return _refuse(503, f"the gateway holds its limit of {self.config.max_sessions} sessions")
        return checked

    def _has_room(self, waiting_heads: int) -> bool:
        """Connections still sending their request head count against max_sessions with the sessions."""
        return len(self.sessions) + self.handshakes + waiting_heads < self.config.max_sessions

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Relay one client's WebSocket to the upstream, from handshake to the last close.

        The long wait happens here, in a frame that holds only the request, the response and
        the session: the handshake's headers and buffers are freed once the relay runs.
        """
        protocol = request.protocol
        if isinstance(protocol, GuardedRequestHandler):
            protocol.head_read()
        response, session = await self._open_session(request)
        if session is None:
            return response
        self.sessions.add(session)
        try:
            await session.done
        finally:
            self.sessions.discard(session)
            self._client_left(session.client_ip)
            if session.target is not None:
                self.pool.closed(session.target)
        return response

    def _client_left(self, client_ip: str) -> None:
        if self.config.client.max_sessions_per_client:
            left = self.per_client.get(client_ip, 1) - 1
            if left > 0:
                self.per_client[client_ip] = left
            else:
                self.per_client.pop(client_ip, None)

    async def _open_session(self, request: web.BaseRequest) -> tuple[web.StreamResponse, Session | None]:
        """Check the request, open the upstream, answer 101 and start relaying; or refuse."""
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        offered = offered_subprotocols(raw_headers)
        offer = parse_offer(offered)
        resuming = offer.token is not None or offer.malformed
        checked = self._precheck(request, raw_headers, resuming)
        if isinstance(checked, web.Response):
            self.metrics.handshake_failed(checked.status)
            return checked, None
        target_path = checked
        compression = self._compression_for(raw_headers)
        if isinstance(compression, web.Response):
            self.metrics.handshake_failed(compression.status)
            return compression, None
        if resuming:  # never relayed to the app, even with resume off (a token must not reach it)
            return await self._resume(request, offer, offered, compression), None
        client_config = self.config.client
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_ip = peer[0] if peer else "unknown"
        forwarded = forward_headers(raw_headers, peer_ip, self._networks)
        per_client = client_config.max_sessions_per_client
        if per_client:
            held = self.per_client.get(forwarded.client_ip, 0)
            if held >= per_client:
                self.metrics.handshake_failed(429)
                return _refuse(429, f"client {forwarded.client_ip} holds its limit of {per_client} sessions"), None
            self.per_client[forwarded.client_ip] = held + 1
        response, session = await self._connect_and_accept(request, offered, offer, forwarded, target_path,
                                                           compression)
        if session is None:
            self._client_left(forwarded.client_ip)
        return response, session

    def _compression_for(self, headers: list[tuple[str, str]]) -> DeflateAgreement | str | web.Response:
        """The permessage-deflate agreement for this client (gateway.core.compression); else the
        ``result`` label of what happened to its offer, or a 400 for a header that does not parse."""
        values = [value for name, value in headers if name.lower() == "sec-websocket-extensions"]
        if not values:
            return "not_offered"
        try:
            agreement = negotiate(", ".join(values), self.config.client.compression)
        except ExtensionHeaderError as exc:
            return _refuse(400, f"malformed Sec-WebSocket-Extensions header: {exc}")
        return "declined" if agreement is None else agreement

    async def _connect_and_accept(
        self,
        request: web.BaseRequest,
        offered: list[str],
        offer: ResumeOffer,
        forwarded: ForwardedRequest,
        target_path: str,
        compression: DeflateAgreement | str,
    ) -> tuple[web.StreamResponse, Session | None]:
        """Open the upstream leg, answer 101 and start relaying; or refuse as the upstream did.
        ``offered`` is the client's subprotocol offer, ``offer`` the gateway's part of it."""
        client_config = self.config.client
        resumable = self.config.resume.enabled and offer.resumable
        if resumable:
            offered = list(offer.app_protocols)  # the app never sees the resumable marker
        session_id = os.urandom(16).hex()
        upstream_headers = [*forwarded.headers, (SESSION_ID_HEADER, session_id)]
        self.handshakes += 1
        try:
            async with asyncio.timeout(client_config.handshake_timeout):
                upstream, target = await connect_any(
                    self.pool,
                    self.config.upstream.connect_timeout,
                    target_path,
                    upstream_headers,
                    offered,
                    self.metrics.upstream_connect,
                )
        except TimeoutError:
            self.metrics.handshake_failed(504)
            return _refuse(504, "the upstream did not complete the handshake in time"), None
        except UpstreamUnavailable as exc:
            status = 504 if exc.result is ConnectResult.TIMEOUT else 502
            self.metrics.handshake_failed(status)
            logger.warning("upstream unavailable for %s: %s", request.path, exc)
            return _refuse(status, f"upstream unavailable: {exc}"), None
        except UpstreamRefused as exc:
            self.metrics.handshake_failed(exc.status)
            if client_config.refusal is RefusalMode.CLOSE:
                return await self._accept_and_close(request, exc.status), None
            return _refuse(exc.status, f"upstream refused the WebSocket upgrade with HTTP {exc.status}"), None
        finally:
            self.handshakes -= 1
        if request.transport is None or request.transport.is_closing():
            upstream.transport.abort()
            return web.Response(status=499), None
        subprotocol = upstream.subprotocol or (MARKER if resumable else None)
        if offered and subprotocol is None:
            # Allowed (RFC 6455 4.2.2), but browsers then fail the connection: say so once.
            logger.info(
                "client offered subprotocols %s and the upstream chose none; browsers drop such a connection",
                sanitise(", ".join(offered)),
            )
        agreement = compression if isinstance(compression, DeflateAgreement) else None
        response = self._switching_protocols(request, subprotocol,
                                             agreement.response if agreement is not None else None)
        await response.prepare(request)
        self.metrics.compression_negotiated("negotiated" if agreement is not None else str(compression))
        session = Session(
            session_id,
            forwarded.client_ip,
            request.path,
            self.metrics,
            client_config,
            self.config.upstream,
        )
        reconnect = self.config.reconnect
        if reconnect.enabled:
            session.recovery = Recovery(
                config=reconnect,
                reopen=self._reopener(session, target_path, upstream_headers, offered),
                subprotocol=upstream.subprotocol,
                delays=self._delays,
                breaker=Breaker(reconnect.max_reconnects, reconnect.breaker_window),
                allowed=not self.draining,
            )
        session.target = target
        self.pool.opened(target)
        if resumable:
            assert subprotocol is not None
            session.resume = ResumeState(self.config.resume, self.resumable, session, subprotocol, session.client_gone)
            hello_text = hello(session.resume.issue_token(), self.config.resume.grace)
            request.transport.write(build_frame(Opcode.TEXT, hello_text, masked=False))  # before any app message
        client_protocol = request.protocol
        session.attach(
            request.transport,
            WriteFlow(lambda: client_protocol.writing_paused, client_protocol._drain_helper),
            upstream.transport,
            WriteFlow(upstream.protocol.is_paused, upstream.protocol.wait_resumed),
            compression=agreement,
        )
        upstream.protocol.attach(session.upstream.scanner.feed, session.upstream.transport_lost, upstream.first_bytes)
        client_protocol.set_parser(_ClientFeeder(session))  # type: ignore[arg-type]
        return response, session

    async def _resume(self, request: web.BaseRequest, offer: ResumeOffer, offered: list[str],
                      compression: DeflateAgreement | str) -> web.StreamResponse:
        """A client resumes (docs/resume.md): splice its new connection into its session, and wait
        here while that connection lasts; or refuse with 4410, the same way whatever the reason."""
        session = self.resumable.get(token_key(offer.token)) if offer.token is not None else None
        resume = session.resume if session is not None else None
        if (session is None or resume is None or resume.subprotocol not in offered or request.transport is None
                or not session.can_resume(offer.received)):
            return await self._refuse_resume(request, offered)
        agreement = compression if isinstance(compression, DeflateAgreement) else None
        response = self._switching_protocols(request, resume.subprotocol,
                                             agreement.response if agreement is not None else None)
        await response.prepare(request)
        client_protocol = request.protocol
        flow = WriteFlow(lambda: client_protocol.writing_paused, client_protocol._drain_helper)
        if request.transport is None or not session.splice_client(request.transport, flow, agreement,
                                                                  offer.received):
            self._close_resume(request)  # the session ended or changed while the 101 went out
            return response
        self.metrics.compression_negotiated("negotiated" if agreement is not None else str(compression))
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client_protocol.set_parser(_ClientFeeder(session, ended))  # type: ignore[arg-type]
        await asyncio.wait((ended, session.done), return_when=asyncio.FIRST_COMPLETED)
        return response

    async def _refuse_resume(self, request: web.BaseRequest, offered: list[str]) -> web.StreamResponse:
        """Upgrade, then close with 4410: what a browser can see of a refused resume. The 101 names
        the resumable marker (a browser that offered subprotocols fails a 101 naming none)."""
        response = self._switching_protocols(request, MARKER if MARKER in offered else None)
        await response.prepare(request)
        self._close_resume(request)
        return response

    def _close_resume(self, request: web.BaseRequest) -> None:
        self.metrics.client_resume("refused")
        if request.transport is not None:
            payload = build_close_payload(RESUME_REFUSED, "session cannot be resumed")
            request.transport.write(build_frame(Opcode.CLOSE, payload, masked=False))
            request.transport.close()

    def _reopener(
        self, session: Session, path: str, headers: list[tuple[str, str]], offered: list[str]
    ) -> Reopen:
        """The reconnect handshake: same path, query, headers and subprotocol offer, plus the attempt.

        It may land on another target (the lost one is cooling down); the session moves with it.
        """
        frozen = tuple(headers)

        async def reopen(attempt: int) -> UpstreamConnection:
            headers = [*frozen, (RECONNECT_HEADER, str(attempt))]
            if session.recovery is not None and session.recovery.possible_duplicates:
                headers.append((DUPLICATES_HEADER, str(session.recovery.possible_duplicates)))
            connection, target = await connect_any(
                self.pool,
                self.config.upstream.connect_timeout,
                path,
                headers,
                offered,
                self.metrics.upstream_connect,
                wait=False,
            )
            if session.target is not None:
                self.pool.closed(session.target)
            self.pool.opened(target)
            session.target = target
            return connection

        return reopen

    @staticmethod
    def _switching_protocols(request: web.BaseRequest, subprotocol: str | None,
                             extensions: str | None = None) -> web.StreamResponse:
        response = web.StreamResponse(
            status=101,
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Accept": accept_key(request.headers["Sec-WebSocket-Key"]),
            },
        )
        if subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        if extensions is not None:
            response.headers["Sec-WebSocket-Extensions"] = extensions
        response.force_close()
        return response

    async def _accept_and_close(self, request: web.BaseRequest, status: int) -> web.StreamResponse:
        """Refusal mode ``close``: upgrade, then close with 4000 + status so browsers see why."""
        response = self._switching_protocols(request, None)
        await response.prepare(request)
        code = 4000 + status if 100 <= status <= 999 else int(CloseCode.POLICY_VIOLATION)
        reason = f"upstream refused the WebSocket upgrade with HTTP {status}"
        if request.transport is not None:
            request.transport.write(build_frame(Opcode.CLOSE, build_close_payload(code, reason), masked=False))
            request.transport.close()
        return response

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
        guard = HeadGuard(client.handshake_timeout, self._has_room, self.metrics.handshake_failed, BadRequestLog())
        # The low-level server: every path goes to handle() (no router), and each connection gets a
        # request-head deadline and quiet error reports (gateway.http).
        traffic = TrafficServer(
            self.handle,
            guard,
            access_log=None,
            max_line_size=client.max_header_size,
            max_field_size=client.max_header_size,
        )
        admin = web.Application()
        admin.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        admin.router.add_get("/healthz", self.healthz)
        admin.router.add_get("/readyz", self.readyz)
        traffic_runner = web.ServerRunner(traffic, handle_signals=False)
        admin_runner = web.AppRunner(admin, access_log=None, handle_signals=False)
        for runner in (traffic_runner, admin_runner):
            await runner.setup()
            self._runners.append(runner)
        host, port = parse_host_port(self.config.listen)
        self._traffic_site = web.TCPSite(traffic_runner, host, port, backlog=1024)
        await self._traffic_site.start()
        admin_host, admin_port = parse_host_port(self.config.admin_listen)
        await web.TCPSite(admin_runner, admin_host, admin_port).start()
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
            if session.recovery is not None:
                session.recovery.allowed = False  # while draining, an upstream loss closes the client
            if session.resume is not None:
                session.resume.allowed = False  # and a client that drops is not waited for
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
        if self._traffic_site is not None:
            await self._traffic_site.stop()
        sessions = list(self.sessions)
        loop = asyncio.get_running_loop()
        for index, session in enumerate(sessions):
            delay = drain.spread * index / len(sessions)
            loop.call_later(delay, session.close_by_gateway, Event.SHUTDOWN)
        waiting = [asyncio.shield(s.done) for s in sessions]
        if waiting:
            await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic() - 0.5))
        for session in list(self.sessions):
            session.client.abort()
            session.upstream.abort()
        logger.info("drain finished", extra={"fields": {"left_open": len(self.sessions)}})
        self.stopped.set()

    async def close(self) -> None:
        """Release the listeners."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


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
