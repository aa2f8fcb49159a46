"""permessage-deflate (RFC 7692): what compression saves on the client leg, and what it costs to do.

Issue 14 asks for permessage-deflate on the client leg, by passthrough (the client and the app
negotiate, the gateway relays compressed frames) or by termination (the gateway compresses towards
the client, the loopback leg stays plain). This script measures the two things that choice turns on:

    python -m bench.compression            # full run (about two minutes)
    python -m bench.compression --quick    # seconds; checks that the script works, not the figures

1. Wire bytes on the client leg for one chat-like stream: 300 JSON messages of about 250 bytes
   (seeded, so every run and every row sends the same bytes), sent by a ``websockets`` client to
   ``examples.app``'s /ws/echo under uvicorn, which echoes each one: the client->server direction
   is what the client compressed, server->client what uvicorn (or the relay) compressed. One row
   per path: direct to uvicorn offering permessage-deflate (the ``websockets`` default), through
   NGINX (a byte tunnel: the offer reaches uvicorn), through ws-gateway (which terminates
   compression: it answers the offer itself and deflates towards the client; its
   client.compression is switched on for this run), and direct with no offer. A counting TCP
   relay in this process sits between the client
   and the thing under test and counts TCP payload bytes each way. Each direction's handshake (up
   to and including the first CRLFCRLF) is counted apart and left out of the wire figures; the
   wire figures are read once the last echo has arrived, so the close handshake is left out too.
   Messages go one at a time (send, then wait for the echo) so that nothing else is in flight.
   Beside it, computed rather than sent: what a gateway terminating permessage-deflate would put
   on the client leg for the same stream with other settings (zlib's output, framed); its line with
   uvicorn's settings must equal the direct row byte for byte, which checks the counting relay.
2. What the compressing side pays, measured with zlib in this process the way a gateway that
   terminates permessage-deflate would use it: a compressobj and a decompressobj per session
   (raw deflate, the given window bits and memLevel, level Z_DEFAULT_COMPRESSION), each message
   compressed with flush(Z_SYNC_FLUSH) and its 00 00 ff ff tail dropped (RFC 7692 7.2.1), added back
   before decompressing. Memory is VmRSS growth of a fresh child process over N live pairs, first
   after a few messages each, then after two windows' worth of bytes went through each (a
   long-lived session's steady state), next to the allocation zlib's zconf.h documents. CPU is
   process CPU time (not wall time) per message over a longer stream from the same generator.
   ``no_context_takeover`` is a fresh context per message, as websockets does it (Python's zlib
   has no deflateReset(), so its CPU figure includes creating and freeing the objects; in exchange
   nothing need stay allocated between messages).

3. CPU per message at the relay and at the app, for sessions that negotiate compression and for
   sessions that do not, on the same three paths, the gateway's mypyc-compiled build (bench/compiled.py)
   and a bare uvloop pipe (bench/pipe.py, the floor of any Python relay) in front of the same uvicorn
   (bench/compression_cpu.py says how).

Figures from a shared 2-core machine vary between runs: the byte counts are exact and repeat,
the CPU figures do not (compare them with each other, not across machines).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.proxies import nginx_command, system_binary
from bench.run import HOST, ROOT, Server, free_port, wait_port

SEED = 14
STREAM_MESSAGES = 300
SYNC_TAIL = b"\x00\x00\xff\xff"
MEMORY_FEW_MESSAGES = 5
EXCHANGE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Settings:
    pairs: int  # live compressobj+decompressobj pairs for the memory figure
    timing_messages: int  # messages per CPU timing run
    timing_repeats: int  # the median of this many runs is kept


FULL = Settings(pairs=2000, timing_messages=3000, timing_repeats=5)
QUICK = Settings(pairs=100, timing_messages=300, timing_repeats=1)


@dataclass(frozen=True)
class ZlibSetting:
    wbits: int
    mem_level: int
    note: str = ""


ZLIB_SETTINGS = (
    ZlibSetting(9, 8),
    ZlibSetting(12, 8),
    ZlibSetting(15, 8, "zlib's default"),
    ZlibSetting(12, 5, "what uvicorn (websockets-sansio) and the websockets client use"),
    ZlibSetting(12, 2, "low memory"),
    ZlibSetting(12, 1, "low memory"),
)

# --- the stream -------------------------------------------------------------------------------

ROOMS = ("general", "random", "release-2.4", "oncall", "design-review", "support-eu", "support-us",
         "frontend", "payments", "data-platform")
NAMES = ("alice", "bob", "chen", "dmitri", "elif", "fatima", "gustavo", "hana", "ivan", "jun", "kemal",
         "lea", "mateo", "nadia", "olu", "priya", "quentin", "rosa", "sven", "tomas", "uma", "viktor")
# Common words first: they are drawn with Zipf weights (1/rank), as words in chat are.
_VOCABULARY = (
    "the to I a and is it you that of in for on this we be have with not but can it's so are just "
    "do was if at me my what think about an or will get like all there now one from out up they "
    "know yes no ok thanks please deploy PR review build test tests merge branch main release fix "
    "bug issue ticket prod staging rollback config logs error timeout latency dashboard alert "
    "oncall page incident postmortem meeting standup today tomorrow yesterday morning later soon "
    "sure great nice cool looks good LGTM done working broken again still maybe probably actually "
    "pretty quick question anyone seen this before why does how did where should we could would "
    "again after before during because since until while lunch coffee weekend team customer user "
    "users API endpoint gateway websocket reconnect retry cache database query index migration "
    "schema queue worker pod node cluster memory CPU disk network DNS TLS certificate expired token "
    "auth login session cookie header payload message messages frame compression bytes window "
    "benchmark numbers graph p99 spike noisy flaky CI pipeline green red yellow blocked unblocked "
    "shipping shipped rolled out reverted hotfix patch version upgrade downgrade dependency "
    "vendor docs README typo nit rename refactor cleanup follow-up TODO ASAP EOD ETA FYI IMO "
    "café naïve déjà-vu 🙂 👍 🎉 +1 :) haha lol hmm wow oops sorry np ty brb afk"
)
WORDS = tuple(dict.fromkeys(_VOCABULARY.split()))


def chat_messages(count: int, seed: int = SEED) -> list[str]:
    """``count`` JSON chat messages of 215-285 UTF-8 bytes each (about 250 on average), deterministic."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    users = [f"{rng.choice(NAMES)}{rng.randint(1, 99)}" for _ in range(40)]
    ts = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
    messages = []
    for i in range(count):
        ts += rng.randint(150, 12_000)
        target = rng.randint(215, 285)
        body = {"type": "chat", "id": f"m{i + 1:06d}", "room": rng.choice(ROOMS), "user": rng.choice(users),
                "text": "", "ts": ts}
        words: list[str] = []
        while True:
            word = rng.choices(WORDS, weights)[0]
            roll = rng.random()
            if roll < 0.04:
                word = f"#{rng.randint(100, 9999)}"
            elif roll < 0.07:
                word = f"{rng.randint(2, 950)}ms"
            words.append(word)
            body["text"] = " ".join(words)
            text = json.dumps(body, ensure_ascii=False)
            if len(text.encode()) >= target:
                break
        messages.append(text)
    return messages


def frame_bytes(payload: int, masked: bool) -> int:
    """Bytes of one unfragmented, uncompressed WebSocket frame (RFC 6455 5.2)."""
    header = 2 + (2 if 126 <= payload <= 0xFFFF else 8 if payload > 0xFFFF else 0)
    return header + (4 if masked else 0) + payload


# --- part 1: wire bytes on the client leg -----------------------------------------------------


@dataclass
class LegCount:
    """TCP payload bytes one way: the HTTP head (up to the first CRLFCRLF), then everything after it."""

    handshake: int = 0
    frames: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _in_head: bool = True

    def feed(self, data: bytes) -> None:
        if not self._in_head:
            self.frames += len(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return
        self.handshake = end + 4
        self.frames += len(self._head) - self.handshake
        self._in_head = False
        self._head.clear()


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes it forwards each way, per connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections: list[tuple[LegCount, LegCount]] = []  # (client->server, server->client)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CountingRelay:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        count = (LegCount(), LegCount())
        self.connections.append(count)
        try:
            server_reader, server_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer, count[0]),
                                 self._pipe(server_reader, client_writer, count[1]))
        finally:
            for writer in (client_writer, server_writer):
                writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: LegCount) -> None:
        try:
            while data := await reader.read(65536):
                count.feed(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()


@dataclass
class Exchange:
    negotiated: str
    up_handshake: int  # request head, client->server
    down_handshake: int  # response head, server->client
    up_frames: int
    down_frames: int


async def exchange(target_port: int, messages: list[str], offer: bool) -> Exchange:
    """Send each message, wait for its echo; count the client leg through a CountingRelay."""
    from websockets.asyncio.client import connect

    async with (
        CountingRelay(target_port) as relay,
        connect(f"ws://{HOST}:{relay.port}/ws/echo", compression="deflate" if offer else None,
                ping_interval=None, max_size=None, open_timeout=10, close_timeout=5) as ws,
    ):
        assert ws.response is not None
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions", "") or "none"
        for message in messages:
            await ws.send(message)
            echo = await ws.recv()
            if echo != message:
                raise RuntimeError("the echo differs from what was sent")
        up, down = relay.connections[-1]
        result = Exchange(negotiated, up.handshake, down.handshake, up.frames, down.frames)
    return result


@dataclass
class Row:
    name: str
    port: int | None  # what the client leg connects to; None: not available
    offer: bool
    why_not: str = ""
    result: Exchange | None = None
    failed: bool = False


def launch(name: str, args: list[str], port: int, servers: list[Server], logs: Path,
           env: dict[str, str] | None = None, cwd: Path = ROOT) -> Server:
    """Start a process, register it for the caller's ``finally`` at once, then wait for its port."""
    log_path = logs / f"{name.replace(' ', '-').replace(',', '')}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    server = Server(name, process, f"http://{HOST}:{port}")
    servers.append(server)
    try:
        wait_port(port, process)
    except RuntimeError as exc:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{exc}; {' / '.join(tail)}") from None
    return server


def start_paths(servers: list[Server], workdir: Path) -> list[Row]:
    """uvicorn with examples.app, then NGINX and ws-gateway in front of it; one Row per client path."""
    python = sys.executable
    uvicorn_port = free_port()
    launch("uvicorn", [python, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port", str(uvicorn_port),
                       "--log-level", "warning", "--ws-ping-interval", "0"], uvicorn_port, servers, workdir)
    rows = [Row("direct to uvicorn, client offers deflate", uvicorn_port, True)]

    nginx_row = Row("NGINX -> uvicorn, client offers deflate", None, True)
    try:
        port = free_port()
        launch("nginx", nginx_command(workdir / "nginx", port, uvicorn_port), port, servers, workdir)
        nginx_row.port = port
    except (FileNotFoundError, RuntimeError) as exc:
        nginx_row.why_not = str(exc)
    rows.append(nginx_row)

    gateway_row = Row("ws-gateway -> uvicorn, client offers deflate", None, True)
    try:
        gateway_row.port = launch_gateway("ws-gateway", servers, workdir, uvicorn_port, ROOT)
    except RuntimeError as exc:
        gateway_row.why_not = str(exc)
    rows.append(gateway_row)

    rows.append(Row("direct to uvicorn, no offer", uvicorn_port, False))
    return rows


def launch_gateway(name: str, servers: list[Server], workdir: Path, uvicorn_port: int, tree: Path) -> int:
    """ws-gateway from the checkout at ``tree`` (this one, or a compiled copy) in front of uvicorn; its port."""
    port = free_port()
    env = {"GATEWAY_LOG_LEVEL": "warning", "GATEWAY_CLIENT_PING_INTERVAL": "0",
           "GATEWAY_UPSTREAM_PING_INTERVAL": "0", "GATEWAY_DRAIN_LISTENER_DELAY": "0s",
           "GATEWAY_DRAIN_SPREAD": "0s", "GATEWAY_DRAIN_TIMEOUT": "2s",
           "GATEWAY_CLIENT_COMPRESSION_ENABLED": "true"}
    launch(name, [sys.executable, "-m", "gateway", "--listen", f"{HOST}:{port}", "--admin-listen",
                  f"{HOST}:{free_port()}", "--upstream", f"ws://{HOST}:{uvicorn_port}"],
           port, servers, workdir, env, cwd=tree)
    return port


def start_compiled_gateway(servers: list[Server], workdir: Path) -> int | None:
    """Part 3's row of the mypyc-compiled build (bench/compiled.py) next to the pure-Python one, or None."""
    from bench.compiled import compiled_checkout

    uvicorn_port = int(next(server for server in servers if server.name == "uvicorn").url.rsplit(":", 1)[1])
    try:
        tree = compiled_checkout(workdir / "compiled")
        return launch_gateway("ws-gateway, compiled", servers, workdir, uvicorn_port, tree)
    except (RuntimeError, OSError) as exc:
        print(f"(no compiled gateway row: {exc})", flush=True)
        return None


def start_pipe(servers: list[Server], workdir: Path) -> int | None:
    """The floor of part 3 (bench/pipe.py): a bare uvloop pipe in front of the same uvicorn, or None."""
    uvicorn_port = int(next(server for server in servers if server.name == "uvicorn").url.rsplit(":", 1)[1])
    port = free_port()
    try:
        launch("uvloop pipe", [sys.executable, "-m", "bench.pipe", str(port), str(uvicorn_port)], port, servers,
               workdir)
    except RuntimeError:
        return None
    return port


async def measure_paths(rows: list[Row], messages: list[str]) -> None:
    for row in rows:
        if row.port is None:
            continue
        try:
            row.result = await asyncio.wait_for(exchange(row.port, messages, row.offer), EXCHANGE_TIMEOUT)
        except Exception as exc:
            row.why_not = f"failed: {type(exc).__name__}: {exc}"
            row.failed = True


def ratio(value: float, reference: float | None, digits: int = 3, suffix: str = "") -> str:
    return "-" if not reference else f"{value / reference:.{digits}f}{suffix}"


def wire_report(rows: list[Row], messages: list[str]) -> str:
    payload = sum(len(m.encode()) for m in messages)
    plain_down = sum(frame_bytes(len(m.encode()), masked=False) for m in messages)
    plain_up = sum(frame_bytes(len(m.encode()), masked=True) for m in messages)
    reference = rows[0].result
    ref_down = reference.down_frames if reference else None
    ref_up = reference.up_frames if reference else None
    lines = [
        f"\n## 1. Client-leg wire bytes: {len(messages)} JSON chat messages, {payload:,} bytes of payload, "
        f"{payload / len(messages):.0f} B/msg",
        "",
        "Wire = TCP payload bytes after the handshake up to the last echo (frame headers, masks and "
        "compressed data; handshake heads counted apart, close excluded). Ratios: wire/payload, and wire "
        "against the first row in the same direction.",
        "",
        "| client leg | negotiated (Sec-WebSocket-Extensions in the 101) | payload B | server->client wire B "
        "| B/msg | wire/payload | vs direct+deflate | client->server wire B | B/msg | wire/payload "
        "| vs direct+deflate | handshake B (request / response) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        r = row.result
        if r is None:
            label = row.why_not if row.failed else f"not available: {row.why_not}"
            lines.append(f"| {row.name} | {label} | {payload:,} | - | - | - | - | - | - | - | - | - |")
            continue
        n = len(messages)
        lines.append(
            f"| {row.name} | `{r.negotiated}` | {payload:,} | {r.down_frames:,} | {r.down_frames / n:.1f} "
            f"| {r.down_frames / payload:.3f} | {ratio(r.down_frames, ref_down, 2, 'x')} "
            f"| {r.up_frames:,} | {r.up_frames / n:.1f} | {r.up_frames / payload:.3f} "
            f"| {ratio(r.up_frames, ref_up, 2, 'x')} | {r.up_handshake:,} / {r.down_handshake:,} |")
        if r.negotiated == "none" and (r.down_frames, r.up_frames) != (plain_down, plain_up):
            notes.append(f"* {row.name}: uncompressed, yet not the {plain_down:,} / {plain_up:,} bytes its "
                         f"frames alone take: {r.down_frames - plain_down:+,} / {r.up_frames - plain_up:+,} "
                         "bytes of other frames (pings?) were counted.")
    lines += ["", f"Uncompressed frames for this stream: {plain_down:,} B server->client (2-4 B header), "
                  f"{plain_up:,} B client->server (+4 B mask)."]
    lines += notes
    return "\n".join(lines)


# --- part 2: what compressing costs, with zlib -----------------------------------------------


def compressor(setting: ZlibSetting) -> zlib._Compress:
    return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -setting.wbits, setting.mem_level)


def decompressor(setting: ZlibSetting) -> zlib._Decompress:
    return zlib.decompressobj(-setting.wbits)


def deflate_message(comp: zlib._Compress, data: bytes) -> bytes:
    """One permessage-deflate message body: compress, sync flush, drop the 00 00 ff ff tail."""
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(SYNC_TAIL)
    return out[:-4]


def compress_stream(setting: ZlibSetting, payloads: list[bytes], takeover: bool) -> list[bytes]:
    comp = compressor(setting)
    chunks = []
    for data in payloads:
        if not takeover:
            comp = compressor(setting)
        chunks.append(deflate_message(comp, data))
    return chunks


TERMINATION_SETTINGS = (ZlibSetting(12, 5), ZlibSetting(12, 1), ZlibSetting(15, 8), ZlibSetting(9, 8))


def termination_report(rows: list[Row], messages: list[str]) -> str:
    """What a terminating gateway would put on the client leg: zlib's output for the stream, framed.

    Computed, not sent: each message deflated as RFC 7692 says (sync flush, tail dropped) and
    counted with its frame header (+4 B mask client->server). The first line's settings are
    uvicorn's, so it should equal the direct row above byte for byte: a check of the counting relay.
    """
    payloads = [m.encode() for m in messages]
    reference = rows[0].result
    lines = ["", "### What termination would put on the client leg (computed with zlib, framed, not sent)", "",
             "| window bits / memLevel | context | server->client B | vs direct+deflate | client->server B "
             "| vs direct+deflate |", "|---|---|---|---|---|---|"]
    for setting in TERMINATION_SETTINGS:
        for takeover in (True, False):
            chunks = compress_stream(setting, payloads, takeover)
            down = sum(frame_bytes(len(c), masked=False) for c in chunks)
            up = sum(frame_bytes(len(c), masked=True) for c in chunks)
            lines.append(
                f"| {setting.wbits} / {setting.mem_level} | {'takeover' if takeover else 'no_context_takeover'} "
                f"| {down:,} | {ratio(down, reference.down_frames if reference else None, 2, 'x')} | {up:,} "
                f"| {ratio(up, reference.up_frames if reference else None, 2, 'x')} |")
    return "\n".join(lines)


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(wbits: int, mem_level: int, pairs: int) -> None:
    """Run in a fresh process: VmRSS growth per live pair, after a few messages and after two windows."""
    setting = ZlibSetting(wbits, mem_level)
    fill = 2 << wbits  # bytes through each context in the second phase: the window twice over
    payloads = [m.encode() for m in chat_messages(max(MEMORY_FEW_MESSAGES, fill // 215 + 2))]
    peer = compress_stream(setting, payloads, takeover=True)  # what each pair's decompressor receives
    gc.collect()
    gc.disable()
    before = vm_rss_kib()
    live = []
    for _ in range(pairs):
        comp, decomp = compressor(setting), decompressor(setting)
        for i in range(MEMORY_FEW_MESSAGES):
            deflate_message(comp, payloads[i])
            decomp.decompress(peer[i] + SYNC_TAIL)
        live.append((comp, decomp))
    few = vm_rss_kib()
    for comp, decomp in live:
        through, i = sum(len(p) for p in payloads[:MEMORY_FEW_MESSAGES]), MEMORY_FEW_MESSAGES
        while through < fill:
            deflate_message(comp, payloads[i])
            decomp.decompress(peer[i] + SYNC_TAIL)
            through += len(payloads[i])
            i += 1
    filled = vm_rss_kib()
    print(json.dumps({"few": (few - before) / pairs, "filled": (filled - before) / pairs}))


def documented_kib(setting: ZlibSetting) -> float:
    """zconf.h: deflate (1 << (wbits+2)) + (1 << (memLevel+9)); inflate (1 << wbits) + about 7 KB."""
    deflate = (1 << (setting.wbits + 2)) + (1 << (setting.mem_level + 9))
    inflate = (1 << setting.wbits) + 7 * 1024
    return (deflate + inflate) / 1024


def measure_memory(setting: ZlibSetting, pairs: int) -> tuple[float, float] | str:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.compression", "--memory-child", str(setting.wbits), str(setting.mem_level),
         str(pairs)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            return f"child failed: {err.decode(errors='replace').strip().splitlines()[-1:]}"
        figures = json.loads(out)
        return float(figures["few"]), float(figures["filled"])
    except subprocess.TimeoutExpired:
        return "child timed out"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclass
class ZlibResult:
    setting: ZlibSetting
    memory: tuple[float, float] | str
    ratio: float  # compressed / payload, context takeover
    fresh_ratio: float  # compressed / payload, no_context_takeover
    runs: dict[str, Callable[[], None]] = field(repr=False)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def cpu(self, kind: str) -> float:
        return statistics.median(self.samples[kind])


def timing_runs(setting: ZlibSetting, timing: list[bytes]) -> dict[str, Callable[[], None]]:
    """The four timed loops over ``timing``: compress and decompress, with and without context takeover."""
    kept = compress_stream(setting, timing, takeover=True)
    fresh = compress_stream(setting, timing, takeover=False)
    decomp = decompressor(setting)  # the chunks decode back to the messages, with and without takeover
    assert [decomp.decompress(c + SYNC_TAIL) for c in kept] == timing
    assert [decompressor(setting).decompress(c + SYNC_TAIL) for c in fresh] == timing

    def compress_kept() -> None:
        comp = compressor(setting)
        for data in timing:
            comp.compress(data)
            comp.flush(zlib.Z_SYNC_FLUSH)

    def decompress_kept() -> None:
        decomp = decompressor(setting)
        for chunk in kept:
            decomp.decompress(chunk + SYNC_TAIL)

    def compress_fresh() -> None:
        for data in timing:
            comp = compressor(setting)
            comp.compress(data)
            comp.flush(zlib.Z_SYNC_FLUSH)

    def decompress_fresh() -> None:
        for chunk in fresh:
            decompressor(setting).decompress(chunk + SYNC_TAIL)

    return {"compress": compress_kept, "decompress": decompress_kept,
            "fresh compress": compress_fresh, "fresh decompress": decompress_fresh}


def measure_zlib(settings: Settings, stream: list[bytes], timing: list[bytes]) -> list[ZlibResult]:
    payload = sum(len(p) for p in stream)
    results = []
    for setting in ZLIB_SETTINGS:
        kept = compress_stream(setting, stream, takeover=True)
        fresh = compress_stream(setting, stream, takeover=False)
        results.append(ZlibResult(setting, measure_memory(setting, settings.pairs),
                                  sum(map(len, kept)) / payload, sum(map(len, fresh)) / payload,
                                  timing_runs(setting, timing)))
    # CPU in rounds that visit every setting in turn: a busy moment on the shared machine then
    # lands on one sample of each row rather than on all samples of one row.
    for _ in range(settings.timing_repeats):
        for result in results:
            for kind, run in result.runs.items():
                started = time.process_time_ns()
                run()
                result.samples.setdefault(kind, []).append((time.process_time_ns() - started) / 1000 / len(timing))
    return results


def zlib_report(results: list[ZlibResult], settings: Settings, stream: list[bytes], timing: list[bytes]) -> str:
    lines = [
        "\n## 2. Cost of compressing at the gateway (zlib in-process, level Z_DEFAULT_COMPRESSION)",
        "",
        f"Memory: VmRSS growth of a fresh process over {settings.pairs:,} live pairs (compressobj + "
        f"decompressobj) / {settings.pairs:,}, after {MEMORY_FEW_MESSAGES} messages through each, then after "
        "2 x window bytes through each; zconf.h's figure for the pair beside them. CPU: process CPU µs per "
        f"message, median of {settings.timing_repeats} rounds (each visiting every row) over {len(timing):,} messages "
        f"(mean {sum(map(len, timing)) / len(timing):.0f} B). Size: compressed bytes (tail dropped, no frame "
        f"headers) / payload for the {len(stream)}-message stream of part 1.",
        "",
        "| wbits | memLevel | KiB/pair, few msgs | KiB/pair, window full | zconf.h KiB/pair "
        "| compress+flush µs/msg | decompress µs/msg | size ratio "
        "| no_context_takeover: compress µs/msg | decompress µs/msg | size ratio | size vs takeover | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.setting
        if isinstance(r.memory, str):
            few = full = f"not available: {r.memory}"
        else:
            few, full = f"{r.memory[0]:.1f}", f"{r.memory[1]:.1f}"
        lines.append(
            f"| {s.wbits} | {s.mem_level} | {few} | {full} | {documented_kib(s):.0f} | {r.cpu('compress'):.2f} "
            f"| {r.cpu('decompress'):.2f} | {r.ratio:.3f} | {r.cpu('fresh compress'):.2f} "
            f"| {r.cpu('fresh decompress'):.2f} "
            f"| {r.fresh_ratio:.3f} | {r.fresh_ratio / r.ratio:.1f}x | {s.note} |")
    return "\n".join(lines)


# --- how measured ----------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import version

    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    try:
        nginx = subprocess.run([system_binary("nginx"), "-v"], capture_output=True, text=True, timeout=10,
                               check=False).stderr.strip().removeprefix("nginx version: ")
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        nginx = f"not available ({exc})"
    ws_impl = "none" if AutoWebSocketsProtocol is None else AutoWebSocketsProtocol.__module__.rsplit(".", 1)[-1]
    return {"uvicorn": f"{version('uvicorn')} (--ws auto: {ws_impl})", "websockets": version("websockets"),
            "nginx": nginx, "zlib": zlib.ZLIB_RUNTIME_VERSION, "python": platform.python_version()}


def header(quick: bool, messages: list[str]) -> str:
    v = versions()
    payload = [len(m.encode()) for m in messages]
    return "\n".join([
        f"# permessage-deflate measurements ({'quick' if quick else 'full'} run)",
        "",
        "## How measured",
        "",
        f"* machine: {platform.system()} {platform.release()} {platform.machine()}, os.cpu_count() = "
        f"{os.cpu_count()}, {time.strftime('%Y-%m-%d %H:%M %Z')}; loopback only (127.0.0.1)",
        f"* versions: uvicorn {v['uvicorn']}, websockets {v['websockets']} (client), nginx {v['nginx']} "
        f"(1 worker, bench/proxies.py's config), zlib {v['zlib']}, Python {v['python']}",
        f"* stream: {len(messages)} JSON chat messages from chat_messages(seed={SEED}), "
        f"{min(payload)}-{max(payload)} B, mean {statistics.mean(payload):.0f} B; first: `{messages[0]}`",
        "* part 1: websockets client -> counting TCP relay (this process) -> path under test -> uvicorn "
        "examples.app:app /ws/echo (--ws-ping-interval 0; the gateway with client and upstream pings off), "
        "one message in flight; byte counts are exact and repeat run to run",
        "* part 2: zlib in this process (memory in one child process per setting); CPU times vary with "
        "the machine's load",
        "* part 3: the same paths, websockets clients in this process, CPU of the relay's and uvicorn's "
        "processes from /proc (bench/compression_cpu.py); ticks of 10 ms, so figures move by ~0.5 µs",
    ])


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts: checks the script, not the figures")
    parser.add_argument("--memory-child", nargs=3, type=int, metavar=("WBITS", "MEMLEVEL", "PAIRS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0
    settings = QUICK if args.quick else FULL
    messages = chat_messages(STREAM_MESSAGES)
    print(header(args.quick, messages), flush=True)

    from bench.compression_cpu import CPU_FULL, CPU_QUICK, cpu_paths, cpu_report, measure_cpu

    cpu_settings = CPU_QUICK if args.quick else CPU_FULL
    cpu_messages = chat_messages(cpu_settings.messages, seed=SEED + 2)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="ws-gateway-compression-") as workdir:
        try:
            rows = start_paths(servers, Path(workdir))
            asyncio.run(measure_paths(rows, messages))
            pipe_port = start_pipe(servers, Path(workdir))
            compiled_port = start_compiled_gateway(servers, Path(workdir))
            paths = cpu_paths(servers, {"direct": rows[0].port, "nginx": rows[1].port, "gateway": rows[2].port,
                                        "gateway compiled": compiled_port, "pipe": pipe_port})
            asyncio.run(measure_cpu(paths, cpu_settings, cpu_messages))
        finally:
            for server in reversed(servers):
                server.stop()
    print(wire_report(rows, messages), flush=True)
    print(termination_report(rows, messages), flush=True)
    print(cpu_report(paths, cpu_settings, cpu_messages), flush=True)

    stream = [m.encode() for m in messages]
    timing = [m.encode() for m in chat_messages(settings.timing_messages, seed=SEED + 1)]
    results = measure_zlib(settings, stream, timing)
    print(zlib_report(results, settings, stream, timing), flush=True)
    return 1 if any(row.failed for row in rows) or any(path.error for path in paths) else 0


if __name__ == "__main__":
    sys.exit(main())
