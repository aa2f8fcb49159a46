"""The metric names and labels (golden file) and the close series pre-exported from the close table."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gateway.core.closecodes import code_label
from gateway.core.closerules import known_series
from gateway.metrics import GatewayMetrics

GOLDEN = Path(__file__).parent.parent / "golden" / "metrics.txt"


def exposition_shape(text: str) -> str:
    """The exposition without values and with the Python version blanked: names, types, labels."""
    lines = []
    for line in text.splitlines():
        if line.startswith("# HELP"):
            continue
        line = re.sub(r'python="[^"]*"', 'python="X"', line)
        lines.append(line.rsplit(" ", 1)[0] if not line.startswith("#") else line)
    return "\n".join(lines) + "\n"


def test_exposition_matches_golden_file() -> None:
    """Every family, type and pre-exported label set is pinned; a rename fails here (update the golden)."""
    metrics = GatewayMetrics(CollectorRegistry())
    shape = exposition_shape(generate_latest(metrics.registry).decode())
    assert shape == GOLDEN.read_text(encoding="utf-8")
    assert all(name.startswith("ws_gateway_") for name in re.findall(r"^# TYPE (\S+)", shape, re.M))


def test_every_close_series_of_the_table_is_exported_at_zero() -> None:
    """Each (leg, code, initiator, cause) the close table can produce is in the exposition from start-up."""
    text = generate_latest(GatewayMetrics(CollectorRegistry()).registry).decode()
    series = list(known_series())
    assert len(series) > 30
    for leg, code, initiator, cause in series:
        sample = (f'ws_gateway_closes_total{{cause="{cause.value}",code="{code_label(code)}",'
                  f'initiator="{initiator.value}",leg="{leg}"}} 0.0')
        assert sample in text, sample
    for drifted in (("client", "1014", "protocol_error"), ("client", "1001", "message_too_big"),
                    ("client", "1011", "internal")):
        leg, code, cause = drifted
        assert f'cause="{cause}",code="{code}",initiator="gateway",leg="{leg}"' in text, drifted
