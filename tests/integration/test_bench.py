"""Point 12: the benchmark script runs end to end (quick mode) and reports every relay against NGINX."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT, scaled


def test_quick_benchmark_reports_all_relays() -> None:
    """`python -m bench.run --quick` measures the gateway, naive relay, NGINX, HAProxy and direct in one run."""
    result = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--upstream", "fast echo"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(180), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for relay in ("direct", "ws-gateway", "naive aiohttp", "nginx", "haproxy"):
        assert relay in rows, result.stdout
    gateway_cells = [cell.strip() for cell in rows["ws-gateway"].split("|")]
    assert gateway_cells[2] != "-" and float(gateway_cells[2]) > 0, "gateway CPU per message was measured"
    assert gateway_cells[3].endswith("x"), "and compared with NGINX's"
