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
    for relay in ("direct", "ws-gateway", "ws-gateway, reconnect off", "ws-gateway, at_least_once",
                  "naive aiohttp", "nginx", "haproxy", "uvloop pipe"):
        assert relay in rows, result.stdout
    gateway_cells = [cell.strip() for cell in rows["ws-gateway"].split("|")]
    assert gateway_cells[2] != "-" and float(gateway_cells[2]) > 0, "gateway CPU per message was measured"
    assert gateway_cells[3].endswith("x"), "and compared with NGINX's"


def test_quick_storm_reestablishes_every_session_through_both_relays() -> None:
    """`python -m bench.storm --quick` drains A to B for ws-gateway and NGINX and every session comes back."""
    result = subprocess.run([sys.executable, "-m", "bench.storm", "--quick"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(90), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| relay")}
    assert set(rows) == {"ws-gateway", "nginx"}, result.stdout
    for relay, cells in rows.items():
        assert cells[1] == cells[2] == "200", f"{relay}: every session re-established on B: {cells}"
        assert cells[3] != "-" and float(cells[3]) > 0, f"{relay}: time until all were back was measured"
        assert cells[6] == "0", f"{relay}: no failed reconnect: {cells}"
    assert rows["ws-gateway"][9].endswith("x"), "B's CPU per handshake is compared with NGINX's"
    gateway_notes = result.stdout.split("\nws-gateway:\n", 1)[1].split("\nnginx:\n", 1)[0]
    assert "close codes seen: {'1012': 200}" in gateway_notes, "gateway A really sent 1012 to every session"
    assert "A exited with 0" in gateway_notes, "and finished its drain"


def test_quick_compression_measurement_counts_the_client_leg_exactly() -> None:
    """`python -m bench.compression --quick`: every path measured, NGINX byte-identical to direct (a tunnel),
    the gateway terminating compression with uvicorn's settings byte-identical to direct both ways (its
    deflater reproduces uvicorn's output, its inflater took the client's), and the computed termination row
    equal to the direct one."""
    result = subprocess.run([sys.executable, "-m", "bench.compression", "--quick"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(120), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ")}
    direct = rows["direct to uvicorn, client offers deflate"]
    assert direct[1].startswith("`permessage-deflate"), direct
    assert rows["NGINX -> uvicorn, client offers deflate"][3] == direct[3], "NGINX passes compressed frames on"
    gateway = rows["ws-gateway -> uvicorn, client offers deflate"]
    assert gateway[1] == direct[1], "the gateway agrees what uvicorn agrees"
    assert gateway[3] == direct[3] and gateway[7] == direct[7], (gateway, direct)
    termination = [cells for cells in (
        [cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
        if line.startswith("| 12 / 5 | takeover |"))]
    assert termination and termination[0][2] == direct[3], "zlib with uvicorn's settings gives the direct bytes"


def test_quick_resume_cost_measures_plain_and_resumable_sessions() -> None:
    """`python -m bench.resume_cpu --quick`: NGINX, the gateway with a plain client and with the resumable
    helper, each measured (relay and app CPU per message) and compared with NGINX."""
    result = subprocess.run([sys.executable, "-m", "bench.resume_cpu", "--quick"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(120), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| path")}
    assert set(rows) == {"NGINX -> uvicorn, plain client", "ws-gateway -> uvicorn, plain client",
                         "ws-gateway -> uvicorn, resumable client"}, result.stdout
    for name, cells in rows.items():
        # A quick run is too short for CPU clock ticks to mean anything: it checks each path ran and was
        # measured (numbers, a ratio where NGINX's figure is not zero), not the figures.
        assert float(cells[1]) >= 0 and float(cells[3]) >= 0, (name, cells)
        assert cells[2].endswith("x") or cells[2] == "-", (name, cells)


def test_idle_memory_report_attributes_what_idle_sessions_hold() -> None:
    """`python -m bench.idle_memory --sessions 20`: every session opened and stayed, and the per-session
    total and its allocation sites are reported (the gateway's own modules among them)."""
    result = subprocess.run([sys.executable, "-m", "bench.idle_memory", "--sessions", "20", "--top", "40"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(120), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    total = next(line for line in result.stdout.splitlines() if line.startswith("total:"))
    assert int(total.split()[1].replace(",", "")) > 1000, total
    assert "gateway/leg.py:" in result.stdout and "gateway/session.py:" in result.stdout, result.stdout


def test_handshake_profile_measures_the_gateway_next_to_nginx_and_splits_the_profile() -> None:
    """`python -m bench.handshake_profile --sessions 200`: every session upgraded, echoed and closed through
    NGINX, the uvloop pipe and the gateway (a failed one stops the script), the CPU rows and the profile's split
    reported."""
    result = subprocess.run([sys.executable, "-m", "bench.handshake_profile", "--sessions", "200", "--top", "5"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(180), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert "ws-gateway" in rows and "nginx" in rows, result.stdout
    assert "uvloop pipe (bench/pipe.py: the floor)" in rows, result.stdout
    assert int(rows["ws-gateway"].split("|")[2].strip().replace(",", "")) > 0, rows["ws-gateway"]
    assert rows["ws-gateway"].rstrip(" |").endswith("x"), "the gateway is compared with the pipe"
    assert "| gateway/http.py |" in result.stdout and "| gateway/upstream.py |" in result.stdout, result.stdout


def test_app_queue_measures_what_uvicorn_holds_behind_a_pong() -> None:
    """`python -m bench.app_queue` (short) gets pongs from uvicorn's legacy websockets backend and reports a
    depth within its 32-message queue bound."""
    result = subprocess.run([sys.executable, "-m", "bench.app_queue", "--servers", "uvicorn websockets",
                             "--work-ms", "30", "--clients", "5", "--seconds", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=scaled(60), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = [line.split() for line in result.stdout.splitlines() if line.startswith("uvicorn websockets ")]
    pongs, p50, p99, deepest = (int(cell) for cell in row[3:7])
    assert pongs > 0, result.stdout
    assert 0 <= p50 <= p99 <= deepest <= 32, result.stdout
