"""What a resumable session costs per message (issue 11), next to a plain one and to NGINX.

    python -m bench.resume_cpu            # about half a minute
    python -m bench.resume_cpu --quick    # seconds; checks that the script works, not the figures

uvicorn runs examples.app (/ws/echo); NGINX (1 worker) and ws-gateway sit in front of it. Per path,
``clients`` sessions at once each send ``messages`` JSON chat messages one at a time and wait for
each echo; the relay's and uvicorn's process CPU (from /proc) is divided by the messages relayed
(two per round trip). Paths: NGINX with a plain ``websockets`` client, the gateway with the same
plain client, and the gateway with the resumable helper (clients/python/resumable_websocket.py),
whose session keeps every message the app sends in its replay log until a confirmation ping's
pong. No compression anywhere (the clients offer none), so the difference is resume's own cost.
Rounds visit every path in turn; the median is kept. Loopback only; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.compression import chat_messages, launch
from bench.proxies import nginx_command
from bench.run import HOST, Server, cpu_seconds, free_port


@dataclass(frozen=True)
class Settings:
    clients: int
    messages: int
    rounds: int


FULL = Settings(clients=10, messages=1000, rounds=3)
QUICK = Settings(clients=2, messages=50, rounds=1)


@dataclass
class RelayPath:
    name: str
    port: int
    resumable: bool
    relay: Server
    relay_us: list[float] = field(default_factory=list)
    app_us: list[float] = field(default_factory=list)


async def plain_session(port: int, messages: list[str]) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://{HOST}:{port}/ws/echo", compression=None, ping_interval=None, max_size=None) as ws:
        for message in messages:
            await ws.send(message)
            if await ws.recv() != message:
                raise RuntimeError("the echo differs from what was sent")


async def resumable_session(port: int, messages: list[str]) -> None:
    from clients.python.resumable_websocket import ResumableWebSocket

    ws = ResumableWebSocket(f"ws://{HOST}:{port}/ws/echo", compression=None, ping_interval=None)
    await ws.connect()
    try:
        for message in messages:
            await ws.send(message)
            if await ws.recv() != message:
                raise RuntimeError("the echo differs from what was sent")
    finally:
        await ws.close()


async def measure(paths: list[RelayPath], app: Server, settings: Settings, messages: list[str]) -> None:
    assert app.pid is not None
    for _ in range(settings.rounds):
        for path in paths:
            assert path.relay.pid is not None
            relay0, app0 = cpu_seconds(path.relay.pid), cpu_seconds(app.pid)
            session = resumable_session if path.resumable else plain_session
            await asyncio.wait_for(asyncio.gather(*(session(path.port, messages) for _ in range(settings.clients))),
                                   300)
            relayed = 2 * settings.clients * len(messages)
            path.relay_us.append((cpu_seconds(path.relay.pid) - relay0) * 1e6 / relayed)
            path.app_us.append((cpu_seconds(app.pid) - app0) * 1e6 / relayed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: checks the script, not the figures")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    messages = chat_messages(settings.messages)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ws-gateway-resume-") as workdir:
        try:
            app_port = free_port()
            app = launch("uvicorn", [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port",
                                     str(app_port), "--log-level", "warning", "--ws-ping-interval", "0"],
                         app_port, servers, Path(workdir))
            nginx_port = free_port()
            nginx = launch("nginx", nginx_command(Path(workdir) / "nginx", nginx_port, app_port), nginx_port,
                           servers, Path(workdir))
            gateway_port = free_port()
            gateway = launch("ws-gateway", [sys.executable, "-m", "gateway", "--listen", f"{HOST}:{gateway_port}",
                                            "--admin-listen", f"{HOST}:{free_port()}", "--upstream",
                                            f"ws://{HOST}:{app_port}"], gateway_port, servers, Path(workdir),
                             {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_CLIENT_PING_INTERVAL": "0",
                              "GATEWAY_UPSTREAM_PING_INTERVAL": "0"})
            paths = [RelayPath("NGINX -> uvicorn, plain client", nginx_port, False, nginx),
                     RelayPath("ws-gateway -> uvicorn, plain client", gateway_port, False, gateway),
                     RelayPath("ws-gateway -> uvicorn, resumable client", gateway_port, True, gateway)]
            asyncio.run(measure(paths, app, settings, messages))
        finally:
            for server in reversed(servers):
                server.stop()
    nginx_us = statistics.median(paths[0].relay_us)
    print(f"# Resumable sessions: CPU per message ({'quick' if args.quick else 'full'} run), {settings.clients} "
          f"sessions x {settings.messages:,} round trips per path, median of {settings.rounds} rounds\n")
    print("| path | relay µs/msg | vs nginx | app µs/msg |")
    print("|---|---|---|---|")
    for path in paths:
        relay = statistics.median(path.relay_us)
        versus = f"{relay / nginx_us:.2f}x" if nginx_us else "-"  # a quick run may see no clock tick
        print(f"| {path.name} | {relay:.2f} | {versus} | {statistics.median(path.app_us):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
