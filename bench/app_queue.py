"""How many messages an app server has read but not yet handed to its handler when it answers a ping.

A pong proves the app server read every frame before its ping, not that the ASGI handler received
them: uvicorn parses a read, queues its messages for the handler and answers a ping among them at
once. ``reconnect.app_queue_messages`` (docs/reconnection.md) must cover that queue. This script
measures it without the gateway, the way the gateway's confirmation pings see it: clients send
numbered messages to ``tests/recording_app.py`` (which appends each one to a file the moment its
handler receives it, then works ``--work-ms``), each client pings every ``--ping-ms``, and at each
pong it compares how many messages it had sent before that ping with how many the handler had
received (the record file's length). The difference is the depth the window must cover.

Run: ``python -m bench.app_queue`` (every server: uvicorn's websockets-sansio, wsproto and
websockets backends, gunicorn's UvicornWorker; works of 0, 10 and 30 ms). Prints, per server and
work, the pongs seen and the depth's p50, p99 and maximum, in messages and in bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.run import free_port, start

SERVERS: dict[str, list[str]] = {
    "uvicorn websockets-sansio": ["-m", "uvicorn", "--ws", "websockets-sansio"],
    "uvicorn wsproto": ["-m", "uvicorn", "--ws", "wsproto"],
    "uvicorn websockets": ["-m", "uvicorn", "--ws", "websockets"],
    "gunicorn UvicornWorker": ["-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "1"],
}
APP = "tests.recording_app:app"
SEQ_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Settings:
    clients: int
    interval: float
    ping_interval: float
    seconds: float
    pad: int


def server_command(name: str, port: int) -> list[str]:
    base = SERVERS[name]
    if base[1] == "gunicorn":
        return [sys.executable, *base, "-b", f"127.0.0.1:{port}", "--log-level", "warning", APP]
    return [sys.executable, *base, APP, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


def handled(path: Path, line: int) -> int:
    """Messages the handler has received: the record file's fixed-width lines after the session line."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    return max(0, (size - len(b"session -\n")) // line)


async def one_client(http: aiohttp.ClientSession, url: str, path: Path, settings: Settings,
                     depths: list[int]) -> None:
    line = SEQ_DIGITS + settings.pad + 1
    padding = "x" * settings.pad
    async with http.ws_connect(url, autoping=False) as ws:
        pings: dict[bytes, int] = {}
        sent = 0

        async def read() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.PONG and msg.data in pings:
                    depths.append(pings.pop(msg.data) - handled(path, line))

        reader = asyncio.ensure_future(read())
        loop = asyncio.get_running_loop()
        end = loop.time() + settings.seconds
        next_ping = loop.time() + settings.ping_interval
        while loop.time() < end:
            await ws.send_str(str(sent).zfill(SEQ_DIGITS) + padding)
            sent += 1
            if loop.time() >= next_ping and not pings:
                payload = os.urandom(4)
                pings[payload] = sent
                await ws.ping(payload)
                next_ping = loop.time() + settings.ping_interval
            await asyncio.sleep(settings.interval)
        await ws.close()
        reader.cancel()


async def measure(name: str, work_ms: int, settings: Settings) -> list[int]:
    record_dir = Path(tempfile.mkdtemp(prefix="app-queue-"))
    port = free_port()
    server = start(name, server_command(name, port), port, {"RECORD_DIR": str(record_dir)})
    try:
        depths: list[int] = []
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(
                one_client(http, f"ws://127.0.0.1:{port}/ws/record?client={i}&work_ms={work_ms}",
                           record_dir / f"{i}.txt", settings, depths)
                for i in range(settings.clients)))
        return depths
    finally:
        server.stop()


def percentile(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ", ".join(SERVERS))
    parser.add_argument("--work-ms", default="0,10,30", help="handler work per message, comma-separated")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=20.0, help="each client sends one message this often")
    parser.add_argument("--ping-ms", type=float, default=100.0, help="a ping this often (reconnect.confirm_interval)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per server and work")
    parser.add_argument("--pad", type=int, default=200, help="bytes added to each message (chat-sized)")
    args = parser.parse_args(argv)
    settings = Settings(args.clients, args.interval_ms / 1000, args.ping_ms / 1000, args.seconds, args.pad)
    frame = SEQ_DIGITS + args.pad + (6 if SEQ_DIGITS + args.pad < 126 else 8)
    print(f"{args.clients} clients, one {SEQ_DIGITS + args.pad}-byte message every {args.interval_ms:g} ms each, "
          f"a ping every {args.ping_ms:g} ms; depth = messages before the ping not yet received by the handler "
          f"when its pong arrives")
    print(f"{'server':28} {'work':>5} {'pongs':>6} {'p50':>4} {'p99':>4} {'max':>4} {'max bytes':>10}")
    for name in args.servers.split(","):
        for work in (int(w) for w in args.work_ms.split(",")):
            started = time.monotonic()
            depths = asyncio.run(measure(name, work, settings))
            print(f"{name:28} {work:>3}ms {len(depths):>6} {percentile(depths, 0.5):>4} "
                  f"{percentile(depths, 0.99):>4} {max(depths, default=0):>4} {max(depths, default=0) * frame:>10}"
                  f"   ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
