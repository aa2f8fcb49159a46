"""Builds the Grafana dashboard (observability/ws-gateway-dashboard.json) from one description.

This file is the single source of truth: edit the panels here, then run
``python -m observability.dashboard`` to rewrite the JSON. A test fails when the
JSON and this description disagree, when a panel lacks a unit, or when a query
skips the shared selector or ``$__rate_interval``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UID = "ws-gateway-overview"
OUTPUT = Path(__file__).with_name("ws-gateway-dashboard.json")
ALERTS = Path(__file__).with_name("alerts.yaml")
CHART_FILES = Path(__file__).resolve().parent.parent / "charts" / "ws-gateway" / "files"
GENERATED = "generated from observability/ by `make dashboard`; do not edit"
SELECTOR = 'namespace=~"$namespace", pod=~"$pod"'
"""The one label selector every query uses."""
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def sel(extra: str = "") -> str:
    """The shared selector, plus extra matchers."""
    return "{" + SELECTOR + (", " + extra if extra else "") + "}"


@dataclass
class Panel:
    """One time-series or stat panel."""

    title: str
    unit: str
    targets: list[tuple[str, str]]
    """(PromQL, legend) pairs."""
    description: str = ""
    stacked: bool = False
    kind: str = "timeseries"
    width: int = 8


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)


CLIENT_LEG = sel('leg="client"')
ABNORMAL_CLIENT = sel('leg="client", code=~"1006|1011|1014"')
UPSTREAM_STARTED = sel('leg="upstream", initiator="upstream"')
SLOW_CONSUMERS = sel('leg="client", cause="slow_consumer"')

ROWS = [
    Row("Traffic", [
        Panel("Open sessions", "short", [(f"sum(ws_gateway_sessions_open{sel()})", "open")],
              "Client sessions open now.", kind="stat", width=6),
        Panel("New sessions per second", "reqps",
              [(f"sum(rate(ws_gateway_sessions_total{sel()}[{RATE}]))", "sessions/s")],
              "Sessions accepted per second; spikes are reconnect storms.", width=6),
        Panel("Messages per second", "ops",
              [(f"sum by (direction) (rate(ws_gateway_messages_total{sel()}[{RATE}]))", "{{direction}}")],
              "Data messages relayed, each way.", width=6),
        Panel("Payload bytes per second", "Bps",
              [(f"sum by (direction) (rate(ws_gateway_payload_bytes_total{sel()}[{RATE}]))", "{{direction}}")],
              "Data-frame payload relayed, each way.", width=6),
    ]),
    Row("Closes", [
        Panel("Client closes by code", "ops",
              [(f"sum by (code) (rate(ws_gateway_closes_total{CLIENT_LEG}[{RATE}]))",
                "{{code}}")],
              "Why clients were disconnected, by the close code they received.", stacked=True, width=12),
        Panel("Abnormal close ratio", "percentunit",
              [(f"sum(rate(ws_gateway_closes_total{ABNORMAL_CLIENT}[{RATE}]))"
                f" / sum(rate(ws_gateway_closes_total{CLIENT_LEG}[{RATE}]))",
                "abnormal")],
              "Share of client sessions ending with 1006, 1011 or 1014.", width=12),
        Panel("Closes by cause", "ops",
              [(f"sum by (cause) (rate(ws_gateway_closes_total{sel()}[{RATE}]))", "{{cause}}")],
              "Both legs, by the fixed cause set.", stacked=True),
        Panel("Closes by initiator", "ops",
              [(f"sum by (initiator) (rate(ws_gateway_closes_total{sel()}[{RATE}]))", "{{initiator}}")],
              "Who started the close: client, upstream or gateway.", stacked=True),
        Panel("Closes by leg and code", "ops",
              [(f"sum by (leg, code) (rate(ws_gateway_closes_total{sel()}[{RATE}]))", "{{leg}} {{code}}")],
              "The code that ended each leg (1006: no close frame)."),
    ]),
    Row("Upstream", [
        Panel("Upstream connects by result", "ops",
              [(f"sum by (result) (rate(ws_gateway_upstream_connects_total{sel()}[{RATE}]))", "{{result}}")],
              "ok, refused, error, timeout, invalid (bad handshake), rejected (HTTP status).", stacked=True, width=12),
        Panel("Reconnect attempts by result", "ops",
              [(f"sum by (result) (rate(ws_gateway_upstream_reconnects_total{sel()}[{RATE}]))", "{{result}}")],
              "Attempts to replace a lost upstream leg while the client stays connected.", stacked=True, width=8),
        Panel("Upstream outage p50 / p99", "s",
              [(f"histogram_quantile({q}, sum by (le) "
                f"(rate(ws_gateway_upstream_outage_seconds_bucket{sel()}[{RATE}])))", label)
               for q, label in (("0.5", "p50"), ("0.99", "p99"))],
              "How long resumed sessions waited for their upstream.", width=8),
        Panel("Held for replay", "short",
              [(f"sum(ws_gateway_replay_buffered_messages{sel()})", "messages held"),
               (f"sum(ws_gateway_sessions_reconnecting{sel()})", "sessions reconnecting")],
              "Client messages buffered during outages, and sessions waiting for their upstream.", width=8),
        Panel("Sessions dropped by the upstream", "ops",
              [(f"sum by (code) (rate(ws_gateway_closes_total{UPSTREAM_STARTED}[{RATE}]))",
                "{{code}}")],
              "Closes the app started, by code: 1006 = crash or escaped exception, 1012 = restart.", width=12),
        Panel("Client messages lost at outages", "ops",
              [(f"sum by (reason) (rate(ws_gateway_replay_dropped_messages_total{sel()}[{RATE}]))", "{{reason}}")],
              "unhandled: confirmed read by the lost app server, perhaps still queued for its handler; "
              "unconfirmed: sent, not confirmed by the lost app (at_most_once; both upper bounds); cut, overflow, "
              "too_large: replay limits; refused: a message the app refused or failed on (client closed).",
              stacked=True, width=12),
    ]),
    Row("Client resume", [
        Panel("Client drops and resumes by result", "ops",
              [(f"sum by (result) (rate(ws_gateway_client_resumes_total{sel()}[{RATE}]))", "{{result}}")],
              "Resumable clients that dropped: resumed (spliced back onto the same app connection), expired "
              "(not back within resume.grace), overflow (replay log full while away); refused: resume "
              "attempts closed with 4410 (without matching expiries: resumes reaching another pod).",
              stacked=True, width=12),
        Panel("Client gap p50 / p99", "s",
              [(f"histogram_quantile({q}, sum by (le) "
                f"(rate(ws_gateway_client_gap_seconds_bucket{sel()}[{RATE}])))", label)
               for q, label in (("0.5", "p50"), ("0.99", "p99"))],
              "How long resumed clients were away; compare with resume.grace.", width=6),
        Panel("Messages re-sent on resume", "ops",
              [(f"sum(rate(ws_gateway_client_resume_replayed_messages_total{sel()}[{RATE}]))", "re-sent")],
              "The app's messages re-sent to resumed clients (unconfirmed before the drop, or sent during it).",
              width=6),
    ]),
    Row("Keepalive", [
        Panel("Ping round trip p50 / p99", "s",
              [(f"histogram_quantile(0.5, sum by (le, leg) (rate(ws_gateway_ping_rtt_seconds_bucket{sel()}[{RATE}])))",
                "p50 {{leg}}"),
               (f"histogram_quantile(0.99, sum by (le, leg) (rate(ws_gateway_ping_rtt_seconds_bucket{sel()}[{RATE}])))",
                "p99 {{leg}}")],
              "Gateway ping round trips; a growing upstream RTT means a blocked app event loop.", width=12),
        Panel("Ping timeouts", "ops",
              [(f"sum by (leg) (rate(ws_gateway_ping_timeouts_total{sel()}[{RATE}]))", "{{leg}}")],
              "Pings left unanswered; each closes a session with 1011.", width=12),
    ]),
    Row("Limits", [
        Panel("Oversize refusals (1009)", "ops",
              [(f"sum by (leg) (rate(ws_gateway_oversize_refusals_total{sel()}[{RATE}]))", "{{leg}}")],
              "Messages over max_message_size, by the leg they came from.", width=6),
        Panel("Fragmented messages", "ops",
              [(f"sum by (direction) (rate(ws_gateway_fragmented_messages_total{sel()}[{RATE}]))", "{{direction}}")],
              "Messages the gateway re-sent as fragments (frames over max_frame_size).", width=6),
        Panel("Slow-consumer closes", "ops",
              [(f"sum(rate(ws_gateway_closes_total{SLOW_CONSUMERS}[{RATE}]))",
                "slow consumers")],
              "Clients closed with 1008 for not reading.", width=6),
        Panel("Handshake failures by status", "ops",
              [(f"sum by (status) (rate(ws_gateway_handshake_failures_total{sel()}[{RATE}]))", "{{status}}")],
              "Upgrades refused with an HTTP status (browsers never see it).", stacked=True, width=6),
        Panel("Protocol errors", "ops",
              [(f"sum by (leg) (rate(ws_gateway_protocol_errors_total{sel()}[{RATE}]))", "{{leg}}")],
              "Malformed frames, by the leg they came from.", width=12),
        Panel("Discarded after the close began", "ops",
              [(f"sum by (direction) (rate(ws_gateway_discarded_messages_total{sel()}[{RATE}]))", "{{direction}}")],
              "Data messages that arrived after a session began to close, not relayed (counted, by direction).",
              width=12),
    ]),
    Row("Lifecycle", [
        Panel("Draining pods", "short", [(f"sum(ws_gateway_draining{sel()})", "draining")],
              "Pods draining after SIGTERM.", kind="stat", width=6),
        Panel("Ready pods", "short", [(f"sum(ws_gateway_ready{sel()})", "ready")],
              "Pods whose /readyz answered 200 at the last probe.", kind="stat", width=6),
        Panel("Resident memory", "bytes", [(f"sum by (pod) (process_resident_memory_bytes{sel()})", "{{pod}}")],
              "Gateway process memory.", width=12),
    ]),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {"fillOpacity": 10, "lineWidth": 1}
    if panel.stacked:
        custom["stacking"] = {"mode": "normal", "group": "A"}
        custom["fillOpacity"] = 60
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom if panel.kind == "timeseries" else {}},
                        "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if panel.kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    """The dashboard as Grafana JSON."""
    panels: list[dict[str, Any]] = []
    panel_id = 1
    y = 0
    for row in ROWS:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
        y += 8
    return {
        "uid": UID,
        "title": "ws-gateway",
        "description": "WebSocket drops by close code, keepalive, limits and upstream health (ws-gateway).",
        "tags": ["ws-gateway", "websocket"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            _variable("namespace", "Namespace", "label_values(ws_gateway_build_info, namespace)"),
            _variable("pod", "Pod", 'label_values(ws_gateway_build_info{namespace=~"$namespace"}, pod)'),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The JSON text written to OUTPUT."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def chart_copies() -> dict[Path, str]:
    """The chart's copies of the dashboard and the alert rules, each marked as generated."""
    marked = {"__comment": GENERATED, **build()}
    return {
        CHART_FILES / "ws-gateway-dashboard.json": json.dumps(marked, indent=2, ensure_ascii=False) + "\n",
        CHART_FILES / "alerts.yaml": f"# {GENERATED}\n" + ALERTS.read_text(encoding="utf-8"),
    }


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT}")
    for path, text in chart_copies().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
