"""A finished session frees itself: the gateway in this process, real sockets, a real uvicorn upstream.

gateway.gcpolicy runs full garbage collections rarely because sessions do not need them; this is
what makes that safe. With the collector off, sessions that relayed, rode out an upstream restart
and closed must leave none of the gateway's per-session objects behind.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

import aiohttp

from gateway.core.config import load_config
from gateway.core.scanner import FrameScanner
from gateway.leg import Leg
from gateway.server import Gateway
from gateway.session import Session
from gateway.upstream import UpstreamProtocol
from tests.support import HOST, Upstream, async_wait_until, free_port, scaled

KINDS = (Session, Leg, FrameScanner, UpstreamProtocol)
SESSIONS = 10


def live_objects() -> list[int]:
    """Tracked objects of each kind in KINDS (a plain loop: see tests/unit/test_session.py)."""
    counts = dict.fromkeys(KINDS, 0)
    for o in gc.get_objects():
        if type(o) in counts:
            counts[type(o)] += 1
    return list(counts.values())


async def test_sessions_that_reconnected_and_closed_leave_nothing_behind(
    make_upstream: Callable[..., Upstream],
) -> None:
    """10 sessions echo, the app is SIGKILLed and restarted (each session resumes), they echo and close:
    the session, leg, scanner and upstream-protocol counts return to where they were."""
    app = make_upstream()
    port = free_port()
    config = load_config(environ={}, overrides={
        "listen": f"{HOST}:{port}", "admin_listen": f"{HOST}:{free_port()}",
        "upstream": {"url": app.url, "ping_interval": "0s"}, "client": {"ping_interval": "0s"},
        "reconnect": {"enabled": True, "initial_backoff": "20ms", "max_backoff": "200ms"},
    })
    gateway = Gateway(config)
    gc.collect()
    gc.disable()
    try:
        await gateway.start()
        before = live_objects()
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(f"http://{HOST}:{port}/ws/echo") for _ in range(SESSIONS)]
            for ws in sockets:
                await ws.send_str("before")
                assert (await ws.receive(timeout=scaled(10))).data == "before"
            app.signal(signal.SIGKILL)
            await asyncio.to_thread(app.process.wait)
            make_upstream(port=app.port)
            await async_wait_until(
                lambda: all(s.outage is not None and s.outage.stats.reconnects == 1 and s.state.value == "open"
                            for s in gateway.sessions),
                scaled(30), "every session to resume on the restarted app")
            for ws in sockets:
                await ws.send_str("after")
                assert (await ws.receive(timeout=scaled(10))).data == "after"
            for ws in sockets:
                await ws.close()
            del sockets, ws
        await async_wait_until(lambda: not gateway.sessions, scaled(10), "the sessions to end")
        await async_wait_until(lambda: live_objects() == before, scaled(10),
                               "the finished sessions' objects to be freed")
    finally:
        gc.enable()
        await gateway.close()
