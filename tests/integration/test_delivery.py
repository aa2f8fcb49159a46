"""Delivery guarantees with a real uvicorn app that records what it receives (tests/recording_app.py).

Clients send numbered messages at a steady pace while the app is SIGKILLed and restarted, SIGTERMed
and restarted, or frozen with SIGSTOP past the gateway's ping timeout and thawed with SIGCONT. Then
the app's record is compared with what was sent and with the gateway's counters:

- at_most_once: no message twice, in order; every message the app did not get is counted in
  ``ws_gateway_replay_dropped_messages_total`` (the count may include messages the app did get
  but had not confirmed: "unconfirmed" means "perhaps lost");
- at_least_once: every message arrives, in order once duplicates are removed, and the duplicates
  are no more than the reconnect handshakes announced (``X-Gateway-Possible-Duplicates``);
  nothing is counted lost.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support import GatewayProcess, Upstream, async_wait_until, scaled

CLIENTS = 10
COUNT = 200
INTERVAL = 0.02
"""Each client sends COUNT messages, one every INTERVAL seconds (about 4 s of traffic)."""
LOSS_REASONS = ("unconfirmed", "cut", "overflow", "too_large")


def recorded(record_dir: Path, client: int) -> tuple[list[int], int]:
    """What the app received from one client, in order, and the duplicates its handshakes announced."""
    path = record_dir / f"{client}.txt"
    received, announced = [], 0
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("dup "):
            announced += int(line[4:])
        else:
            received.append(int(line))
    return received, announced


def outage_of(kind: str, app: Upstream, make_app: Callable[[], Upstream]) -> Callable[[], None]:
    """The outage, run in a thread while the clients send."""

    def outage() -> None:
        time.sleep(1.0)
        if kind == "SIGSTOP":
            app.signal(signal.SIGSTOP)
            time.sleep(3.0)  # past upstream ping_interval + ping_timeout (1 s + 1 s)
            app.signal(signal.SIGCONT)
            return
        app.signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
        app.process.wait(timeout=scaled(20))
        time.sleep(0.5)
        make_app()

    return outage


async def send_numbered(ws: aiohttp.ClientWebSocketResponse) -> None:
    for seq in range(COUNT):
        await ws.send_str(str(seq))
        await asyncio.sleep(INTERVAL)


@pytest.mark.parametrize("mode", ["at_most_once", "at_least_once"])
@pytest.mark.parametrize("kind", ["SIGKILL", "SIGTERM", "SIGSTOP"])
async def test_messages_across_an_upstream_outage_are_delivered_or_counted(
    kind: str, mode: str, tmp_path: Path,
    make_gateway: Callable[..., GatewayProcess], make_upstream: Callable[..., Upstream],
) -> None:
    record_dir = tmp_path / "record"
    record_dir.mkdir()
    env = {"RECORD_DIR": str(record_dir)}
    app = make_upstream(app="tests.recording_app:app", env=env)
    gw = make_gateway(app.url, {
        "upstream": {"ping_interval": "1s", "ping_jitter": "0s", "ping_timeout": "1s"},
        "reconnect": {"delivery": mode, "buffer_messages": 5000, "initial_backoff": "50ms",
                      "max_backoff": "500ms"},
    })
    outage = outage_of(kind, app, lambda: make_upstream(port=app.port, app="tests.recording_app:app", env=env))
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(f"{gw.url}/ws/record?client={i}") for i in range(CLIENTS)]
        await asyncio.gather(*(send_numbered(ws) for ws in sockets), asyncio.to_thread(outage))
        await async_wait_until(
            lambda: all(COUNT - 1 in recorded(record_dir, i)[0] for i in range(CLIENTS)),
            scaled(20), "the app to record every client's last message")
        assert all(not ws.closed for ws in sockets), "no client was disconnected"
        for ws in sockets:
            await ws.close()
    counted = {reason: await gw.metric("ws_gateway_replay_dropped_messages_total", reason=reason)
               for reason in LOSS_REASONS}
    assert await gw.metric("ws_gateway_sessions_resumed_total") >= CLIENTS, "every session rode out the outage"
    lost_total = duplicates_total = 0
    for client in range(CLIENTS):
        received, announced = recorded(record_dir, client)
        first_seen = list(dict.fromkeys(received))
        assert first_seen == sorted(first_seen), (client, "out of order")
        lost_total += COUNT - len(first_seen)
        duplicates_total += len(received) - len(first_seen)
        if mode == "at_least_once":
            assert first_seen == list(range(COUNT)), (client, sorted(set(range(COUNT)) - set(first_seen)))
            assert len(received) - len(first_seen) <= announced, (client, "more duplicates than announced")
        else:
            assert len(received) == len(first_seen), (client, "a duplicate in at_most_once")
    lines = await gw.wait_session_log(CLIENTS)
    if mode == "at_least_once":
        assert sum(counted.values()) == 0, counted
        assert sum(line["lost_messages"] for line in lines) == 0
    else:
        assert lost_total <= counted["unconfirmed"], (lost_total, counted)
        assert sum(line["lost_messages"] for line in lines) == sum(counted.values())
        if kind == "SIGSTOP":
            assert counted["unconfirmed"] > 0, "a frozen app leaves messages unconfirmed"
    print(f"{kind} {mode}: lost {lost_total}, counted {counted}, duplicates {duplicates_total}")
