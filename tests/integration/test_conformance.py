"""Autobahn|Testsuite on both legs: the gateway is nowhere worse than the same peers without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, scaled

SUITE_CASES = 517


@pytest.mark.skipif(os.geteuid() != 0, reason="the Autobahn chroot (debootstrap, chroot) needs root; CI runs as root")
@pytest.mark.timeout(int(scaled(1200)))
def test_autobahn_nowhere_worse_than_its_control(tmp_path: Path) -> None:
    """All 517 cases, client- and upstream-facing: no case, close behaviour included, worse than the control."""
    setup = subprocess.run([str(ROOT / "conformance" / "setup_autobahn.sh")], cwd=ROOT,
                           env={**os.environ, "HOST_PYTHON": sys.executable}, capture_output=True, text=True,
                           timeout=scaled(900))
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, "-m", "conformance.run", "--summary", str(summary_path),
         "--reports-dir", str(tmp_path / "reports")],
        cwd=ROOT, capture_output=True, text=True, timeout=scaled(1100),
    )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["error"] is None, summary["error"]
    for leg in ("client-facing", "upstream-facing"):
        cases = summary["legs"][leg]["cases"]
        assert len(cases) == SUITE_CASES, (leg, len(cases))
        assert all({"gateway", "control"} <= set(verdicts) for verdicts in cases.values()), leg
    assert summary["worse"] == [], run.stdout[-5000:]
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    logs = tmp_path / "reports" / "logs"
    for log in logs.glob("gateway-*.log"):
        text = log.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text and "Fatal error" not in text, log.name
