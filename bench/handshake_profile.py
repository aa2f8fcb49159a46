"""Where a handshake's CPU goes (issue 13 point 2): cProfile of the gateway over N client handshakes.

    python -m bench.handshake_profile                    # 2,000 handshakes, 10 at a time
    python -m bench.handshake_profile --top 40 --sort cumulative
    python -m bench.handshake_profile --top 0   # only the CPU figures, the gateway's next to NGINX's

The gateway runs in this process (uvloop, its default configuration) in front of the fast echo
server (``bench.echo_server``) in a child process; another child process runs the clients: each
connects, upgrades on /ws/echo, sends one message, reads its echo, sends a close, reads the close
reply and closes its socket, ``--concurrency`` at a time. The same client run goes through NGINX
(one worker, ``bench.proxies``) and the bare uvloop pipe (``bench.pipe``, the floor of any Python
relay) first: their user and system CPU per session, from /proc, are the references. Then the
gateway's, without the profiler (``os.times``) and once more under cProfile.

The report is the time the profiler saw, split by where the function lives (the gateway's modules
one by one, asyncio, uvloop's callbacks, the standard library), then the top functions. cProfile
adds a fixed cost to every Python call, so small Python functions look dearer than they are: read
the split as where to look, and ``bench.run`` or ``bench.storm`` for what a handshake costs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import uvloop

from bench.proxies import nginx_command
from bench.run import CLOCK_TICKS, HOST, ROOT, free_port, in_process_gateway, process_tree, wait_port

CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked (zero key) close 1000


async def one_session(port: int) -> None:
    """Connect, upgrade, one echo, close; raises if the gateway does anything else."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws/echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Origin: http://localhost\r\nUser-Agent: bench\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise RuntimeError(f"no upgrade: {head[:60]!r}")
        writer.write(b"\x81\x82\x00\x00\x00\x00hi")
        if await reader.readexactly(4) != b"\x81\x02hi":
            raise RuntimeError("wrong echo")
        writer.write(CLOSE_FRAME)
        await reader.readexactly(4)  # the close reply; then close TCP as well (NGINX waits for either side)
    finally:
        writer.close()
        await writer.wait_closed()


async def run_clients(port: int, count: int, concurrency: int) -> None:
    """The client child process: ``count`` sessions, ``concurrency`` at a time; prints the wall time."""
    started = time.perf_counter()
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await one_session(port)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"{time.perf_counter() - started:.3f}", flush=True)


Profiled = tuple[pstats.Stats, float, float, os.times_result]


async def profile(count: int, concurrency: int, upstream_port: int) -> Profiled:
    """Run the gateway here and the clients in a child: first without the profiler (the process's user and
    system CPU over ``count`` sessions), then with it; the profile, its CPU seconds, the clients' wall time
    under the profiler, and the CPU times of the run without it."""
    gateway, port = await in_process_gateway(upstream_port)
    try:
        await spawn_clients(port, 50, concurrency)  # warm every code path before measuring
        before = os.times()
        await spawn_clients(port, count, concurrency)
        after = os.times()
        plain = os.times_result((after.user - before.user, after.system - before.system, 0.0, 0.0, 0.0))
        profiler = cProfile.Profile()
        cpu = time.process_time()
        profiler.enable()
        wall = await spawn_clients(port, count, concurrency)
        profiler.disable()
        cpu = time.process_time() - cpu
        return pstats.Stats(profiler), cpu, wall, plain
    finally:
        await gateway.close()


async def spawn_clients(port: int, count: int, concurrency: int) -> float:
    child = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.handshake_profile", "--client-child",
                                                 str(port), str(count), str(concurrency), cwd=ROOT,
                                                 stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(child.communicate(), 300)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if child.returncode != 0:
        raise RuntimeError("the client process failed")
    return float(out)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children (NGINX's master and worker), from /proc."""
    user = system = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def reference(command: list[str], port: int, count: int, concurrency: int) -> tuple[float, float]:
    """User and system CPU seconds a reference relay (NGINX, the uvloop pipe) spends on the same client run."""
    relay = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, relay)
        uvloop.run(spawn_clients(port, 50, concurrency))
        user0, system0 = cpu_times(relay.pid)
        uvloop.run(spawn_clients(port, count, concurrency))
        time.sleep(0.2)  # the last closes
        user1, system1 = cpu_times(relay.pid)
        return user1 - user0, system1 - system0
    finally:
        relay.terminate()
        relay.wait(timeout=10)


def where(filename: str) -> str:
    """The group a function's file belongs to, for the split."""
    path = Path(filename)
    if "gateway" in path.parts:
        return "gateway/" + "/".join(path.parts[path.parts.index("gateway") + 1:])
    if filename.startswith("~") or filename == "<built-in>":
        return "built-in or C (uvloop callbacks, socket calls)"
    if "asyncio" in path.parts:
        return "asyncio"
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1]
    return "standard library"


def report(stats: pstats.Stats, cpu: float, wall: float, plain: os.times_result, nginx: tuple[float, float],
           pipe: tuple[float, float], count: int, concurrency: int, top: int, sort: str) -> str:
    by_group: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, own, _, _) in raw.items():
        by_group[where(filename)] += own
    seen = sum(by_group.values())
    gateway_us, nginx_us = (plain.user + plain.system) / count * 1e6, sum(nginx) / count * 1e6
    pipe_us = sum(pipe) / count * 1e6

    def row(name: str, us: float, user: float, system: float) -> str:
        return (f"| {name} | {us:,.0f} | {user / count * 1e6:,.0f} | {system / count * 1e6:,.0f} | "
                f"{f'{us / nginx_us:.2f}x' if nginx_us else '-'} | {f'{us / pipe_us:.2f}x' if pipe_us else '-'} |")

    lines = [f"# CPU per session (connect, upgrade, one echo, close; {count} sessions, {concurrency} at a time)\n",
             "| relay | µs per session | user | system | vs nginx | vs uvloop pipe |", "|---|---:|---:|---:|---:|---:|",
             row("ws-gateway", gateway_us, plain.user, plain.system),
             row("nginx", nginx_us, *nginx),
             row("uvloop pipe (bench/pipe.py: the floor)", pipe_us, *pipe),
             f"\n(clock ticks of {1e6 / CLOCK_TICKS / count:,.0f} µs per session; system is the kernel's share: "
             "socket calls and loopback TCP)\n",
             f"# Handshake profile: {count} sessions (connect, upgrade, one echo, close), "
             f"{cpu:.2f} s CPU in the gateway's process under the profiler, clients' wall time {wall:.2f} s\n",
             f"{cpu / count * 1e6:,.0f} µs of (profiled) CPU per session\n",
             "| own time % | µs per session | where |", "|---:|---:|---|"]
    for group, own in sorted(by_group.items(), key=lambda item: -item[1]):
        lines.append(f"| {own / seen * 100:.1f} | {own / count * 1e6:,.1f} | {group} |")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(top)
    lines += ["", "```", buffer.getvalue().strip(), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"))
    parser.add_argument("--client-child", nargs=3, type=int, metavar=("PORT", "COUNT", "CONCURRENCY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.client_child:
        uvloop.run(run_clients(*args.client_child))
        return 0
    upstream_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(upstream_port)], cwd=ROOT)
    try:
        wait_port(upstream_port, upstream)
        with tempfile.TemporaryDirectory(prefix="bench-nginx-") as workdir:
            port = free_port()
            nginx = reference(nginx_command(Path(workdir), port, upstream_port), port, args.sessions, args.concurrency)
        port = free_port()
        pipe = reference([sys.executable, "-m", "bench.pipe", str(port), str(upstream_port)], port, args.sessions,
                         args.concurrency)
        stats, cpu, wall, plain = uvloop.run(profile(args.sessions, args.concurrency, upstream_port))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    print(report(stats, cpu, wall, plain, nginx, pipe, args.sessions, args.concurrency, args.top, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
