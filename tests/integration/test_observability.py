"""The dashboard and alert rules against real Prometheus scraping a real gateway through a scripted scenario."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bench.proxies import system_binary
from observability import dashboard
from tests.support import (
    GatewayProcess,
    ManagedProcess,
    RawClient,
    Upstream,
    free_port,
    process_factory,
    scaled,
    wait_until,
)

RULES = Path(dashboard.__file__).with_name("alerts.yaml")


def dashboard_queries() -> list[str]:
    data = json.loads(dashboard.OUTPUT.read_text(encoding="utf-8"))
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def test_dashboard_json_is_generated_from_its_source() -> None:
    """The committed JSON is exactly what observability/dashboard.py builds (edit the source, regenerate)."""
    assert dashboard.OUTPUT.read_text(encoding="utf-8") == dashboard.render()


def test_dashboard_lint() -> None:
    """Stable uid, datasource/namespace/pod variables, a unit on every panel, one selector, $__rate_interval."""
    data = json.loads(dashboard.OUTPUT.read_text(encoding="utf-8"))
    assert data["uid"] == "ws-gateway-overview"
    assert [v["name"] for v in data["templating"]["list"]] == ["datasource", "namespace", "pod"]
    panels = [p for p in data["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in data["panels"] if p["type"] == "row"}
    assert {"Traffic", "Closes", "Upstream", "Keepalive", "Limits", "Lifecycle"} <= titles
    for panel in panels:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert dashboard.SELECTOR in expr, (panel["title"], expr)
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window == "$__rate_interval", (panel["title"], expr)


class PrometheusProcess(ManagedProcess):
    """Debian's Prometheus scraping one gateway every second, with the project's alert rules loaded."""

    def __init__(self, tmp: Path, admin_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "ws-gateway",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
        }
        config_path = tmp / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        super().__init__([system_binary("prometheus"), f"--config.file={config_path}",
                          f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                         tmp / "prometheus.log")
        wait_until(lambda: self._ready() or not self.alive(), 30, "prometheus to be ready")
        assert self.alive(), self.output()

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    async def query(self, expr: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{self.port}/api/v1/query", params={"query": expr}
        ) as response:
            return dict(await response.json())

    async def value(self, expr: str) -> float:
        body = await self.query(expr)
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[int], PrometheusProcess]]:
    with process_factory(lambda admin_port: PrometheusProcess(tmp_path, admin_port)) as factory:
        yield factory


async def test_scenario_seen_by_prometheus_dashboard_and_alerts(
    make_gateway: Callable[..., GatewayProcess], prometheus_for: Callable[[int], PrometheusProcess],
    tmp_path: Path,
) -> None:
    """Known events (normal close, ping timeout, 1009, slow consumer, upstream kill) show up in every query."""
    app = Upstream(tmp_path)
    try:
        gw = make_gateway(app.url, {
            # The ping timeout is longer than the slow-consumer timeout so the flooded client (which
            # answers nothing) is closed as a slow consumer, and the silent idle one by its pings.
            "client": {"ping_interval": "300ms", "ping_jitter": "100ms", "ping_timeout": "2s",
                       "max_buffered": "256KiB", "slow_consumer_timeout": "1s", "close_timeout": "500ms"},
            "upstream": {"max_message_size": "64KiB"},
            "reconnect": {"enabled": False},  # the killed upstream must show as a 1006 drop here
        })
        prometheus = prometheus_for(gw.admin_port)
        # A few scrapes before the events, so rates see the pre-exported series rise from 0.
        await async_wait_until_value(prometheus, 'count(count_over_time(up{job="ws-gateway"}[1m]) >= 3)', 1)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(gw.url + "/ws/echo") as ws:  # a normal close
                await ws.send_str("hello")
                await ws.receive(timeout=scaled(5))
                await ws.close()
            async with http.ws_connect(gw.url + "/ws/echo") as ws:  # an oversized message
                await ws.send_bytes(b"x" * 70_000)
                assert (await ws.receive(timeout=scaled(5))).data == 1009
        silent = await RawClient.connect(gw.port, "/ws/echo")  # never answers pings
        assert (await silent.read_until_close())[0] == 1011
        flooded = await RawClient.connect(gw.port, "/ws/flood?count=2000&size=65536")  # never reads
        await gw.wait_session_log(4, timeout=20)
        victim = await RawClient.connect(gw.port, "/ws/echo")
        app.signal(signal.SIGKILL)
        assert (await victim.read_until_close())[0] == 1011
        await gw.wait_session_log(5)
        silent.close()
        flooded.close()
        victim.close()

        expected = {
            'ws_gateway_closes_total{leg="client", code="1000"}': 1,
            'ws_gateway_closes_total{leg="client", code="1009", cause="message_too_big"}': 1,
            'ws_gateway_closes_total{leg="client", code="1011", cause="ping_timeout"}': 1,
            'ws_gateway_closes_total{leg="client", code="1008", cause="slow_consumer"}': 1,
            'ws_gateway_closes_total{leg="upstream", code="1006", initiator="upstream"}': 1,
            'ws_gateway_oversize_refusals_total{leg="client"}': 1,
            'ws_gateway_ping_timeouts_total{leg="client"}': 1,
            "ws_gateway_sessions_total": 5,
        }
        for selector, value in expected.items():
            expr = f"sum({selector})"
            await async_wait_until_value(prometheus, expr, value)

        substitutions = {"$namespace": ".*", "$pod": ".*", "$__rate_interval": "1m"}
        for expr in dashboard_queries():
            concrete = expr
            for variable, replacement in substitutions.items():
                concrete = concrete.replace(variable, replacement)
            body = await prometheus.query(concrete)
            assert body["status"] == "success", (expr, body)
            assert body["data"]["result"], f"no series for dashboard query {concrete}"
        by_code = await prometheus.query('sum by (code) (ws_gateway_closes_total{leg="client"}) > 0')
        codes = {r["metric"]["code"] for r in by_code["data"]["result"]}
        assert {"1000", "1008", "1009", "1011"} <= codes, codes
        rising = await prometheus.query(
            'sum by (cause) (increase(ws_gateway_closes_total{leg="client", initiator="gateway"}[1m])) > 0')
        causes = {r["metric"]["cause"] for r in rising["data"]["result"]}
        assert {"message_too_big", "ping_timeout", "slow_consumer"} <= causes, causes

        for group in yaml.safe_load(RULES.read_text())["groups"]:
            for rule in group["rules"]:
                body = await prometheus.query(rule["expr"])
                assert body["status"] == "success", (rule["alert"], body)
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{prometheus.port}/api/v1/rules"
        ) as response:
            rules = (await response.json())["data"]["groups"][0]["rules"]
        assert len(rules) >= 7 and all(r["health"] == "ok" for r in rules), rules
    finally:
        app.stop()


async def async_wait_until_value(prometheus: PrometheusProcess, expr: str, value: float) -> None:
    """Wait until Prometheus has scraped the expected value."""
    last = [0.0]

    async def probe() -> bool:
        last[0] = await prometheus.value(expr)
        return last[0] == value

    deadline = 20.0
    try:
        await async_poll(probe, deadline)
    except AssertionError:
        raise AssertionError(f"{expr} = {last[0]}, expected {value}") from None


async def async_poll(probe: Callable[[], Any], timeout: float) -> None:
    import asyncio
    import time

    end = time.monotonic() + scaled(timeout)
    while time.monotonic() < end:
        if await probe():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


def test_dashboard_preview_renders_png(tmp_path: Path) -> None:
    """`make dashboard-preview` (short run): real processes, real Prometheus, a PNG of the main panels."""
    import subprocess
    import sys

    from tests.support import ROOT

    output = tmp_path / "preview.png"
    result = subprocess.run([sys.executable, "-m", "observability.preview", "--seconds", "5", "--output",
                             str(output)], capture_output=True, text=True, cwd=ROOT, timeout=scaled(180),
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000, "six drawn panels, not an empty canvas"
