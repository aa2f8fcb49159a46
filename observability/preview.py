"""Renders the dashboard's main panels to a PNG from a real, local Prometheus (`make dashboard-preview`).

For people without Grafana: it starts the example app under uvicorn, the gateway and
Debian's Prometheus (scraping every second) on loopback, plays a demo scenario (echo
traffic, normal and application closes, an oversized message, clients that stop
answering pings or reading, a crashing handler, refused handshakes), then queries
Prometheus for the panels' own expressions and draws them with matplotlib.

    python -m observability.preview [--seconds 40] [--output docs/images/dashboard-preview.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.proxies import system_binary
from bench.run import Server, free_port, start
from observability import dashboard

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "images" / "dashboard-preview.png"
PANELS = (
    "Client closes by code",
    "Closes by cause",
    "Messages per second",
    "Ping round trip p50 / p99",
    "Handshake failures by status",
    "Open sessions",
)
"""The panels drawn, by their dashboard titles."""
RATE_WINDOW = "10s"


def panel_targets() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Title -> (unit, [(expr, legend)]) for the drawn panels, with variables filled in."""
    found = {}
    for row in dashboard.ROWS:
        for panel in row.panels:
            if panel.title in PANELS:
                targets = [
                    (expr.replace("$namespace", ".*").replace("$pod", ".*").replace("$__rate_interval", RATE_WINDOW),
                     legend)
                    for expr, legend in panel.targets
                ]
                found[panel.title] = (panel.unit, targets)
    return found


async def scenario(gateway_url: str, seconds: float) -> None:
    """A bounded mix of traffic and failures against the gateway on loopback."""
    rng = random.Random(7)  # noqa: S311 - a repeatable demo mix, not security
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:

        async def chatty() -> None:
            while time.monotonic() < deadline:
                async with http.ws_connect(gateway_url + "/ws/echo") as ws:
                    for _ in range(rng.randint(20, 200)):
                        if time.monotonic() >= deadline:
                            break
                        await ws.send_str("x" * rng.randint(10, 200))
                        await asyncio.wait_for(ws.receive(), 5)
                        await asyncio.sleep(0.01)

        async def incidents() -> None:
            while time.monotonic() < deadline:
                choice = rng.random()
                try:
                    if choice < 0.3:
                        async with http.ws_connect(gateway_url + "/ws/close/4003?reason=demo") as ws:
                            await asyncio.wait_for(ws.receive(), 5)
                    elif choice < 0.45:
                        async with http.ws_connect(gateway_url + "/ws/echo") as ws:
                            await ws.send_bytes(b"o" * 70_000)
                            await asyncio.wait_for(ws.receive(), 5)
                    elif choice < 0.6:
                        async with http.ws_connect(gateway_url + "/ws/crash") as ws:
                            await ws.send_str("boom")  # the gateway reconnects; ask twice, then leave
                            # not receive(timeout=): aiohttp restarts that timer on every gateway ping
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(ws.receive(), 1.5)
                    elif choice < 0.75:
                        await http.ws_connect(gateway_url + "/ws/forbidden")
                    elif choice < 0.9:
                        # answers no pings: closed by the gateway's keepalive
                        ws = await http.ws_connect(gateway_url + "/ws/echo", autoping=False)
                        await asyncio.sleep(2.5)
                        await ws.close()
                    else:
                        ws = await http.ws_connect(gateway_url + "/ws/flood?count=400&size=65536")
                        await asyncio.sleep(2.5)  # never reads: a slow consumer
                        await ws.close()
                except (aiohttp.ClientError, TimeoutError):
                    pass  # refused handshakes and closed sockets are part of the show
                await asyncio.sleep(rng.uniform(0.2, 0.8))

        await asyncio.gather(*(chatty() for _ in range(4)), incidents(), incidents())


async def bounded(work: Any, limit: float) -> None:
    """Run ``work`` for at most ``limit`` seconds; on overrun, say which tasks were stuck where."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        for stuck in asyncio.all_tasks():
            if stuck is not asyncio.current_task():
                stuck.print_stack(file=sys.stderr)
        task.cancel()
        raise TimeoutError(f"the demo scenario ran past {limit:g}s")
    task.result()


async def query_range(prometheus: str, expr: str, begin: float, end: float) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
        prometheus + "/api/v1/query_range", params={"query": expr, "start": begin, "end": end, "step": "1"}
    ) as response:
        body = await response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {body}")
    return list(body["data"]["result"])


def legend_for(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def draw(series: dict[str, tuple[str, list[tuple[str, list[tuple[float, float]]]]]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 2, figsize=(14, 11))
    for axis, title in zip(axes.flat, PANELS, strict=True):
        unit, lines = series[title]
        t0 = min((points[0][0] for _, points in lines if points), default=0.0)
        for label, points in lines:
            if points:
                axis.plot([t - t0 for t, _ in points], [v for _, v in points], label=label, linewidth=1.2)
        axis.set_title(title)
        axis.set_xlabel("seconds")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
        if lines:
            axis.legend(fontsize=7, loc="upper left")
    figure.suptitle("ws-gateway dashboard preview (local Prometheus, demo scenario)")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)


async def collect(prometheus: str, begin: float, end: float) -> dict[str, Any]:
    series: dict[str, Any] = {}
    for title, (unit, targets) in panel_targets().items():
        lines = []
        for expr, legend in targets:
            for result in await query_range(prometheus, expr, begin, end):
                points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
                lines.append((legend_for(legend, result["metric"]), points))
        series[title] = (unit, lines)
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the demo scenario")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    python = sys.executable
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ws-gateway-preview-") as work:
        try:
            app_port, gateway_port, admin_port, prom_port = free_port(), free_port(), free_port(), free_port()
            servers.append(start("uvicorn", [python, "-m", "uvicorn", "examples.app:app", "--host", "127.0.0.1",
                                             "--port", str(app_port), "--log-level", "warning"], app_port))
            env = {"GATEWAY_CLIENT_PING_INTERVAL": "500ms", "GATEWAY_CLIENT_PING_JITTER": "100ms",
                   "GATEWAY_CLIENT_PING_TIMEOUT": "1s", "GATEWAY_UPSTREAM_PING_INTERVAL": "1s",
                   "GATEWAY_UPSTREAM_PING_JITTER": "100ms", "GATEWAY_UPSTREAM_MAX_MESSAGE_SIZE": "64KiB",
                   "GATEWAY_CLIENT_MAX_BUFFERED": "256KiB", "GATEWAY_CLIENT_SLOW_CONSUMER_TIMEOUT": "1s",
                   "GATEWAY_CLIENT_CLOSE_TIMEOUT": "500ms", "GATEWAY_LOG_LEVEL": "warning",
                   "GATEWAY_DRAIN_LISTENER_DELAY": "0s", "GATEWAY_DRAIN_SPREAD": "0s"}
            servers.append(start("ws-gateway", [python, "-m", "gateway", "--listen", f"127.0.0.1:{gateway_port}",
                                                "--admin-listen", f"127.0.0.1:{admin_port}", "--upstream",
                                                f"ws://127.0.0.1:{app_port}"], gateway_port, env))
            config = Path(work) / "prometheus.yml"
            config.write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "ws-gateway",
                                    "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
            }))
            servers.append(start("prometheus", [system_binary("prometheus"), f"--config.file={config}",
                                                f"--storage.tsdb.path={Path(work) / 'tsdb'}",
                                                f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port))
            print("preview: processes up; baseline scrapes", file=sys.stderr, flush=True)
            time.sleep(3)  # a few baseline scrapes before the scenario starts
            begin = time.time()
            # Bounded whatever happens: the scenario may not outlive its length by more than 30 s.
            asyncio.run(bounded(scenario(f"http://127.0.0.1:{gateway_port}", args.seconds), args.seconds + 30))
            print("preview: scenario done", file=sys.stderr, flush=True)
            time.sleep(3)  # let the last events be scraped
            series = asyncio.run(collect(f"http://127.0.0.1:{prom_port}", begin - 2, time.time()))
        finally:
            for server in reversed(servers):
                server.stop()
    draw(series, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
