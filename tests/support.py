"""Test support: real processes (uvicorn, the gateway, nginx) on loopback, always stopped by PID.

Time in tests is ``scaled(seconds)``: multiply by WS_GATEWAY_TEST_SCALE (default 1)
on a slower machine. Waits poll a condition; nothing sleeps a fixed time to
let something happen. (Unit tests on fake transports need no scale: they run on
virtual time, tests/virtual_time.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.proxies import nginx_command

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("WS_GATEWAY_TEST_SCALE", "1"))
HOST = "127.0.0.1"


def scaled(seconds: float) -> float:
    """A duration stretched by the machine's slowness factor."""
    return seconds * SCALE


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds or ``timeout`` (scaled) passes."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {scaled(timeout):g}s waiting for {what}")


async def async_wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Async version of :func:`wait_until`."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {scaled(timeout):g}s waiting for {what}")


def port_open(port: int) -> bool:
    """True if something accepts TCP on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


P = TypeVar("P", bound="ManagedProcess")


@contextlib.contextmanager
def process_factory(make: Callable[..., P]) -> Iterator[Callable[..., P]]:
    """A factory for fixtures: every process it starts is stopped by PID when the block ends."""
    started: list[P] = []

    def start(*args: Any, **kwargs: Any) -> P:
        process = make(*args, **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


class ManagedProcess:
    """A child process stopped by its PID at the end (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the process (if running) and return its exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class Upstream(ManagedProcess):
    """The example FastAPI app under real uvicorn."""

    def __init__(self, tmp: Path, port: int | None = None, extra: list[str] | None = None,
                 app: str = "examples.app:app", env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        args = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(self.port),
                "--log-level", "warning", *(extra or [])]
        super().__init__(args, tmp / f"uvicorn-{self.port}-{time.monotonic_ns()}.log", env)
        wait_until(lambda: port_open(self.port) or not self.alive(), 30, "uvicorn to listen")
        assert self.alive(), self.output()

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"


class GatewayProcess(ManagedProcess):
    """The real ws-gateway (``python -m gateway``) with a config file written for the test."""

    def __init__(self, tmp: Path, upstream_url: str, config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        settings: dict[str, Any] = {
            "listen": f"{HOST}:{self.port}",
            "admin_listen": f"{HOST}:{self.admin_port}",
            "log_level": "info",
            "upstream": {"url": upstream_url},
            # Tests stop gateways often: no listener delay (drain tests set their own).
            "drain": {"listener_delay": "0s", "spread": "200ms", "timeout": "5s"},
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict):
                settings.setdefault(key, {}).update(value)
            else:
                settings[key] = value
        config_path = Path(tempfile.mkstemp(suffix=".yaml", dir=tmp)[1])
        config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        super().__init__([sys.executable, "-m", "gateway", "--config", str(config_path)],
                         tmp / f"gateway-{self.port}.log", env)
        wait_until(lambda: (port_open(self.admin_port) and port_open(self.port)) or not self.alive(), 30,
                   "the gateway to listen")
        assert self.alive(), self.output()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape /metrics: sample name and sorted labels -> value."""
        async with aiohttp.ClientSession() as http, http.get(self.admin + "/metrics") as response:
            text = await response.text()
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent)."""
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (a line the gateway is still writing is left out)."""
        text = self.output()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.startswith("{")]

    def session_logs(self) -> list[dict[str, Any]]:
        """Every session_closed log line written so far."""
        return [record for record in self.log_records() if record.get("event") == "session_closed"]

    async def wait_session_log(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Wait (without blocking the test's event loop) for ``count`` session lines; return them."""
        await async_wait_until(lambda: len(self.session_logs()) >= count, timeout, f"{count} session log lines")
        return self.session_logs()


# --- raw WebSocket client: for frames aiohttp's client cannot produce ------------------
def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """Encode a frame as a client would (masked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length < 4096 else _mask_large(key, payload)
    return header + key + body


def _mask_large(key: bytes, payload: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class RawClient:
    """A WebSocket client over a bare asyncio stream: sends any bytes, reads frames as they are."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, head: str) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.head = head

    @classmethod
    async def connect(cls, port: int, path: str = "/ws/echo", headers: dict[str, str] | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        return cls(reader, writer, status, head)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_raw(self, timeout: float = 10) -> tuple[int, bytes]:
        """(first header byte, payload) of the next frame, reserved bits included; raises on EOF."""
        async with asyncio.timeout(scaled(timeout)):
            b0, b1 = await self.reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            assert not b1 & 0x80, "server frames must not be masked"
            return b0, await self.reader.readexactly(length)

    async def read_frame(self, timeout: float = 10) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame; raises on EOF."""
        b0, payload = await self.read_raw(timeout)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def read_message(self, timeout: float = 10) -> tuple[int, bytes]:
        """(opcode, payload) of the next data message, its fragments joined; control frames are skipped.

        The gateway may re-head a frame it forwards as several fragments (every write ends on a
        frame boundary), so tests about messages read messages, not frames.
        """
        opcode, parts = -1, []
        while True:
            fin, op, payload = await self.read_frame(timeout)
            if op >= 0x8:
                if op == 0x8:
                    raise AssertionError(f"close frame {payload!r} before the end of a message")
                continue
            if opcode < 0:
                opcode = op
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    async def read_until_close(self, timeout: float = 10) -> tuple[int, str, list[tuple[bool, int, bytes]]]:
        """Read frames until a close frame; return its code, reason and the frames before it."""
        seen: list[tuple[bool, int, bytes]] = []
        while True:
            fin, opcode, payload = await self.read_frame(timeout)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return code, payload[2:].decode("utf-8", "replace"), seen
            seen.append((fin, opcode, payload))

    async def at_eof(self, timeout: float = 10) -> bool:
        """Wait for the server to close TCP; True when it did."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while await self.reader.read(65536):
                    pass
        except (ConnectionError, TimeoutError):
            return False
        return True

    def close(self) -> None:
        self.writer.close()



class NginxProcess(ManagedProcess):
    """Debian's NGINX as a reverse proxy (one worker) in front of ``backend_port``."""

    def __init__(self, tmp: Path, backend_port: int, read_timeout: str = "60s") -> None:
        self.port = free_port()
        prefix = tmp / f"nginx-{self.port}"
        super().__init__(nginx_command(prefix, self.port, backend_port, read_timeout), tmp / f"nginx-{self.port}.log")
        wait_until(lambda: port_open(self.port) or not self.alive(), 20, "nginx to listen")
        assert self.alive(), self.output() + (prefix / "error.log").read_text()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def request_headers(info: dict[str, Any]) -> dict[str, str]:
    """Headers the example app's /ws/request route reported, names lower-cased."""
    return {name.lower(): value for name, value in info["headers"]}


async def read_request_info(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> dict[str, Any]:
    """The next /ws/request report (path, query, headers, subprotocols), waited for with asyncio.wait_for.

    Not ``receive(timeout=)``: aiohttp restarts that timer on every gateway ping.
    """
    message = await asyncio.wait_for(ws.receive(), scaled(timeout))
    return dict(json.loads(message.data))


def start_demo(tmp: Path) -> tuple[ManagedProcess, int, int, int]:
    """``make demo``'s launcher on free ports: (process, app port, gateway port, admin port); stop() it."""
    app_port, gateway_port, admin_port = free_port(), free_port(), free_port()
    demo = ManagedProcess(
        [sys.executable, "-m", "examples.demo"], tmp / "demo.log",
        env={"DEMO_APP_PORT": str(app_port), "DEMO_GATEWAY_PORT": str(gateway_port),
             "DEMO_ADMIN_PORT": str(admin_port)},
    )
    return demo, app_port, gateway_port, admin_port
