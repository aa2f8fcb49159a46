"""Run Autobahn|Testsuite through the gateway on both legs, next to a control without it.

Why: the gateway relays frames between two WebSocket peers, so it has to be a conformant server
towards clients *and* a conformant client towards the app. Autobahn's ``wstest`` checks both, but
the echo peers at the far end (uvicorn, Python ``websockets``) have failures of their own, so
every case also runs without the gateway and only a gateway verdict worse than that control's
counts against the gateway (the ranking is in ``conformance.results``).

Legs:

* client-facing: ``wstest -m fuzzingclient`` -> gateway -> the example app's ``/ws/echo`` under
  uvicorn (agent ``ws-gateway``); control: the suite straight to uvicorn (``uvicorn-direct``).
* upstream-facing: an echo client of ours -> gateway -> ``wstest -m fuzzingserver`` (agent
  ``ws-gateway``); control: the same echo client straight to the fuzzing server (``direct-client``).

wstest is Python 2 only and runs in the chroot built by ``conformance/setup_autobahn.sh``; the
chroot shares the host's loopback. Everything listens on 127.0.0.1, every process started here is
stopped by its PID in a ``finally``, and the run is bounded by ``--timeout`` (and each upstream-leg
case by ``--case-timeout``).

Exit status: 0 when the gateway is nowhere worse than its control, 1 when it is worse on some case,
2 when the harness could not produce a complete result (timeout, a process died, no report).

Compression: the client-facing gateway runs with ``client.compression.enabled: true`` and its
control (uvicorn) with permessage-deflate on, so 12.x/13.x are negotiated on that leg; upstream
neither the gateway nor the echo client offers it, so there they are ``UNIMPLEMENTED`` on both
sides. All 216 compression cases take many minutes, so a run keeps 60 of them (every data set and
parameter set, small and fragmented messages) unless ``--compression-cases`` is given.

Usage: ``python -m conformance.run [--cases '1.*,7.*'] [--legs client,upstream] [--compression-cases]
[--summary FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import websockets.asyncio.messages
import yaml
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from conformance.results import FIELDS, Comparison, LegResult, compare, load_index, render_tables

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
DEFAULT_ROOTFS: Final = Path(os.environ.get("WS_GATEWAY_AUTOBAHN_ROOT",
                                            Path.home() / ".cache/ws-gateway/autobahn-bullseye"))
DEFAULT_OUT: Final = ROOT / "build" / "conformance"
CHROOT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Cases in Autobahn|Testsuite 25.10.1, all groups.
SUITE_CASES: Final = 517
#: The permessage-deflate cases (RFC 7692) as wstest 25.10.1 numbers them: 12.1-12.5 send five data
#: sets with the default offer, 13.1-13.7 one data set under seven offer/accept parameter sets.
#: Every subgroup has the same 18 cases of 1000 messages each, one at a time: 1-10 are 16 B, 64 B,
#: 256 B, 1 KiB, 4 KiB, 8 KiB, ... 128 KiB unfragmented; 11-18 are 8 KiB to 128 KiB messages
#: auto-fragmented to 256 B to 32 KiB frames. All 216 take many minutes (docs/conformance.md).
COMPRESSION_SUBGROUPS: Final = (*(f"12.{j}" for j in range(1, 6)), *(f"13.{j}" for j in range(1, 8)))
COMPRESSION_CASES_PER_SUBGROUP: Final = 18
#: What a run keeps of each compression subgroup without ``--compression-cases``: 1-4 (1000
#: messages of 16 B, 64 B, 256 B, 1 KiB) and 11 (8 KiB messages in 256-byte frames: RSV1 on the
#: first frame only, continuation frames inflated). That is every data set and every negotiation
#: parameter set, 60 cases in all: about 55 s of case time on the client-facing leg, gateway and control.
DEFAULT_COMPRESSION_CASES: Final = (1, 2, 3, 4, 11)

GATEWAY_AGENT: Final = "ws-gateway"
UVICORN_AGENT: Final = "uvicorn-direct"
CLIENT_AGENT: Final = "direct-client"
LEGS: Final = ("client", "upstream")

#: Largest message on every hop, in bytes. Case 9.1.6 sends 16 MiB; uvicorn's default limit is
#: exactly that, so every hop gets headroom instead of sitting on the boundary.
MAX_MESSAGE: Final = 64 * 1024 * 1024
#: Fragments per message the echo client accepts: 9.4.1 sends 4 MiB as 64-byte frames (65536).
MAX_FRAGMENTS: Final = 1 << 20
#: Frames the echo client buffers before it pauses reading (websockets' default is 16).
MAX_QUEUE: Final = 1024
#: uvicorn cannot switch its keepalive off (0 means "ping continuously"), so it gets an interval
#: longer than any run. Autobahn records every ping it receives as an event of the case, so a
#: keepalive ping in the middle of a case would fail it for a reason that has nothing to do with
#: conformance. The gateway's pings are off for the same reason (its tests cover keepalive).
UVICORN_PING_INTERVAL: Final = "86400"
#: How long the echo client waits for the fuzzing server to close TCP after the closing handshake.
ECHO_CLOSE_TIMEOUT: Final = 5.0
#: Process start-up and stop bounds, seconds.
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0

# Python websockets refuses a message of more than 4096 fragments (WEBSOCKETS_MAX_FRAGMENTS).
# That is a library limit, not a conformance rule: without this the control fails 9.x too.
if hasattr(websockets.asyncio.messages, "MAX_FRAGMENTS"):
    websockets.asyncio.messages.MAX_FRAGMENTS = MAX_FRAGMENTS

#: Runs wstest with Twisted's TCP listeners bound to loopback (its default is every address).
#: Written into the chroot at run time; Python 2.
LOOPBACK_WSTEST: Final = '''\
"""wstest with every TCP listener bound to 127.0.0.1: written by ws-gateway's conformance/run.py."""
import sys

from autobahntestsuite import wstest  # installs the reactor (choosereactor) before anything else
from twisted.internet import reactor

_listen_tcp = reactor.listenTCP


def _listen_loopback(port, factory, backlog=50, interface=""):
    return _listen_tcp(port, factory, backlog, interface or "127.0.0.1")


reactor.listenTCP = _listen_loopback
sys.exit(wstest.run())
'''


class HarnessError(Exception):
    """The harness could not run the suite to the end (not a conformance result)."""


def compression_case_ids(kept: Sequence[int] | None = None) -> list[str]:
    """The ids of the 216 permessage-deflate cases, or of those numbered ``kept`` in each subgroup."""
    return [f"{group}.{n}" for group in COMPRESSION_SUBGROUPS for n in range(1, COMPRESSION_CASES_PER_SUBGROUP + 1)
            if kept is None or n in kept]


def excluded_cases(all_compression: bool, named: Sequence[str] = ()) -> list[str]:
    """What the specs' ``exclude-cases`` get: without ``--compression-cases``, the compression cases
    a run leaves out (all but ``DEFAULT_COMPRESSION_CASES`` of each subgroup); a case ``named``
    exactly (``--cases 12.2.10``) is never left out."""
    if all_compression:
        return []
    kept = set(compression_case_ids(DEFAULT_COMPRESSION_CASES))
    return [case for case in compression_case_ids() if case not in kept and case not in named]


# --- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """True if something accepts TCP on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Managed:
    """A child process with its output in a log file, stopped by its PID (SIGTERM, then SIGKILL)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def stop(self) -> int:
        """Stop the process if it still runs, close its log, and return its exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return int(self.process.returncode)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the process's output, for error messages."""
        self.log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """Every process the run starts, so that one ``finally`` stops them all, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Managed] = []

    def start(self, name: str, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Managed:
        """Start ``args`` with stdout and stderr in ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by Managed.stop()
        process = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, cwd=cwd,  # noqa: S603
                                   env=env if env is not None else dict(os.environ), start_new_session=True)
        managed = Managed(name, process, log_path, log)
        self.started.append(managed)
        return managed

    def wait_listening(self, managed: Managed, port: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``managed`` accepts TCP on ``port``; raise if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not managed.alive():
                raise HarnessError(f"{managed.name} exited with status {managed.process.returncode} before "
                                   f"listening on {HOST}:{port}:\n{managed.tail()}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise HarnessError(f"{managed.name} did not listen on {HOST}:{port} within {timeout:g}s:\n{managed.tail()}")

    def stop_all(self) -> None:
        """Stop every process still running, newest first (the gateway before its upstream)."""
        for managed in reversed(self.started):
            managed.stop()


def chroot_command(rootfs: Path, *args: str) -> list[str]:
    """A command run inside the wstest chroot with a clean environment (no host PIP_* or PYTHON*)."""
    return ["env", "-i", "HOME=/root", f"PATH={CHROOT_PATH}", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
            "chroot", str(rootfs), *args]


def start_uvicorn(procs: Processes) -> int:
    """The example app under uvicorn on a free port, limits raised, keepalive out of the way.

    permessage-deflate stays on (uvicorn's default): the client-facing control, the suite straight
    to uvicorn, must negotiate it as the gateway does, or 12.x/13.x would compare a compressed run
    with an ``UNIMPLEMENTED`` one. The same uvicorn is the gateway's upstream, and there it never
    compresses: the gateway terminates compression, never forwards Sec-WebSocket-Extensions and
    offers nothing upstream, so uvicorn gets no offer on that connection.
    """
    port = free_port()
    managed = procs.start(f"uvicorn-{port}", [
        sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port", str(port),
        "--log-level", "warning", "--ws-max-size", str(MAX_MESSAGE), "--ws-ping-interval", UVICORN_PING_INTERVAL,
        "--ws-per-message-deflate", "true",
    ], cwd=ROOT)
    procs.wait_listening(managed, port)
    return port


def gateway_config(port: int, admin_port: int, upstream_url: str) -> dict[str, Any]:
    """The gateway's configuration for a run: loopback, limits above the suite's, no keepalive pings,
    permessage-deflate on for clients (set here, so a run does not depend on the default; the
    other ``client.compression`` settings are the defaults). Upstream there is nothing to set: the
    gateway never offers compression to the app, so the upstream-facing leg's 12.x/13.x are
    ``UNIMPLEMENTED`` by design."""
    return {
        "listen": f"{HOST}:{port}",
        "admin_listen": f"{HOST}:{admin_port}",
        "log_level": "info",
        "client": {"ping_interval": 0, "max_message_size": MAX_MESSAGE, "compression": {"enabled": True}},
        "upstream": {"url": upstream_url, "ping_interval": 0, "max_message_size": MAX_MESSAGE},
        "drain": {"listener_delay": "0s", "spread": "200ms", "timeout": "5s"},
    }


def start_gateway(procs: Processes, work: Path, gateway_src: Path, upstream_url: str, name: str) -> int:
    """``python -m gateway --config FILE`` from ``gateway_src``, in front of ``upstream_url``."""
    port, admin_port = free_port(), free_port()
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(port, admin_port, upstream_url)), encoding="utf-8")
    managed = procs.start(name, [sys.executable, "-m", "gateway", "--config", str(config_path)], cwd=gateway_src)
    procs.wait_listening(managed, admin_port)
    procs.wait_listening(managed, port)
    return port


# --- the two legs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChrootDir:
    """A directory inside the chroot, by its host path and the path wstest sees."""

    host: Path
    inside: str

    def sub(self, name: str) -> ChrootDir:
        """A path below this one, on both sides."""
        return ChrootDir(self.host / name, f"{self.inside}/{name}")


def run_client_leg(procs: Processes, rootfs: Path, scratch: ChrootDir, outdir: ChrootDir, work: Path,
                   gateway_src: Path, cases: list[str], exclude: list[str], deadline: float) -> None:
    """fuzzingclient against the gateway (in front of uvicorn) and against uvicorn directly; reports in ``outdir``."""
    uvicorn_port = start_uvicorn(procs)
    gateway_port = start_gateway(procs, work, gateway_src, f"ws://{HOST}:{uvicorn_port}", "gateway-client-leg")
    spec = {
        "outdir": outdir.inside,
        "servers": [
            {"agent": GATEWAY_AGENT, "url": f"ws://{HOST}:{gateway_port}/ws/echo"},
            {"agent": UVICORN_AGENT, "url": f"ws://{HOST}:{uvicorn_port}/ws/echo"},
        ],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    spec_file = scratch.sub("fuzzingclient.json")
    spec_file.host.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    print(f"client-facing leg: wstest fuzzingclient -> gateway :{gateway_port} and -> uvicorn :{uvicorn_port}",
          flush=True)
    wstest = procs.start("wstest-fuzzingclient",
                         chroot_command(rootfs, "wstest", "-m", "fuzzingclient", "-s", spec_file.inside), cwd=ROOT)
    try:
        wstest.process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"the client-facing leg did not finish within --timeout:\n{wstest.tail()}") from exc
    if wstest.process.returncode != 0:
        raise HarnessError(f"wstest fuzzingclient exited with status {wstest.process.returncode}:\n{wstest.tail()}")


async def echo_case(url: str, timeout: float) -> str | None:
    """Connect to ``url`` and echo every message back until the connection closes.

    Returns None when the case ran to its close (however it closed: failing the connection is
    the right answer to many cases), or a sentence saying what went wrong on our side.

    ``compression=None``: the echo client offers no permessage-deflate, like the gateway towards
    its upstream (it never offers compression there), so on the upstream-facing leg 12.x/13.x are
    ``UNIMPLEMENTED`` for the gateway and for the control alike and compare equal.
    """
    try:
        async with asyncio.timeout(timeout):
            async with ws_connect(url, max_size=MAX_MESSAGE, max_queue=MAX_QUEUE, compression=None,
                                  ping_interval=None, close_timeout=ECHO_CLOSE_TIMEOUT,
                                  open_timeout=timeout) as ws:
                async for message in ws:
                    await ws.send(message)
    except ConnectionClosed:
        return None
    except TimeoutError:
        return f"no close within {timeout:g}s"
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def fuzzingserver_request(port: int, path: str, timeout: float) -> list[str | bytes]:
    """Open a command connection to the fuzzing server (``/getCaseCount``, ``/updateReports``) and
    return the messages it sends before closing."""
    received: list[str | bytes] = []
    async with asyncio.timeout(timeout), ws_connect(f"ws://{HOST}:{port}{path}", compression=None,
                                                    ping_interval=None, max_size=MAX_MESSAGE) as ws:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                received.append(message)
    return received


async def echo_all(agents: list[tuple[str, int]], fuzz_port: int, count: int, case_timeout: float,
                   deadline: float, gateway: Managed) -> dict[str, dict[int, str]]:
    """Run cases 1..count for each (agent, port); return the echo client's problems per agent and case."""
    problems: dict[str, dict[int, str]] = {}
    for agent, port in agents:
        mine = problems.setdefault(agent, {})
        for number in range(1, count + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HarnessError(f"the upstream-facing leg did not finish within --timeout (agent {agent}, "
                                   f"case {number} of {count})")
            if not gateway.alive():
                raise HarnessError(f"the gateway exited with status {gateway.process.returncode} during case "
                                   f"{number}:\n{gateway.tail()}")
            url = f"ws://{HOST}:{port}/runCase?case={number}&agent={agent}"
            problem = await echo_case(url, min(case_timeout, remaining))
            if problem is not None:
                mine[number] = problem
            if number % 50 == 0:
                print(f"  {agent}: {number}/{count} cases", flush=True)
    await fuzzingserver_request(fuzz_port, f"/updateReports?agent={CLIENT_AGENT}", max(10.0, case_timeout))
    return problems


def run_upstream_leg(procs: Processes, rootfs: Path, scratch: ChrootDir, outdir: ChrootDir, work: Path,
                     gateway_src: Path, cases: list[str], exclude: list[str], case_timeout: float,
                     deadline: float) -> dict[str, Any]:
    """Our echo client through the gateway to fuzzingserver, and straight to it; reports in ``outdir``.

    Returns what the echo client and the fuzzing server's log say about the run: the client's own
    problems, and cases the suite ran more than once (the gateway reconnected to ``/runCase``).
    """
    fuzz_port = free_port()
    spec = {"url": f"ws://{HOST}:{fuzz_port}", "outdir": outdir.inside, "cases": cases,
            "exclude-cases": exclude, "exclude-agent-cases": {}}
    spec_file = scratch.sub("fuzzingserver.json")
    spec_file.host.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    wrapper = scratch.sub("wstest_loopback.py")
    wrapper.host.write_text(LOOPBACK_WSTEST, encoding="utf-8")
    server = procs.start("wstest-fuzzingserver", chroot_command(
        rootfs, "python2.7", wrapper.inside, "-m", "fuzzingserver", "-s", spec_file.inside, "--webport", "0"), cwd=ROOT)
    procs.wait_listening(server, fuzz_port)
    gateway_port = start_gateway(procs, work, gateway_src, f"ws://{HOST}:{fuzz_port}", "gateway-upstream-leg")
    gateway = procs.started[-1]
    count_reply = asyncio.run(fuzzingserver_request(fuzz_port, "/getCaseCount", START_TIMEOUT))
    count = int(json.loads(count_reply[0])) if count_reply else 0
    if count <= 0:
        raise HarnessError(f"the fuzzing server reports no cases for {cases}")
    print(f"upstream-facing leg: {count} cases, echo client -> gateway :{gateway_port} and -> fuzzingserver "
          f":{fuzz_port}", flush=True)
    problems = asyncio.run(echo_all([(GATEWAY_AGENT, gateway_port), (CLIENT_AGENT, fuzz_port)], fuzz_port, count,
                                    case_timeout, deadline, gateway))
    server.log.flush()
    runs = Counter(re.findall(r"Running test case ID (\S+) for agent (\S+) from peer",
                              server.log_path.read_text(encoding="utf-8", errors="replace")))
    repeated = {f"{agent} {case_id}": n for (case_id, agent), n in sorted(runs.items()) if n > 1}
    return {"echo_client_problems": problems, "cases_run_more_than_once": repeated}


# --- reporting -----------------------------------------------------------------------------------
def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run git on this checkout without taking its optional locks (another engineer may be working in it)."""
    return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],  # noqa: S603, S607
                          capture_output=True, check=False)


def gateway_source(rev: str | None, work: Path) -> tuple[Path, dict[str, Any]]:
    """Where the gateway under test comes from, and what the summary says about it.

    Without ``rev``: this checkout's working tree, as it is (its HEAD and whether gateway/ has
    changes are recorded). With ``rev``: ``git archive REV gateway`` unpacked under ``work``, so
    that a run can measure a commit while the working tree is being edited.
    """
    head = _git("rev-parse", "HEAD").stdout.decode().strip() or None
    if rev is None:
        status = _git("status", "--porcelain", "--", "gateway")
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return ROOT, {"source": "working tree", "checkout_head": head, "commit": head, "gateway_dirty": dirty}
    resolved = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if resolved.returncode != 0:
        raise HarnessError(f"--gateway-rev {rev}: not a commit in {ROOT}: {resolved.stderr.decode().strip()}")
    commit = resolved.stdout.decode().strip()
    archive = _git("archive", "--format=tar", commit, "gateway")
    if archive.returncode != 0:
        raise HarnessError(f"git archive {commit} gateway failed: {archive.stderr.decode().strip()}")
    target = work / f"gateway-{commit[:12]}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target, {"source": f"git archive {rev}", "checkout_head": head, "commit": commit, "gateway_dirty": False}


def copy_reports(source: Path, reports_dir: Path, leg: str) -> Path:
    """Copy one leg's report directory out of the chroot to ``<reports_dir>/<leg>-leg``."""
    target = reports_dir / f"{leg}-leg"
    if target.exists():
        shutil.rmtree(target)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.mkdir(parents=True)
    return target


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="*",
                        help="comma-separated case patterns as wstest takes them, e.g. '1.*,2.*,7.*' (default: all, "
                             "but see --compression-cases)")
    parser.add_argument("--compression-cases", action="store_true",
                        help="run all 216 permessage-deflate cases (12.x, 13.x) that --cases selects; without "
                             f"it only cases {', '.join(map(str, DEFAULT_COMPRESSION_CASES))} of each of the 12 "
                             "compression subgroups run (60 cases), unless a case is named exactly in --cases")
    parser.add_argument("--legs", default=",".join(LEGS), help="which legs to run: client, upstream or both")
    parser.add_argument("--reports-dir", type=Path, default=DEFAULT_OUT / "reports",
                        help="where the raw reports and process logs go (default: build/conformance/reports)")
    parser.add_argument("--summary", type=Path, default=DEFAULT_OUT / "summary.json",
                        help="machine-readable result (default: build/conformance/summary.json)")
    parser.add_argument("--rootfs", type=Path, default=DEFAULT_ROOTFS,
                        help="the chroot built by conformance/setup_autobahn.sh")
    parser.add_argument("--gateway-rev", metavar="REV",
                        help="test the gateway/ package of this git revision (e.g. HEAD) instead of the working tree")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on the whole run, seconds")
    parser.add_argument("--case-timeout", type=float, default=60.0,
                        help="bound on one upstream-leg case, seconds")
    args = parser.parse_args(argv)
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.leg_list = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    args.exclude_list = excluded_cases(args.compression_cases, args.case_list)
    unknown = sorted(set(args.leg_list) - set(LEGS))
    if unknown or not args.leg_list or not args.case_list:
        parser.error(f"--legs takes {', '.join(LEGS)} (got {args.legs!r}); --cases must name at least one case")
    return args


@contextlib.contextmanager
def scratch_dir(rootfs: Path) -> Iterator[ChrootDir]:
    """A fresh directory under the chroot's /tmp for specs and reports, removed afterwards."""
    if not (rootfs / "usr/local/bin/wstest").exists():
        raise HarnessError(f"no wstest in {rootfs}: run conformance/setup_autobahn.sh first")
    host = Path(tempfile.mkdtemp(prefix="ws-gateway-conformance-", dir=rootfs / "tmp"))
    try:
        yield ChrootDir(host, f"/tmp/{host.name}")  # noqa: S108 - the chroot's /tmp, made by mkdtemp above
    finally:
        shutil.rmtree(host, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (make or CI giving up) unwinds like Ctrl-C, so the ``finally`` blocks stop every process."""
    raise SystemExit(128 + signum)


def run_legs(args: argparse.Namespace, reports_dir: Path, summary: dict[str, Any]) -> list[LegResult]:
    """Run the legs asked for and read their reports (copied out of the chroot even after a failure).

    Raises:
        HarnessError: a leg could not run to the end; the reports of the legs that did are kept.
    """
    results: list[LegResult] = []
    procs = Processes(reports_dir / "logs")
    work = Path(tempfile.mkdtemp(prefix="ws-gateway-conformance-"))
    try:
        gateway_src, summary["gateway"] = gateway_source(args.gateway_rev, work)
        with scratch_dir(args.rootfs) as scratch:
            for leg in args.leg_list:
                outdir = scratch.sub(f"{leg}-leg")
                name, control = ("client-facing", UVICORN_AGENT) if leg == "client" else ("upstream-facing",
                                                                                          CLIENT_AGENT)
                try:
                    if leg == "client":
                        run_client_leg(procs, args.rootfs, scratch, outdir, work, gateway_src, args.case_list,
                                       args.exclude_list, deadline=args.deadline)
                    else:
                        summary["upstream_leg_notes"] = run_upstream_leg(
                            procs, args.rootfs, scratch, outdir, work, gateway_src, args.case_list,
                            args.exclude_list, args.case_timeout, deadline=args.deadline)
                finally:
                    procs.stop_all()
                    procs.started.clear()
                    copied = copy_reports(outdir.host, reports_dir, leg)
                results.append(LegResult(name, GATEWAY_AGENT, control,
                                         load_index(copied, GATEWAY_AGENT), load_index(copied, control)))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_report(results: list[LegResult], comparisons: list[Comparison], summary: dict[str, Any]) -> None:
    """The tables, what the upstream leg noticed, and every case where the gateway is worse."""
    print()
    print(render_tables(results))
    print("Cells are gateway/control counts; bold where they differ. Ranking: conformance/results.py.")
    notes = summary.get("upstream_leg_notes", {})
    problems = {agent: cases for agent, cases in notes.get("echo_client_problems", {}).items() if cases}
    if problems:
        print(f"upstream-facing leg, echo client problems (case number: problem): {json.dumps(problems)}")
    if notes.get("cases_run_more_than_once"):
        print("upstream-facing leg, cases the fuzzing server ran more than once (the gateway reconnected): "
              + json.dumps(notes["cases_run_more_than_once"]))
    worse = [c for c in comparisons if c.worse]
    if worse:
        labels = dict(FIELDS)
        by_field = ", ".join(f"{n} {labels[key]}" for key, n in sorted(Counter(c.key for c in worse).items()))
        print(f"\nThe gateway is WORSE than its control on {len({(c.leg, c.case_id) for c in worse})} case(s) "
              f"({by_field}):")
        for c in worse:
            print(f"  {c.sentence()}")
    else:
        print("\nThe gateway is nowhere worse than its control.")
    if len(comparisons) > len(worse):
        print(f"{len(comparisons) - len(worse)} other verdict(s) differ without being worse (in the summary).")
    print(f"\nsummary: {summary['summary_path']}\nreports: {summary['reports_dir']} (HTML: <leg>-leg/index.html)\n"
          f"took {summary['duration_seconds']:g}s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the legs asked for, print the tables and the worse cases, write the summary."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    args.deadline = started + args.timeout
    reports_dir: Path = args.reports_dir.resolve()
    for stale in ("logs", "client-leg", "upstream-leg"):
        shutil.rmtree(reports_dir / stale, ignore_errors=True)
    (reports_dir / "logs").mkdir(parents=True)
    summary: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cases": args.case_list,
        "compression_cases": "all" if args.compression_cases else "subset",
        "exclude_cases": args.exclude_list,
        "legs": {},
        "reports_dir": str(reports_dir),
        "summary_path": str(args.summary.resolve()),
    }
    if args.exclude_list:
        print(f"compression cases (12.x, 13.x): {len(compression_case_ids()) - len(args.exclude_list)} of "
              f"{len(compression_case_ids())} at most (cases {', '.join(map(str, DEFAULT_COMPRESSION_CASES))} of each "
              "subgroup); --compression-cases runs them all", flush=True)
    error: str | None = None
    results: list[LegResult] = []
    try:
        results = run_legs(args, reports_dir, summary)
    except HarnessError as exc:
        error = str(exc)

    comparisons = [c for result in results for c in compare(result)]
    for result in results:
        summary["legs"][result.leg] = result.as_json()
        if not result.gateway or not result.control:
            error = error or f"{result.leg}: no report for one of the agents (see {reports_dir})"
    summary.update({
        "duration_seconds": round(time.monotonic() - started, 1),
        "error": error,
        "worse": [{"leg": c.leg, "case": c.case_id, "field": c.key, "gateway": c.gateway, "control": c.control,
                   "detail": dict(c.detail)} for c in comparisons if c.worse],
        "different_not_worse": [{"leg": c.leg, "case": c.case_id, "field": c.key, "gateway": c.gateway,
                                 "control": c.control} for c in comparisons if not c.worse],
    })
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print_report(results, comparisons, summary)
    if error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    return 1 if any(c.worse for c in comparisons) else 0


if __name__ == "__main__":
    sys.exit(main())
