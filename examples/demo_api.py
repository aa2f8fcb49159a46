"""The demo page's same-origin HTTP routes, mounted by examples/app.py.

* ``GET /demo/stats``: what the page shows of the gateway, read from its admin port's
  ``/metrics`` (another origin, so the page cannot fetch it itself): ping round trips per leg,
  close counts by leg, code, initiator and cause, and the reconnection counters.
* ``POST /demo/restart``: asks the demo launcher (examples/demo.py, the app's parent process) to
  restart uvicorn. Only under the launcher (it sets ``DEMO_LAUNCHER_PID``), only from loopback,
  and only with an ``X-Demo-Control`` header, which a cross-origin page cannot send without a
  CORS preflight that this app never answers.

Run by itself (``uvicorn examples.app:app``, as the tests do), ``/demo/stats`` answers 503 when no
gateway admin port answers and ``/demo/restart`` answers 404.
"""

from __future__ import annotations

import ipaddress
import os
import signal
from typing import Any, Final

import aiohttp
from fastapi import APIRouter, HTTPException, Request
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["CONTROL_HEADER", "RESTART_SIGNAL", "router", "summarise"]

router = APIRouter(prefix="/demo")

CONTROL_HEADER: Final = "X-Demo-Control"
RESTART_SIGNAL: Final = signal.SIGUSR1
"""What the app sends its launcher to ask for a restart (examples/demo.py handles it)."""
_SCRAPE_TIMEOUT: Final = aiohttp.ClientTimeout(total=2)


def summarise(exposition: str) -> dict[str, Any]:
    """The parts of the gateway's Prometheus text the page shows, as plain JSON values."""
    ping: dict[str, dict[str, float]] = {}
    closes: list[dict[str, Any]] = []
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in ("ws_gateway_ping_rtt_seconds_count", "ws_gateway_ping_rtt_seconds_sum"):
                ping.setdefault(labels["leg"], {"count": 0, "sum": 0.0})[name.rsplit("_", 1)[1]] = value
            elif name == "ws_gateway_closes_total" and value:
                closes.append({**{k: labels[k] for k in ("leg", "code", "initiator", "cause")}, "count": int(value)})
            elif name == "ws_gateway_oversize_refusals_total":
                counters[f"oversize_refusals_{labels['leg']}"] = value
            elif name in (
                "ws_gateway_sessions_open",
                "ws_gateway_sessions_resumed_total",
                "ws_gateway_replayed_messages_total",
                "ws_gateway_sessions_reconnecting",
                "ws_gateway_reconnect_breaker_trips_total",
            ):
                counters[name.removeprefix("ws_gateway_").removesuffix("_total")] = value
    closes.sort(key=lambda row: (row["leg"], row["code"], row["cause"]))
    return {"ping": ping, "closes": closes, "counters": counters}


@router.get("/stats")
async def stats() -> dict[str, Any]:
    """The gateway's ping round trips, close counts and reconnection counters (from its /metrics)."""
    url = os.environ.get("DEMO_ADMIN_URL", "http://127.0.0.1:9102") + "/metrics"
    try:
        async with aiohttp.ClientSession(timeout=_SCRAPE_TIMEOUT) as http, http.get(url) as response:
            response.raise_for_status()
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HTTPException(status_code=503, detail=f"gateway admin port not reachable at {url}: {exc}") from None
    return {**summarise(text), "metrics_url": url}


@router.post("/restart", status_code=202)
async def restart(request: Request) -> dict[str, Any]:
    """Ask the demo launcher to restart uvicorn (SIGTERM, then a new process on the same port)."""
    launcher = os.environ.get("DEMO_LAUNCHER_PID", "")
    if not launcher.isdigit() or int(launcher) != os.getppid():
        raise HTTPException(status_code=404, detail="restarting needs the demo launcher (make demo)")
    peer = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise HTTPException(status_code=403, detail="only from loopback")
    if CONTROL_HEADER.lower() not in request.headers:
        raise HTTPException(status_code=400, detail=f"the {CONTROL_HEADER} header is required")
    os.kill(int(launcher), RESTART_SIGNAL)
    return {"restarting": True, "pid": os.getpid()}
