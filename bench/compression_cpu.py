"""Part 3 of ``python -m bench.compression``: CPU per message for compressed and plain sessions.

The same relays as part 1 (uvicorn direct, NGINX in front of it, ws-gateway in front of it with
client.compression on), each driven by ``websockets`` clients in this process that offer
permessage-deflate or do not. Per path: the CPU time of the relay's processes (NGINX's master and
worker; the gateway) and of uvicorn, read from /proc before and after, divided by the messages
relayed (each round trip is one message up and one down). Direct with an offer, uvicorn compresses;
through NGINX the offer reaches uvicorn, which still compresses (NGINX tunnels bytes); through the
gateway the gateway compresses and uvicorn sees plain frames. So the relay+app column is what one
message costs the pod, the thing to compare between paths.

CPU times come in clock ticks (10 ms), so each path runs long enough for hundreds of ticks; rounds
visit every path in turn and the median of the rounds is kept (the machine is shared).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

from bench.run import HOST, Server, cpu_seconds


@dataclass(frozen=True)
class CpuSettings:
    clients: int  # concurrent sessions per path
    messages: int  # round trips per session
    rounds: int  # the median of this many rounds is kept


CPU_FULL = CpuSettings(clients=10, messages=1000, rounds=3)
CPU_QUICK = CpuSettings(clients=2, messages=50, rounds=1)


@dataclass
class CpuPath:
    name: str
    port: int
    offer: bool
    relay: Server | None  # None: the client talks to uvicorn itself
    app: Server
    negotiated: str = ""
    relay_us: list[float] = field(default_factory=list)
    app_us: list[float] = field(default_factory=list)
    error: str = ""


async def _session(port: int, offer: bool, messages: list[str]) -> str:
    """One client: each message sent and its echo awaited; returns the agreed extension."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://{HOST}:{port}/ws/echo", compression="deflate" if offer else None,
                       ping_interval=None, max_size=None, open_timeout=10, close_timeout=5) as ws:
        assert ws.response is not None
        for message in messages:
            await ws.send(message)
            if await ws.recv() != message:
                raise RuntimeError("the echo differs from what was sent")
        return ws.response.headers.get("Sec-WebSocket-Extensions", "") or "none"


async def _measure(path: CpuPath, settings: CpuSettings, messages: list[str]) -> None:
    relay_before = cpu_seconds(path.relay.pid) if path.relay and path.relay.pid else 0.0
    assert path.app.pid is not None
    app_before = cpu_seconds(path.app.pid)
    agreed = await asyncio.gather(*(_session(path.port, path.offer, messages) for _ in range(settings.clients)))
    relayed = 2 * settings.clients * len(messages)
    if path.relay and path.relay.pid:
        path.relay_us.append((cpu_seconds(path.relay.pid) - relay_before) * 1e6 / relayed)
    path.app_us.append((cpu_seconds(path.app.pid) - app_before) * 1e6 / relayed)
    path.negotiated = agreed[0]


async def measure_cpu(paths: list[CpuPath], settings: CpuSettings, messages: list[str]) -> None:
    """Every path once per round (a busy moment lands on one sample of each path, not on one path)."""
    for _ in range(settings.rounds):
        for path in paths:
            if path.error:
                continue
            try:
                await asyncio.wait_for(_measure(path, settings, messages), 300)
            except Exception as exc:
                path.error = f"failed: {type(exc).__name__}: {exc}"


def cpu_paths(servers: list[Server], ports: dict[str, int | None]) -> list[CpuPath]:
    """The ten paths: direct, NGINX, ws-gateway (pure Python and compiled) and the uvloop pipe (where
    they started), each with and without an offer."""
    by_name = {server.name: server for server in servers}
    app = by_name["uvicorn"]
    paths = []
    for name, relay_name, label in (("direct", None, "direct to uvicorn"), ("nginx", "nginx", "NGINX -> uvicorn"),
                                    ("gateway", "ws-gateway", "ws-gateway -> uvicorn"),
                                    ("gateway compiled", "ws-gateway, compiled", "ws-gateway compiled -> uvicorn"),
                                    ("pipe", "uvloop pipe", "uvloop pipe -> uvicorn")):
        port = ports.get(name)
        if port is None:
            continue
        relay = by_name.get(relay_name) if relay_name else None
        for offer in (True, False):
            paths.append(CpuPath(f"{label}, {'offers deflate' if offer else 'no offer'}", port, offer, relay, app))
    return paths


def _median(samples: list[float]) -> float | None:
    return statistics.median(samples) if samples else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _versus(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}x"


def cpu_report(paths: list[CpuPath], settings: CpuSettings, messages: list[str]) -> str:
    mean = sum(len(m.encode()) for m in messages) / len(messages)
    nginx = {p.offer: _median(p.relay_us) for p in paths if p.name.startswith("NGINX")}
    pipe = {p.offer: _median(p.relay_us) for p in paths if p.name.startswith("uvloop pipe")}
    lines = [
        f"\n## 3. CPU per message: compressed and plain sessions ({settings.clients} sessions x "
        f"{settings.messages:,} round trips per path, JSON chat messages of {mean:.0f} B on average, "
        f"median of {settings.rounds} rounds)",
        "",
        "relay = the relay's processes, app = uvicorn; µs of process CPU per message relayed (one round trip "
        "is two messages). vs nginx, vs pipe: the relay's figure against NGINX's and the bare uvloop pipe's "
        "(bench/pipe.py, the floor of any Python relay) for the same offer, same run.",
        "",
        "| path | negotiated | relay µs/msg | vs nginx | vs pipe | app µs/msg | relay + app µs/msg |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        if path.error:
            lines.append(f"| {path.name} | {path.error} | - | - | - | - | - |")
            continue
        relay, app = _median(path.relay_us), _median(path.app_us)
        total = (relay or 0.0) + app if app is not None else None
        lines.append(f"| {path.name} | `{path.negotiated}` | {_fmt(relay)} | {_versus(relay, nginx.get(path.offer))} | "
                     f"{_versus(relay, pipe.get(path.offer))} | {_fmt(app)} | {_fmt(total)} |")
    return "\n".join(lines)
