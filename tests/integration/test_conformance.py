"""Autobahn|Testsuite on both legs: the gateway is nowhere worse than the same peers without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.run import DEFAULT_COMPRESSION_CASES, SUITE_CASES, compression_case_ids, excluded_cases
from tests.support import ROOT, scaled

#: The default run: every case but the compression cases it leaves out (``--compression-cases`` runs
#: all 216; they take many minutes, docs/conformance.md).
DEFAULT_RUN_CASES = SUITE_CASES - len(excluded_cases(all_compression=False))
COMPRESSION_KEPT = compression_case_ids(DEFAULT_COMPRESSION_CASES)


@pytest.mark.skipif(os.geteuid() != 0, reason="the Autobahn chroot (debootstrap, chroot) needs root; CI runs as root")
@pytest.mark.timeout(int(scaled(1200)))
def test_autobahn_nowhere_worse_than_its_control(tmp_path: Path) -> None:
    """The default run (all 517 cases but 156 of the 216 compression cases), client- and
    upstream-facing: no case, close behaviour included, worse than the control; on the client-facing
    leg the gateway negotiates permessage-deflate in every compression case it runs, upstream nobody
    offers it."""
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
    assert summary["compression_cases"] == "subset"
    for leg in ("client-facing", "upstream-facing"):
        cases = summary["legs"][leg]["cases"]
        assert len(cases) == DEFAULT_RUN_CASES, (leg, len(cases))
        assert all({"gateway", "control"} <= set(verdicts) for verdicts in cases.values()), leg
        assert set(COMPRESSION_KEPT) <= set(cases), leg
    # A gateway that declined compression would only be rank-equal (UNIMPLEMENTED passes), so say it here:
    # client-facing, the gateway and uvicorn negotiate it; upstream-facing, neither side offers it.
    client = summary["legs"]["client-facing"]["cases"]
    upstream = summary["legs"]["upstream-facing"]["cases"]
    for case in COMPRESSION_KEPT:
        for agent in ("gateway", "control"):
            assert client[case][agent]["behavior"] != "UNIMPLEMENTED", ("client-facing", case, agent)
            assert upstream[case][agent]["behavior"] == "UNIMPLEMENTED", ("upstream-facing", case, agent)
    assert summary["worse"] == [], run.stdout[-5000:]
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    logs = tmp_path / "reports" / "logs"
    for log in logs.glob("gateway-*.log"):
        text = log.read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text and "Fatal error" not in text, log.name
