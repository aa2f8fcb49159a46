"""Socket-free doubles for driving a real Session and its Legs in milliseconds of virtual time.

:class:`FakeTransport` records what the gateway writes (and anything it writes
after closing), when (the loop's clock: virtual in tests/unit, see
tests/virtual_time.py), and lets a test say how full its write buffer is;
:class:`FakeFlow` is the matching write-side flow control. :func:`open_session`
builds a real :class:`~gateway.session.Session` on two fake transports, with
the real configuration (defaults plus overrides) and a fresh metrics registry.
The assertion helpers read the frames back the way a peer would.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.core.closecodes import code_label
from gateway.core.codec import Opcode, build_frame, mask_payload
from gateway.core.config import GatewayConfig, load_config
from gateway.flow import WriteFlow
from gateway.metrics import GatewayMetrics
from gateway.outage import RecoveryPlan
from gateway.session import Session

Frame = tuple[bool, int, bytes]


class FakeTransport:
    """An asyncio transport that keeps what is written to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.written = bytearray()
        self._stamps: tuple[list[int], list[float]] = ([], [])
        """Where each write began in ``written``, and the loop time it was made at."""
        self.after_close = bytearray()
        """Bytes written after close() or abort(): a correct gateway writes none."""
        self.closed = False
        self.aborted = False
        self.closed_at: float | None = None
        self.aborted_at: float | None = None
        """Loop time of the first close() and of abort()."""
        self.reading = True
        self.buffered = 0
        """What get_write_buffer_size() answers (a test sets it to simulate a peer that does not read)."""
        self.limits: tuple[int, int] = (0, 0)

    def write(self, data: bytes) -> None:
        if self.closed:
            self.after_close.extend(data)
            return
        self._stamps[0].append(len(self.written))
        self._stamps[1].append(asyncio.get_running_loop().time())
        self.written.extend(data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            self.write(part)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def close(self) -> None:
        if not self.closed:
            self.closed, self.closed_at = True, asyncio.get_running_loop().time()

    def abort(self) -> None:
        self.close()
        self.aborted, self.aborted_at = True, asyncio.get_running_loop().time()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def frames(self) -> list[Frame]:
        """Every frame written so far, unmasked."""
        return parse_frames(bytes(self.written))

    def timed_frames(self, opcode: int | None = None) -> list[tuple[float, Frame]]:
        """(loop time of the write that began it, frame) for every frame written so far, or those of ``opcode``."""
        offsets, times = self._stamps
        timed = [(times[bisect.bisect_right(offsets, start) - 1], frame)
                 for start, frame in _parse(bytes(self.written))]
        return [(at, frame) for at, frame in timed if opcode is None or frame[1] == opcode]

    def close_frames(self) -> list[tuple[int, str]]:
        """(code, reason) of each close frame written (1005 for an empty one)."""
        closes = []
        for _, opcode, payload in self.frames():
            if opcode == Opcode.CLOSE:
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                closes.append((code, payload[2:].decode("utf-8")))
        return closes


class FakeFlow(WriteFlow):
    """Write-side flow control a test opens and closes by hand."""

    def __init__(self) -> None:
        self.paused = False
        self._resumed = asyncio.Event()
        super().__init__(lambda: self.paused, self._wait)

    async def _wait(self) -> None:
        if self.paused:
            self._resumed.clear()
            await self._resumed.wait()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            self._resumed.set()


def parse_frames(data: bytes) -> list[Frame]:
    """Decode whole frames (unmasking masked ones); fails on a cut frame."""
    return [frame for _, frame in _parse(data)]


def first_bytes(data: bytes) -> list[int]:
    """The first header byte of every frame in ``data`` (masked or not)."""
    firsts, pos = [], 0
    while pos < len(data):
        firsts.append(data[pos])
        length, size = data[pos + 1] & 0x7F, 2
        if length == 126:
            length, size = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            length, size = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        pos += size + (4 if data[pos + 1] & 0x80 else 0) + length
    return firsts


def _parse(data: bytes) -> list[tuple[int, Frame]]:
    """(offset, frame) for each whole frame in ``data``."""
    frames, pos = [], 0
    while pos < len(data):
        start = pos
        b0, b1 = data[pos], data[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        key = None
        if b1 & 0x80:
            key, pos = data[pos:pos + 4], pos + 4
        payload = data[pos:pos + length]
        assert len(payload) == length, "a write ended inside a frame"
        pos += length
        frames.append((start, (bool(b0 & 0x80), b0 & 0x0F, mask_payload(key, payload) if key else payload)))
    return frames


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, one level of sections deep."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


FAST: dict[str, Any] = {
    "client": {"ping_interval": "10s", "ping_jitter": "0s", "close_timeout": "200ms",
               "slow_consumer_timeout": "100ms"},
    "upstream": {"ping_interval": "10s", "ping_jitter": "0s"},
    "reconnect": {"enabled": False},
}
"""Defaults for socket-free tests: no pings unless a test asks (or waits 10 s: at exactly 10 s, no jitter),
short close and slow-consumer timeouts."""


@dataclass
class Harness:
    """A real session on fake transports."""

    session: Session
    client: FakeTransport
    upstream: FakeTransport
    client_flow: FakeFlow
    upstream_flow: FakeFlow
    registry: CollectorRegistry
    config: GatewayConfig

    def from_client(self, data: bytes) -> None:
        """Bytes the client sends (masked frames)."""
        self.session.client.scanner.feed(data)

    def from_upstream(self, data: bytes) -> None:
        """Bytes the app sends (unmasked frames)."""
        self.session.upstream.scanner.feed(data)

    def app_frame(self, opcode: int, payload: bytes, fin: bool = True) -> bytes:
        return build_frame(opcode, payload, masked=False, fin=fin)

    def closes(self, leg: str, code: int, initiator: str, cause: str) -> float:
        """The closes_total sample for one series (``code`` is bucketed as the metric does)."""
        labels = {"leg": leg, "code": code_label(code), "initiator": initiator, "cause": cause}
        return self.registry.get_sample_value("ws_gateway_closes_total", labels) or 0.0


def open_session(settings: dict[str, Any] | None = None) -> Harness:
    """A session with both legs attached to fake transports (call inside a running event loop)."""
    config = load_config(overrides=deep_merge(FAST, settings or {}), environ={})
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    session = Session("sid", "127.0.0.1", "/ws", metrics, config.client, config.upstream)
    client, upstream = FakeTransport("client"), FakeTransport("upstream")
    client_flow, upstream_flow = FakeFlow(), FakeFlow()
    harness = Harness(session, client, upstream, client_flow, upstream_flow, registry, config)
    return harness


def attach(harness: Harness, recovery: RecoveryPlan | None = None) -> Harness:
    """Attach the transports (with a recovery plan: reconnection, if the test wants one)."""
    harness.session.attach(
        harness.client,  # type: ignore[arg-type]
        harness.client_flow,
        harness.upstream,  # type: ignore[arg-type]
        harness.upstream_flow,
        recovery=recovery,
    )
    return harness
