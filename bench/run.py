"""Relay benchmark: ws-gateway against NGINX, HAProxy, a naive aiohttp relay, a bare uvloop pipe (the
floor of any Python relay, bench/pipe.py) and a direct connection.

One command, one run, the same echo upstream for every relay, on loopback:

    python -m bench.run            # full run (a few minutes)
    python -m bench.run --quick    # seconds; the tests use it to check the script works

For each upstream (a fast raw echo server, then FastAPI under uvicorn) and each relay it measures:

* relay CPU µs per relayed message: 64-byte messages, 32 connections x 8 in flight; the relay
  process tree's utime+stime from /proc divided by messages relayed (each echo counts twice);
* added latency p50/p99 at a fixed rate (one connection, 2,000 msg/s), relative to the direct
  connection: the median over rounds that visit every relay in turn;
* idle RSS per connection: the relay tree's RSS growth with N idle connections open, / N;
* relay CPU per handshake (connect, upgrade, close);
* relay CPU ms per MiB relayed with 1 MiB messages.

The gateway runs three times: with the default configuration (reconnection on, delivery
at_most_once: confirmation pings while messages flow), with reconnection off (no confirmation
pings: the pings' price is the difference), and with reconnect.delivery at_least_once (the pings
plus a copy of each message until its confirmation).

Ratios are printed against NGINX measured in the same run. Figures from a shared 2-core
machine vary by 10-20 % between runs; compare ratios, not absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import uvloop

from bench.proxies import haproxy_command, nginx_command

if TYPE_CHECKING:
    from gateway.server import Gateway

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    seconds: float
    connections: int
    in_flight: int
    latency_rate: int
    latency_messages: int
    idle_connections: int
    handshakes: int
    big_messages: int
    latency_rounds: int


FULL = Settings(seconds=4, connections=32, in_flight=8, latency_rate=2000, latency_messages=2000,
                idle_connections=1000, handshakes=400, big_messages=48, latency_rounds=8)
QUICK = Settings(seconds=0.5, connections=4, in_flight=4, latency_rate=500, latency_messages=100,
                 idle_connections=50, handshakes=20, big_messages=4, latency_rounds=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def in_process_gateway(upstream_port: int) -> tuple[Gateway, int]:
    """A gateway in this process (its default configuration, warnings only) in front of
    ``ws://127.0.0.1:upstream_port``, started; and its traffic port."""
    from gateway.core.config import load_config
    from gateway.server import Gateway

    port = free_port()
    config = load_config(overrides={"listen": f"{HOST}:{port}", "admin_listen": f"{HOST}:{free_port()}",
                                    "log_level": "warning", "upstream": {"url": f"ws://{HOST}:{upstream_port}"}},
                         environ={})
    gateway = Gateway(config)
    await gateway.start()
    return gateway, port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {port}")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (NGINX's worker is a child of its master)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                queue.extend(int(c) for c in children)
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_KIB
        except OSError:
            continue
    return total


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes] | None
    url: str

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, args: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Server:
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    wait_port(port, process)
    return Server(name, process, f"http://{HOST}:{port}")


def start_relays(upstream_port: int, workdir: Path, compiled: Path | None = None) -> list[Server]:
    """Every relay in front of the upstream; ``compiled``: a checkout running the mypyc build
    (bench/compiled.py), measured as one more gateway row next to the pure-Python one."""
    python = sys.executable
    servers = [Server("direct", None, f"http://{HOST}:{upstream_port}")]
    gateway_env = {"GATEWAY_DRAIN_LISTENER_DELAY": "0s", "GATEWAY_DRAIN_SPREAD": "0s",
                   "GATEWAY_DRAIN_TIMEOUT": "2s", "GATEWAY_MAX_SESSIONS": "20000", "GATEWAY_LOG_LEVEL": "warning"}
    # The default configuration (reconnection on, delivery at_most_once: confirmation pings), and two
    # variants that price the delivery guarantees: no confirmation pings at all (reconnection off),
    # and at_least_once (the pings plus a copy of every unconfirmed message).
    gateways: list[tuple[str, dict[str, str], Path]] = [
        ("ws-gateway", {}, ROOT),
        ("ws-gateway, reconnect off", {"GATEWAY_RECONNECT_ENABLED": "false"}, ROOT),
        ("ws-gateway, at_least_once", {"GATEWAY_RECONNECT_DELIVERY": "at_least_once"}, ROOT)]
    if compiled is not None:
        gateways.insert(1, ("ws-gateway, compiled", {}, compiled))
    for name, extra_env, tree in gateways:
        port = free_port()
        servers.append(start(name, [python, "-m", "gateway", "--listen", f"{HOST}:{port}", "--admin-listen",
                                    f"{HOST}:{free_port()}", "--upstream", f"ws://{HOST}:{upstream_port}"],
                             port, {**gateway_env, **extra_env}, cwd=tree))
    port = free_port()
    servers.append(start("naive aiohttp", [python, "-m", "bench.naive_relay", str(port),
                                           f"http://{HOST}:{upstream_port}"], port))
    port = free_port()
    servers.append(start("nginx", nginx_command(workdir / f"nginx-{port}", port, upstream_port), port))
    port = free_port()
    servers.append(start("haproxy", haproxy_command(workdir / f"haproxy-{port}", port, upstream_port), port))
    # The floor of any Python relay (bench/pipe.py): uvloop copying bytes, nothing parsed.
    port = free_port()
    servers.append(start("uvloop pipe", [python, "-m", "bench.pipe", str(port), str(upstream_port)], port))
    return servers


@dataclass
class Result:
    cpu_us_per_msg: float | None = None
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    idle_kib_per_conn: float | None = None
    cpu_us_per_handshake: float | None = None
    cpu_ms_per_mib: float | None = None
    throughput_msgs: float = 0.0
    notes: list[str] = field(default_factory=list)


async def small_messages(server: Server, settings: Settings, http: aiohttp.ClientSession) -> tuple[float, float]:
    """(relay CPU µs per relayed message, round trips per second)."""
    payload = b"m" * 64
    sockets = [await http.ws_connect(server.url + "/echo", compress=0, max_msg_size=0)
               for _ in range(settings.connections)]
    round_trips = 0
    stop_at = 0.0

    async def drive(ws: aiohttp.ClientWebSocketResponse) -> None:
        nonlocal round_trips
        for _ in range(settings.in_flight):
            await ws.send_bytes(payload)
        while True:
            await ws.receive()
            round_trips += 1
            if time.monotonic() >= stop_at:
                break
            await ws.send_bytes(payload)

    # warm-up, then the measured run
    stop_at = time.monotonic() + 0.3
    await asyncio.gather(*(drive(ws) for ws in sockets))
    await asyncio.sleep(0.2)
    for ws in sockets:  # drain what is still in flight
        while True:
            try:
                await ws.receive(timeout=0.05)
            except TimeoutError:
                break
    round_trips = 0
    cpu0 = cpu_seconds(server.pid) if server.pid else 0.0
    started = time.monotonic()
    stop_at = started + settings.seconds
    await asyncio.gather(*(drive(ws) for ws in sockets))
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(server.pid) - cpu0) if server.pid else 0.0
    for ws in sockets:
        await ws.close()
    return cpu * 1e6 / (2 * round_trips), round_trips / elapsed


async def latency(server: Server, settings: Settings, http: aiohttp.ClientSession) -> tuple[float, float]:
    """(p50, p99) round-trip ms at a fixed send rate on one connection."""
    ws = await http.ws_connect(server.url + "/echo", compress=0)
    interval = 1 / settings.latency_rate
    sent: dict[bytes, float] = {}
    rtts: list[float] = []

    async def receiver() -> None:
        while len(rtts) < settings.latency_messages:
            msg = await ws.receive()
            rtts.append(time.perf_counter() - sent.pop(msg.data))

    task = asyncio.ensure_future(receiver())
    start_at = time.perf_counter()
    for i in range(settings.latency_messages):
        target = start_at + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key = i.to_bytes(8, "big") + b"l" * 56
        sent[key] = time.perf_counter()
        await ws.send_bytes(key)
    await asyncio.wait_for(task, 30)
    await ws.close()
    rtts.sort()
    return statistics.median(rtts) * 1000, rtts[int(len(rtts) * 0.99) - 1] * 1000


async def idle_memory(server: Server, settings: Settings, http: aiohttp.ClientSession) -> float | None:
    """Relay RSS growth per idle connection, in KiB."""
    if server.pid is None:
        return None
    await asyncio.sleep(0.3)
    before = rss_kib(server.pid)
    sockets = []
    for _ in range(settings.idle_connections // 50):
        sockets += await asyncio.gather(*(http.ws_connect(server.url + "/echo", compress=0, heartbeat=None)
                                          for _ in range(50)))
    await asyncio.sleep(0.5)
    after = rss_kib(server.pid)
    await asyncio.gather(*(ws.close() for ws in sockets))
    return (after - before) / len(sockets)


async def handshakes(server: Server, settings: Settings, http: aiohttp.ClientSession) -> float | None:
    """Relay CPU µs per connect + upgrade + close."""
    if server.pid is None:
        return None
    cpu0 = cpu_seconds(server.pid)

    async def one() -> None:
        ws = await http.ws_connect(server.url + "/echo", compress=0)
        await ws.close()

    for _ in range(settings.handshakes // 8):
        await asyncio.gather(*(one() for _ in range(8)))
    await asyncio.sleep(0.2)
    return (cpu_seconds(server.pid) - cpu0) * 1e6 / (settings.handshakes // 8 * 8)


async def big_messages(server: Server, settings: Settings, http: aiohttp.ClientSession) -> float | None:
    """Relay CPU ms per MiB relayed with 1 MiB messages."""
    payload = os.urandom(1024 * 1024)
    ws = await http.ws_connect(server.url + "/echo", compress=0, max_msg_size=0)
    await ws.send_bytes(payload)
    await ws.receive()
    cpu0 = cpu_seconds(server.pid) if server.pid else 0.0
    for _ in range(settings.big_messages):
        await ws.send_bytes(payload)
        msg = await ws.receive()
        assert len(msg.data) == len(payload)
    cpu = (cpu_seconds(server.pid) - cpu0) if server.pid else 0.0
    await ws.close()
    return cpu * 1000 / (2 * settings.big_messages) if server.pid else None


async def measure(server: Server, settings: Settings) -> Result:
    result = Result()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        cpu, rate = await small_messages(server, settings, http)
        result.cpu_us_per_msg = cpu if server.pid else None
        result.throughput_msgs = rate
        result.idle_kib_per_conn = await idle_memory(server, settings, http)
        result.cpu_us_per_handshake = await handshakes(server, settings, http)
        result.cpu_ms_per_mib = await big_messages(server, settings, http)
    return result


async def latency_rounds(servers: list[Server], settings: Settings, results: dict[str, Result]) -> None:
    """Added latency, interleaved: every relay once per round, the median of the rounds kept.

    p99 on a shared 2-core machine swings by milliseconds from one second to the next;
    interleaving the relays and taking medians keeps one noisy moment from deciding a ratio.
    """
    samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
    async with aiohttp.ClientSession() as http:
        for _ in range(settings.latency_rounds):
            for server in servers:
                samples[server.name].append(await latency(server, settings, http))
    for name, pairs in samples.items():
        results[name].latency_p50_ms = statistics.median(p for p, _ in pairs)
        results[name].latency_p99_ms = statistics.median(p for _, p in pairs)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def report(title: str, results: dict[str, Result]) -> str:
    nginx = results["nginx"]
    direct = results["direct"]
    lines = [f"\n## {title}", "",
             "| relay | CPU µs/msg | vs nginx | added p50 ms | added p99 ms | idle KiB/conn | vs nginx "
             "| CPU µs/handshake | vs nginx | CPU ms/MiB (1 MiB msgs) | vs nginx | round trips/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        added50 = r.latency_p50_ms - direct.latency_p50_ms
        added99 = r.latency_p99_ms - direct.latency_p99_ms
        lines.append(
            f"| {name} | {fmt(r.cpu_us_per_msg)} | {ratio(r.cpu_us_per_msg, nginx.cpu_us_per_msg)} "
            f"| {added50:+.3f} | {added99:+.3f} "
            f"| {fmt(r.idle_kib_per_conn, 1)} | {ratio(r.idle_kib_per_conn, nginx.idle_kib_per_conn)} "
            f"| {fmt(r.cpu_us_per_handshake, 0)} | {ratio(r.cpu_us_per_handshake, nginx.cpu_us_per_handshake)} "
            f"| {fmt(r.cpu_ms_per_mib)} | {ratio(r.cpu_ms_per_mib, nginx.cpu_ms_per_mib)} "
            f"| {r.throughput_msgs:,.0f} |")
    return "\n".join(lines)


def run_upstream(kind: str, port: int) -> subprocess.Popen[bytes]:
    python = sys.executable
    if kind == "fast echo":
        args = [python, "-m", "bench.echo_server", str(port)]
    else:
        args = [python, "-m", "uvicorn", "bench.upstream_app:app", "--host", HOST, "--port", str(port),
                "--log-level", "warning", "--ws-ping-interval", "0"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, process)
    return process


def build_compiled(workdir: Path) -> Path | None:
    """A checkout running the compiled build (bench/compiled.py), or None, said, if it cannot be built."""
    from bench.compiled import compiled_checkout

    try:
        return compiled_checkout(workdir / "compiled")
    except (RuntimeError, OSError) as exc:
        print(f"(no compiled gateway row: {exc})", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the script, not the figures")
    parser.add_argument("--upstream", choices=("fast echo", "fastapi", "both"), default="both")
    parser.add_argument("--no-compiled", action="store_true",
                        help="leave out the row of the mypyc-compiled gateway (saves building it, ~20 s)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # idle-connection runs need many sockets
    kinds = ["fast echo", "fastapi"] if args.upstream == "both" else [args.upstream]
    print(f"# ws-gateway relay benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="ws-gateway-bench-") as workdir:
        compiled = None if args.no_compiled else build_compiled(Path(workdir))
        for kind in kinds:
            upstream_port = free_port()
            upstream = run_upstream(kind, upstream_port)
            servers: list[Server] = []
            try:
                servers = start_relays(upstream_port, Path(workdir) / kind.replace(" ", "-"), compiled)
                results = {s.name: uvloop.run(measure(s, settings)) for s in servers}
                uvloop.run(latency_rounds(servers, settings, results))
                print(report(f"upstream: {kind}", results), flush=True)
            finally:
                for server in servers:
                    server.stop()
                upstream.send_signal(signal.SIGTERM)
                upstream.wait(timeout=10)
    return 0



if __name__ == "__main__":
    sys.exit(main())
