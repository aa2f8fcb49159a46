"""What an idle session holds (issue 13 point 3): tracemalloc over N idle sessions, by where it was allocated.

    python -m bench.idle_memory                 # 1,000 idle sessions
    python -m bench.idle_memory --sessions 200 --top 25

The gateway runs in this process (uvloop, its default configuration, reconnection on), in front of
uvicorn with examples.app in a child process; N raw WebSocket clients in another child process
connect to /ws/echo, send one message, read its echo and stay idle. tracemalloc compares a
snapshot taken with every session idle against one taken before they connected: everything this
process allocated for them (uvloop's C allocations show up under the Python line that was running,
``asyncio/runners.py``). The report is bytes per session, grouped by
file and line (``--group file`` for files), largest first; the total is what tracemalloc sees of a
session (RSS per session, in ``bench.run``, also counts what malloc and the kernel keep).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

from bench.run import HOST, ROOT, free_port, in_process_gateway, wait_port


async def idle_client(port: int, opened: list[asyncio.StreamWriter]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws/echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x81\x82\x00\x00\x00\x00hi")  # one masked text frame (a zero key), then idle
    await reader.readexactly(4)
    opened.append(writer)


async def hold_clients(port: int, count: int) -> None:
    """The child process: open ``count`` idle sessions, say so, then wait to be stopped."""
    opened: list[asyncio.StreamWriter] = []
    for start in range(0, count, 50):
        await asyncio.gather(*(idle_client(port, opened) for _ in range(start, min(count, start + 50))))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def measure(sessions: int, app_port: int) -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot, int]:
    gateway, port = await in_process_gateway(app_port)
    warm = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.idle_memory", "--client-child",
                                                str(port), "1", cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    clients = None
    try:
        assert warm.stdout is not None
        await warm.stdout.readline()  # one session first: every code path warm before the first snapshot
        await asyncio.sleep(0.2)
        before = tracemalloc.take_snapshot()
        clients = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.idle_memory", "--client-child",
                                                       str(port), str(sessions), cwd=ROOT,
                                                       stdout=asyncio.subprocess.PIPE)
        assert clients.stdout is not None
        if await asyncio.wait_for(clients.stdout.readline(), 120) != b"ready\n":
            raise RuntimeError("the client process did not open its sessions")
        await asyncio.sleep(0.5)
        after = tracemalloc.take_snapshot()
        return before, after, len(gateway.sessions) - 1
    finally:
        for child in (warm, clients):
            if child is not None and child.returncode is None:
                child.kill()
                await child.wait()
        await asyncio.sleep(0.2)
        await gateway.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--group", choices=("lineno", "filename"), default="lineno")
    parser.add_argument("--client-child", nargs=2, type=int, metavar=("PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import uvloop

    if args.client_child:
        uvloop.run(hold_clients(*args.client_child))
        return 0

    app_port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port",
                            str(app_port), "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_port(app_port, app)
        tracemalloc.start(1)
        before, after, sessions = uvloop.run(measure(args.sessions, app_port))
    finally:
        app.terminate()
        app.wait(timeout=10)
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), args.group)
    total = sum(stat.size_diff for stat in diff)
    print(f"# What an idle session holds: {sessions} idle sessions, tracemalloc of the gateway's process\n")
    print(f"total: {total / sessions:,.0f} B per session\n")
    print("| bytes per session | blocks per session | where |")
    print("|---:|---:|---|")
    for stat in diff[: args.top]:
        frame = stat.traceback[0]
        path = Path(frame.filename)
        where = f"{path.parent.name}/{path.name}:{frame.lineno}"
        print(f"| {stat.size_diff / sessions:,.0f} | {stat.count_diff / sessions:.1f} | {where} |")
    return 0 if sessions == args.sessions else 1


if __name__ == "__main__":
    sys.exit(main())
