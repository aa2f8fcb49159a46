"""Reconnect storm: a draining relay's sessions reconnect to another one; how does the other one cope?

One command, bounded, loopback only, the fast echo server (bench/echo_server.py) as the upstream:

    python -m bench.storm                   # 5,000 sessions, drain.spread 10s: about 65 s
    python -m bench.storm --quick           # 200 sessions, 2s spread: about 25 s; the tests use it
    python -m bench.storm --sessions 9000 --spread 9 --jitter reconnecting-websocket

(Each session holds two fds in B and in the echo server: with ``ulimit -n`` 20000, stay below ~9,500.)

What a drain produces is handshakes: a pod holding N sessions spreads its 1012s over drain.spread,
and every client reconnects to the pods that remain. For each relay this runs two instances,
"A" and "B", in front of the same echo upstream, and N simulated browser tabs in this process:

1. every tab connects to A (paced, ``--connect-rate``) and proves its session with one echoed message;
2. A drains. ws-gateway: SIGTERM, with drain.listener_delay 0s and drain.spread ``--spread``, so A
   itself sends each session 1012 at its slot of the window. NGINX has no such drain (on SIGQUIT it
   keeps WebSocket connections until they end), so it is emulated at the client: at the same slots
   (``spread * i / N``, tabs in random order) a tab behaves exactly as on receiving a 1012 from A
   (it answers the close frame and its connection ends);
3. on its connection's end each tab waits a reconnect delay drawn as its client library would
   (``--jitter``), connects to B, and retries on failure with that library's backoff;
4. measured: time from the drain's start until every tab is re-established on B (101 received
   and one message echoed through B); handshake latency at B (connect() to 101) p50/p99;
   failed attempts by kind; B's CPU seconds from /proc (utime+stime of its process tree)
   between the drain's start and the last re-establishment, per successful handshake; B's peak
   RSS (VmHWM); B's fds before, during and after.

Why the NGINX comparison is fair for "what B handles": B sees the same arrivals in both runs. The
drain slots are the same (N evenly over the spread), each tab draws the same reconnect delays in
both runs (one seed per tab), and the tab code after "my connection to A ended" is the same. What
differs is only on A's side, which is not measured: ws-gateway A really sends 1012 and closes each
session, NGINX A only sees its clients leave; either way A spends CPU on the same 2 cores as B, so
A's CPU is reported for both. ``--emulate-gateway-drain`` drains gateway A the NGINX way (no
SIGTERM) to compare like with like on A's side too.

Reconnect delays (``--jitter``):

* ``full`` (default): "full jitter" exponential backoff (AWS Architecture Blog, "Exponential
  Backoff And Jitter"), the policy the gateway itself uses towards its upstream: the first delay
  uniform(0, ``--jitter-max`` = 1 s), each retry's ceiling doubled up to 10 s; 4 s connect timeout.
  The reconnections follow the drain's 1012s closely: N / spread per second.
* ``reconnecting-websocket``: the defaults of pladaria/reconnecting-websocket 4.x, a widely used
  npm library: minReconnectionDelay = 1000 + Math.random() * 4000 ms (drawn once per page load,
  so a tab waits uniform(1, 5) s), then x1.3 per failed retry up to maxReconnectionDelay 10 s;
  connectionTimeout 4 s (``--connect-timeout``).

The tabs run in this one process (uvloop, raw protocol): it needs about 450 µs of CPU per tab
for the whole storm, and its event-loop lag is printed, which bounds how exactly small latencies
are measured. The load average and CPU pressure (PSI) are printed at the start and end of each
storm, and B's time runnable but waiting for a CPU: the machine is shared, and a storm measures
latency, which a busy neighbour inflates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

import uvloop

from bench.proxies import nginx_command
from bench.run import HOST, ROOT, Server, cpu_seconds, free_port, process_tree, run_upstream, wait_port
from gateway.core.closecodes import CloseCode
from gateway.core.codec import Opcode, ProtocolViolation, build_close_payload, build_frame, parse_close_payload
from gateway.core.handshake import accept_key, new_key

RELAYS: Final = ("ws-gateway", "nginx")
HELLO: Final = b"storm hello"
CLOSE_WAIT: Final = 5.0
"""Seconds a tab waits for the server to end TCP after a close frame before dropping it itself."""
USER_AGENT: Final = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/120.0.0.0 Safari/537.36")


# --- reconnect delays (pure) ----------------------------------------------------------------------
Delays = Callable[[random.Random], Iterator[float]]
"""Makes one tab's reconnect delays, first delay first, from the tab's own random source."""


def full_jitter(first_max: float, cap: float = 10.0) -> Delays:
    """Full jitter: uniform(0, ceiling), the ceiling starting at ``first_max`` and doubling up to ``cap``."""
    def delays(rng: random.Random) -> Iterator[float]:
        ceiling = first_max
        while True:
            yield rng.uniform(0.0, ceiling)
            ceiling = min(cap, ceiling * 2)
    return delays


def reconnecting_websocket(rng: random.Random) -> Iterator[float]:
    """pladaria/reconnecting-websocket 4.x defaults: uniform(1, 5) s once per page, x1.3 per retry, cap 10 s."""
    base = 1.0 + rng.random() * 4.0
    retry = 0
    while True:
        yield min(10.0, base * 1.3**retry)
        retry += 1


# --- one WebSocket connection of a simulated browser tab ------------------------------------------
class State(enum.Enum):
    """The connection's state, changed only in :meth:`StormSocket._set`."""

    CONNECTING = "connecting"  # TCP connect and upgrade request, waiting for 101
    VERIFYING = "verifying"  # 101 received, waiting for the echo of the first message
    OPEN = "open"
    CLOSING = "closing"  # close frame received or sent, waiting for TCP to end
    CLOSED = "closed"


class AttemptFailed(Exception):
    """A connection attempt that did not end open; ``kind`` is the failure's bucket in the report."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class StormSocket(asyncio.Protocol):
    """A browser-like WebSocket client connection: upgrade, one echoed message, pongs, the closing handshake."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.key = new_key()
        self.port = port
        self.state = State.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded_at = 0.0
        self.close_code: int | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        """Done when the session is proven (101 and the echo); failed with :class:`AttemptFailed`."""
        self.ended: asyncio.Future[int | None] = loop.create_future()
        """Done when TCP ended: the close code received, or None for a drop without a close frame."""

    def _set(self, state: State) -> None:
        self.state = state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = sock = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock.write(  # what Chrome sends, so the relay parses a real-sized request
            f"GET /echo HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
            f"Cache-Control: no-cache\r\nUser-Agent: {USER_AGENT}\r\nUpgrade: websocket\r\n"
            f"Origin: http://{HOST}:{self.port}\r\nSec-WebSocket-Version: 13\r\n"
            "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.state is State.CONNECTING:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[:end + 4]
            self.upgraded_at = time.monotonic()
            status = head[9:12]
            if status != "101":
                return self._fail(f"HTTP {status}")
            if f"sec-websocket-accept: {accept_key(self.key)}".lower() not in head.lower():
                return self._fail("bad 101")
            self._set(State.VERIFYING)
            self._send(Opcode.TEXT, HELLO)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            length, header = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, header = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, header = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < header + length:
                return
            opcode, payload = buf[0] & 0x0F, bytes(buf[header:header + length])
            del buf[:header + length]
            if opcode == Opcode.PING and self.state is not State.CLOSING:
                self._send(Opcode.PONG, payload)
            elif opcode == Opcode.CLOSE:
                self._closed_by_server(payload)
            elif opcode in (Opcode.TEXT, Opcode.BINARY) and self.state is State.VERIFYING:
                self._set(State.OPEN)
                self.ready.set_result(None)

    def _closed_by_server(self, payload: bytes) -> None:
        """Answer a close frame with the same code, as browsers do, and wait for the server to end TCP."""
        try:
            self.close_code = parse_close_payload(payload)[0]
        except ProtocolViolation as violation:
            self.close_code = violation.code
        if self.state is not State.CLOSING:
            self._set(State.CLOSING)
            self._send(Opcode.CLOSE, build_close_payload(self.close_code, "")
                       if self.close_code != CloseCode.NO_STATUS else b"")
            asyncio.get_running_loop().call_later(CLOSE_WAIT, self.abort)
        if not self.ready.done():
            self.ready.set_exception(AttemptFailed(f"closed {self.close_code} before open"))

    def restart_as_if_told(self) -> None:
        """The emulated drain: what this tab does on a 1012 from the server (answer it; the connection ends)."""
        if self.state is State.OPEN and self.transport is not None:
            self.close_code = int(CloseCode.SERVICE_RESTART)
            self._set(State.CLOSING)
            self._send(Opcode.CLOSE, build_close_payload(CloseCode.SERVICE_RESTART, ""))
            self.transport.close()

    def leave(self) -> None:
        """The tab is closed: close 1000 (going away would be 1001; either is fine for a relay)."""
        if self.state is State.OPEN:
            self._set(State.CLOSING)
            self._send(Opcode.CLOSE, build_close_payload(CloseCode.NORMAL, ""))
            asyncio.get_running_loop().call_later(CLOSE_WAIT, self.abort)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(build_frame(opcode, payload, masked=True))

    def _fail(self, kind: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(AttemptFailed(kind))
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        before = self.state
        self._set(State.CLOSED)
        if not self.ready.done():
            self.ready.set_exception(AttemptFailed("reset" if before is State.CONNECTING else "no echo"))
        if not self.ended.done():
            self.ended.set_result(self.close_code)


def _consume(future: asyncio.Future[None]) -> None:
    """Mark a future's outcome as seen (asyncio logs exceptions nobody retrieved)."""
    if not future.cancelled():
        future.exception()


async def attempt(port: int, timeout: float) -> tuple[StormSocket, float]:
    """One connection attempt: ``(open socket, seconds from connect() to 101)``.

    Raises:
        AttemptFailed: refused, timeout (not open within ``timeout``), HTTP status, reset, other errno.
    """
    loop = asyncio.get_running_loop()
    sock = StormSocket(port, loop)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: sock, HOST, port)
            await sock.ready
    except TimeoutError:
        sock.abort()
        sock.ready.add_done_callback(_consume)  # its "reset" is this timeout's echo, not news
        raise AttemptFailed("timeout") from None
    except ConnectionRefusedError:
        raise AttemptFailed("refused") from None
    except ConnectionResetError:
        raise AttemptFailed("reset") from None
    except OSError as exc:
        raise AttemptFailed(os.strerror(exc.errno) if exc.errno else type(exc).__name__) from None
    return sock, sock.upgraded_at - started


# --- the storm ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Settings:
    """One run's parameters; times in seconds."""

    sessions: int
    spread: float
    jitter: str
    jitter_max: float
    connect_rate: float
    """Tabs connecting to A per second, before the storm."""
    connect_timeout: float
    window: float
    """How long after the drain starts the tabs get to re-establish before the storm counts as failed."""
    seed: int
    log_level: str
    emulate_gateway_drain: bool = False
    """Drain gateway A at the clients as NGINX's is, instead of SIGTERM: A only sees its clients leave."""

    @property
    def delays(self) -> Delays:
        return reconnecting_websocket if self.jitter == "reconnecting-websocket" else full_jitter(self.jitter_max)


@dataclass
class Pair:
    """Relay instances A and B of one kind, with what the storm needs to know about them."""

    name: str
    a: Server
    b: Server
    a_port: int
    b_port: int
    logs: dict[str, Path]
    emulated_drain: bool


@dataclass
class StormResult:
    """Everything one storm measured; times relative to the drain's start."""

    name: str
    sessions: int
    load_start: str
    load_end: str = ""
    reestablished: int = 0
    time_to_all: float | None = None
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    initial_failures: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[str] = field(default_factory=Counter)
    triggers: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """When each handshake at B completed."""
    b_cpu: float = 0.0
    b_wait: float = 0.0
    """Seconds B was runnable but waiting for a CPU (other processes had both)."""
    b_busiest: float = 0.0
    tcp: Counter[str] = field(default_factory=Counter)
    a_cpu: float = 0.0
    client_cpu: float = 0.0
    b_peak_rss_mib: float = 0.0
    b_fds: tuple[int, int, int] = (0, 0, 0)
    a_exit: str = ""
    peak_rate: int = 0
    """Most handshakes completed at B in one second."""
    loop_lag_ms: tuple[float, float] = (0.0, 0.0)
    connect_seconds: float = 0.0
    drain_started: float = 0.0
    """time.monotonic() when A's drain began."""
    log_notes: list[str] = field(default_factory=list)

    @property
    def handshakes(self) -> int:
        return len(self.latencies)


class Tab:
    """One simulated browser tab: connected to A, reconnects to B when its connection ends."""

    def __init__(self, index: int, settings: Settings, result: StormResult) -> None:
        self.rng = random.Random(settings.seed * 1_000_003 + index)  # the same draws in every relay's run
        self.settings = settings
        self.result = result
        self.sock: StormSocket | None = None
        self.on_b = False

    async def join(self, port: int, start_at: float, gate: asyncio.Semaphore) -> None:
        """Connect to A at ``start_at`` (at most ``gate`` handshakes in flight), retrying briefly."""
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        async with gate:
            while True:
                try:
                    self.sock, _ = await attempt(port, self.settings.connect_timeout)
                    return
                except AttemptFailed as failed:
                    self.result.initial_failures[failed.kind] += 1
                    await asyncio.sleep(random.uniform(0.05, 0.5))  # not self.rng: keep its draws for the storm

    async def storm(self, port: int, drain_started: float, all_back: Callable[[], None]) -> None:
        """Wait for the connection to A to end, then reconnect to B as the client library would."""
        assert self.sock is not None
        code = await self.sock.ended
        self.result.triggers.append(time.monotonic() - drain_started)
        self.result.close_codes["none (dropped)" if code is None else str(code)] += 1
        while True:
            for delay in self.settings.delays(self.rng):
                await asyncio.sleep(delay)
                try:
                    self.sock, latency = await attempt(port, self.settings.connect_timeout)
                except AttemptFailed as failed:
                    self.result.failures[failed.kind] += 1
                    continue
                self.result.latencies.append(latency)
                self.result.arrivals.append(self.sock.upgraded_at - drain_started)
                break
            if not self.on_b:
                self.on_b = True
                all_back()
            code = await self.sock.ended  # the storm cancels this wait; before that, an end is a loss
            self.result.failures["dropped at B" if code is None else f"closed {code} at B"] += 1


def fd_count(pid: int) -> int:
    """Open fds of ``pid``'s process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
    return total


def peak_rss_mib(pid: int) -> float:
    """Peak RSS (VmHWM) of ``pid``'s process tree, summed, in MiB."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(found.group(1)) if found else 0
    return total / 1024


def self_cpu() -> float:
    """This process's (the tabs') CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_queue_seconds(pid: int) -> float:
    """Seconds ``pid``'s threads (and its children's) spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for member in process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{member}/task"):
                total += int(Path(f"/proc/{member}/task/{task}/schedstat").read_text().split()[1])
        except OSError:
            continue
    return total / 1e9


def tcp_counters() -> Counter[str]:
    """The kernel's listen-queue and SYN-retransmit counters (TcpExt); a storm's delta shows dropped SYNs."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return Counter({key: int(row.get(key, 0)) for key in ("ListenOverflows", "ListenDrops", "TCPSynRetrans")})
    return Counter()


def cpu_pressure() -> str:
    """The machine's CPU pressure (PSI "some" avg10/avg60): the share of time something waited for a CPU."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return "CPU pressure n/a"
    return f"CPU pressure {some[1].split('=')[1]}%/{some[2].split('=')[1]}% (some, avg10/avg60)"


def machine_load() -> str:
    """Load average and CPU pressure, for the reader to judge how noisy a storm was."""
    return f"load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}, {cpu_pressure()}"


async def watch(pid: int, lag: list[float], b_samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Every 50 ms, this process's event-loop lag (how late the tabs see what arrives); every 250 ms B's CPU."""
    tick = 0
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.05)
        lag.append(time.monotonic() - before - 0.05)
        if tick % 5 == 0:
            b_samples.append((time.monotonic(), cpu_seconds(pid)))
        tick += 1


def busiest_second(samples: list[tuple[float, float]]) -> float:
    """The largest share of one CPU that B used over any window of about one second."""
    best = 0.0
    for i, (t0, c0) in enumerate(samples):
        for t1, c1 in samples[i + 1:]:
            if t1 - t0 >= 0.95:
                best = max(best, (c1 - c0) / (t1 - t0))
                break
    return best


async def storm(pair: Pair, settings: Settings) -> StormResult:
    """Connect every tab to A, drain A, measure the reconnection to B, then let the tabs leave."""
    assert pair.a.pid is not None and pair.b.pid is not None
    result = StormResult(pair.name, settings.sessions, machine_load())
    tabs = [Tab(i, settings, result) for i in range(settings.sessions)]
    gate = asyncio.Semaphore(64)
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(tab.join(pair.a_port, started + i / settings.connect_rate, gate)
                         for i, tab in enumerate(tabs))),
        timeout=settings.sessions / settings.connect_rate + 60)
    result.connect_seconds = time.monotonic() - started
    await asyncio.sleep(1.0)  # let both relays settle before the baseline
    fds_before = fd_count(pair.b.pid)
    storms = await drain(pair, settings, tabs, result)
    await asyncio.sleep(1.0)  # anything B drops just after the last handshake counts too
    result.reestablished = sum(1 for tab in tabs if tab.on_b and tab.sock is not None and tab.sock.state is State.OPEN)
    result.b_peak_rss_mib = peak_rss_mib(pair.b.pid)
    fds_during = fd_count(pair.b.pid)
    result.peak_rate = max(Counter(int(t) for t in result.arrivals).values(), default=0)
    result.a_exit = await a_exit(pair, settings, result.drain_started)
    for task in storms:
        task.cancel()
    await asyncio.gather(*storms, return_exceptions=True)
    for tab in tabs:
        if tab.sock is not None:
            tab.sock.leave()
    deadline = time.monotonic() + 15
    while fd_count(pair.b.pid) > fds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    result.b_fds = (fds_before, fds_during, fd_count(pair.b.pid))
    for tab in tabs:
        if tab.sock is not None:
            tab.sock.abort()
    result.load_end = machine_load()
    return result


async def drain(pair: Pair, settings: Settings, tabs: list[Tab], result: StormResult) -> list[asyncio.Task[None]]:
    """Start A's drain (SIGTERM, or emulated at the tabs) and wait until every tab is back on B.

    Returns the tabs' storm tasks, still watching their sessions on B.
    """
    assert pair.a.pid is not None and pair.b.pid is not None
    back = 0
    everyone_back = asyncio.Event()

    def one_back() -> None:
        nonlocal back
        back += 1
        if back == settings.sessions:
            everyone_back.set()

    lag: list[float] = []
    b_samples: list[tuple[float, float]] = []
    stop_watch = asyncio.Event()
    watcher = asyncio.ensure_future(watch(pair.b.pid, lag, b_samples, stop_watch))
    b_cpu0, a_cpu0, client_cpu0 = cpu_seconds(pair.b.pid), cpu_seconds(pair.a.pid), self_cpu()
    b_wait0, tcp0 = run_queue_seconds(pair.b.pid), tcp_counters()
    result.drain_started = time.monotonic()
    storms = [asyncio.create_task(tab.storm(pair.b_port, result.drain_started, one_back)) for tab in tabs]
    if pair.emulated_drain:
        loop = asyncio.get_running_loop()
        order = list(tabs)
        random.Random(settings.seed).shuffle(order)
        for i, tab in enumerate(order):
            assert tab.sock is not None
            loop.call_at(loop.time() + settings.spread * i / len(order), tab.sock.restart_as_if_told)
    else:
        assert pair.a.process is not None
        pair.a.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(everyone_back.wait(), timeout=settings.window)
        result.time_to_all = time.monotonic() - result.drain_started
    result.b_cpu = cpu_seconds(pair.b.pid) - b_cpu0
    result.a_cpu = cpu_seconds(pair.a.pid) - a_cpu0  # an exited A stays a zombie until a_exit() reaps it
    result.client_cpu = self_cpu() - client_cpu0
    result.b_wait = run_queue_seconds(pair.b.pid) - b_wait0
    result.tcp = tcp_counters() - tcp0
    stop_watch.set()
    await watcher
    result.b_busiest = busiest_second(b_samples)
    lag.sort()
    result.loop_lag_ms = (lag[int(len(lag) * 0.99)] * 1000 if lag else 0.0, lag[-1] * 1000 if lag else 0.0)
    return storms


async def a_exit(pair: Pair, settings: Settings, drain_started: float) -> str:
    """When ws-gateway A exited after SIGTERM (it should, within drain.timeout), as a sentence."""
    if pair.emulated_drain or pair.a.process is None:
        return "A not stopped (drain emulated at the clients)"
    deadline = drain_started + settings.spread + 40
    while pair.a.process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if pair.a.process.poll() is None:
        return f"A still running {time.monotonic() - drain_started:.1f}s after SIGTERM"
    return f"A exited with {pair.a.process.returncode} by {time.monotonic() - drain_started:.1f}s after SIGTERM"


# --- processes ------------------------------------------------------------------------------------
def start_logged(name: str, args: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Server:
    """Start a server with stderr into ``log`` and wait for its port."""
    with log.open("wb") as sink:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
                                   env={**os.environ, **(env or {})})
    server = Server(name, process, f"http://{HOST}:{port}")
    try:
        wait_port(port, process)
    except RuntimeError:
        server.stop()
        raise
    return server


def start_pair(name: str, upstream_port: int, settings: Settings, workdir: Path) -> Pair:
    """Start relay instances A and B in front of the echo upstream."""
    servers: list[Server] = []
    logs: dict[str, Path] = {}
    ports: list[int] = []
    try:
        for role in ("A", "B"):
            port = free_port()
            if name == "ws-gateway":
                env = {"GATEWAY_DRAIN_LISTENER_DELAY": "0s", "GATEWAY_DRAIN_SPREAD": f"{settings.spread:g}s",
                       "GATEWAY_DRAIN_TIMEOUT": f"{settings.spread + 30:g}s", "GATEWAY_MAX_SESSIONS": "20000",
                       "GATEWAY_LOG_LEVEL": settings.log_level}
                args = [sys.executable, "-m", "gateway", "--listen", f"{HOST}:{port}", "--admin-listen",
                        f"{HOST}:{free_port()}", "--upstream", f"ws://{HOST}:{upstream_port}"]
                logs[role] = workdir / f"gateway-{role}.log"
                servers.append(start_logged(f"{name} {role}", args, port, logs[role], env))
            else:
                prefix = workdir / f"nginx-{role}"
                args = nginx_command(prefix, port, upstream_port, read_timeout="1h",
                                     worker_connections=2 * settings.sessions + 1024)
                logs[role] = prefix / "error.log"
                servers.append(start_logged(f"{name} {role}", args, port, workdir / f"nginx-{role}.stderr"))
            ports.append(port)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return Pair(name, servers[0], servers[1], ports[0], ports[1], logs,
                emulated_drain=name != "ws-gateway" or settings.emulate_gateway_drain)


def log_notes(pair: Pair) -> list[str]:
    """What each instance logged at warning and above (grouped), and how A's sessions ended."""
    notes = []
    for role, path in pair.logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        levels: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        endings: Counter[str] = Counter()
        for line in lines:
            if pair.name == "ws-gateway":
                try:
                    entry = json.loads(line)
                except ValueError:
                    levels["not json"] += 1
                    messages[line[:100]] += 1
                    continue
                level = str(entry.get("level"))
                if entry.get("event") == "session_closed":
                    endings[f"{entry.get('cause')}/{entry.get('client_code')}"] += 1
                msg = str(entry.get("msg", ""))
            else:
                found = re.search(r"\[(\w+)\] \d+#\d+: (?:\*\d+ )?(.*?)(?:, client:.*)?$", line)
                level, msg = (found.group(1), found.group(2)) if found else ("?", line)
            levels[level] += 1
            if level not in ("info", "debug", "notice"):
                messages[re.sub(r"\d+", "N", msg)[:110]] += 1
        summary = ", ".join(f"{count} {level}" for level, count in levels.most_common()) or "nothing"
        notes.append(f"{role} log: {summary}")
        if endings:
            notes.append(f"{role} sessions closed (cause/client code): "
                         + ", ".join(f"{key} x{count}" for key, count in endings.most_common()))
        notes.extend(f"{role} log x{count}: {msg}" for msg, count in messages.most_common(5))
    return notes


# --- report ---------------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(len(ordered) * fraction + 0.5) - 1))]


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure, or "-" when not measured."""
    return "-" if value is None else f"{value:,.{digits}f}"


def cpu_per_handshake(r: StormResult) -> float | None:
    """B's CPU µs per successful handshake during the storm."""
    return r.b_cpu * 1e6 / r.handshakes if r.handshakes else None


def report(results: list[StormResult]) -> str:
    """The markdown table (ratios against NGINX in the same run) and each storm's notes."""
    nginx = next((r for r in results if r.name == "nginx"), None)
    reference = cpu_per_handshake(nginx) if nginx else None
    lines = ["", "| relay | sessions | re-established | time to all re-established s | handshake p50 ms | p99 ms "
             "| failures | B CPU s | B CPU µs/handshake | vs nginx | B peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        p50, p99 = percentile(r.latencies, 0.5), percentile(r.latencies, 0.99)
        failures = sum(r.failures.values())
        detail = f" ({', '.join(f'{k} {v}' for k, v in r.failures.most_common())})" if failures else ""
        per = cpu_per_handshake(r)
        lines.append(
            f"| {r.name} | {r.sessions:,} | {r.reestablished:,} | {fmt(r.time_to_all, 2)} "
            f"| {fmt(p50 * 1000 if p50 is not None else None)} | {fmt(p99 * 1000 if p99 is not None else None)} "
            f"| {failures}{detail} | {r.b_cpu:.2f} | {fmt(per, 0)} "
            f"| {f'{per / reference:.2f}x' if per and reference else '-'} | {r.b_peak_rss_mib:.1f} |")
    for r in results:
        client_per = r.client_cpu * 1e6 / r.handshakes if r.handshakes else 0.0
        window = f"{min(r.triggers):.2f}-{max(r.triggers):.2f}s" if r.triggers else "-"
        after_last = r.time_to_all - max(r.triggers) if r.time_to_all is not None and r.triggers else None
        lines += [
            "", f"{r.name}:",
            f"- at the start: {r.load_start}; at the end: {r.load_end}",
            f"- {r.sessions:,} tabs connected to A in {r.connect_seconds:.1f}s; failed attempts then: "
            f"{dict(r.initial_failures) or 0}",
            f"- connections to A ended over {window} after the drain started; close codes seen: "
            f"{dict(r.close_codes)}; {r.a_exit}",
            f"- the last tab was back on B {fmt(after_last, 2)}s after the last connection to A ended",
            f"- {r.handshakes:,} handshakes at B, at most {r.peak_rate:,} in one second; slowest "
            f"{fmt(max(r.latencies, default=0) * 1000)} ms; A's CPU during the storm {r.a_cpu:.2f}s; the tabs' process "
            f"{r.client_cpu:.2f}s ({client_per:.0f} µs/handshake), event-loop lag p99 {r.loop_lag_ms[0]:.1f} ms, "
            f"max {r.loop_lag_ms[1]:.1f} ms",
            f"- B during the storm: {r.b_cpu:.2f}s CPU, busiest second {r.b_busiest:.0%} of a core, "
            f"{r.b_wait:.2f}s runnable but waiting for a CPU; kernel TCP counters (whole machine): "
            f"{dict(r.tcp) or 'no listen overflows, drops or SYN retransmits'}",
            f"- B's fds: {r.b_fds[0]:,} before, {r.b_fds[1]:,} with every tab on it, {r.b_fds[2]:,} after the tabs "
            "closed",
            *(f"- {note}" for note in r.log_notes),
        ]
    return "\n".join(lines)


async def bounded(work: Coroutine[None, None, StormResult], seconds: float) -> StormResult:
    """``work``, cancelled with TimeoutError after ``seconds`` (the run's overall bound)."""
    async with asyncio.timeout(max(0.0, seconds)):
        return await work


def main(argv: list[str] | None = None) -> int:
    """Run the storm through ws-gateway, then NGINX; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 sessions, 2s spread: checks the script works")
    parser.add_argument("--sessions", type=int, help="tabs (default 5000, quick 200)")
    parser.add_argument("--spread", type=float, help="drain.spread in seconds (default 10, quick 2)")
    parser.add_argument("--jitter", choices=("full", "reconnecting-websocket"), default="full",
                        help="the reconnect policy of the tabs (see above)")
    parser.add_argument("--jitter-max", type=float, default=1.0, help="full jitter: ceiling of the first delay, s")
    parser.add_argument("--connect-rate", type=float, default=500, help="tabs/s connecting to A before the storm")
    parser.add_argument("--connect-timeout", type=float, default=4.0, help="an attempt not open by then fails, s")
    parser.add_argument("--relay", choices=(*RELAYS, "both"), default="both")
    parser.add_argument("--log-level", default="info", help="the gateways' log_level (info is the default config)")
    parser.add_argument("--emulate-gateway-drain", action="store_true",
                        help="no SIGTERM: drain gateway A at the clients as NGINX is (A only sees its clients leave)")
    parser.add_argument("--logs", type=Path, help="keep the relays' logs and configs in this directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="the whole run is stopped after this, s")
    args = parser.parse_args(argv)
    sessions = args.sessions or (200 if args.quick else 5000)
    spread = args.spread if args.spread is not None else (2.0 if args.quick else 10.0)
    settings = Settings(sessions=sessions, spread=spread, jitter=args.jitter, jitter_max=args.jitter_max,
                        connect_rate=args.connect_rate, connect_timeout=args.connect_timeout,
                        window=spread + 60, seed=args.seed, log_level=args.log_level,
                        emulate_gateway_drain=args.emulate_gateway_drain)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the tabs and the relays inherit it
    if 2 * sessions + 200 > hard:
        print(f"warning: RLIMIT_NOFILE {hard} is below 2 x {sessions} sessions + headroom", file=sys.stderr)
    jitter = (f"full jitter, first delay uniform(0, {args.jitter_max:g}s)" if args.jitter == "full"
              else "reconnecting-websocket defaults, first delay uniform(1, 5s)")
    print(f"# ws-gateway reconnect storm ({'quick' if args.quick else 'full'}): {sessions:,} sessions, "
          f"drain spread {spread:g}s, {jitter}, connect timeout {args.connect_timeout:g}s; {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {machine_load()}",
          flush=True)
    relays = RELAYS if args.relay == "both" else (args.relay,)
    results: list[StormResult] = []
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
        workdir = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ws-gateway-storm-")))
        try:
            run_all(relays, settings, workdir, began + args.timeout, results)
        except TimeoutError:
            print(f"error: the run did not finish within --timeout {args.timeout:g}s; every process it started "
                  "was stopped", file=sys.stderr)
            print(report(results))
            return 2
    print(report(results))
    print(f"\nrun took {time.monotonic() - began:.0f}s; at the end: {machine_load()}")
    return 0 if all(r.reestablished == r.sessions for r in results) else 1


def run_all(relays: tuple[str, ...], settings: Settings, workdir: Path, deadline: float,
            results: list[StormResult]) -> None:
    """Start the echo upstream, then storm each relay in turn; every process is stopped by PID at the end."""
    upstream_port = free_port()
    upstream = run_upstream("fast echo", upstream_port)
    try:
        for name in relays:
            pair = start_pair(name, upstream_port, settings, workdir)
            try:
                result = uvloop.run(bounded(storm(pair, settings), deadline - time.monotonic()))
            finally:
                pair.a.stop()
                pair.b.stop()
            result.log_notes = log_notes(pair)
            results.append(result)
            print(f"({name}: storm done)", file=sys.stderr, flush=True)
    finally:
        upstream.send_signal(signal.SIGTERM)
        try:
            upstream.wait(timeout=10)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


if __name__ == "__main__":
    sys.exit(main())
