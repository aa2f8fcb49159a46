"""Live fuzzing of both legs: seeded hostile clients and a hostile upstream against the real gateway process.

Client leg: raw-socket clients send valid and malformed frame streams (the generators of
``tests/framegen.py``) through a gateway in front of the example app, while one well-behaved
aiohttp client echoes through the same gateway all along. Upstream leg: a raw asyncio server
answers every upgrade with a valid 101, then sends a seeded stream of valid, malformed or
truncated frames to a second gateway's clients. The reference model says what each session must
deliver and with which close code it must end; afterwards the gateway must be alive, its log free
of tracebacks, every session ended and logged, and its file descriptors back to where they were.

Seeds are fixed (``WS_GATEWAY_FUZZ_SEED`` picks others, ``WS_GATEWAY_FUZZ_SESSIONS`` sets how many
sessions each leg runs), so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from gateway.core.closecodes import cause_for_code
from gateway.core.handshake import accept_key
from tests.framegen import (
    BINARY,
    TEXT,
    Expected,
    RandomChoices,
    chance,
    damage,
    encode,
    mutate,
    reference_decode,
    valid_frames,
)
from tests.support import HOST, GatewayProcess, RawClient, Upstream, async_wait_until, client_frame, free_port, scaled

SEED = int(os.environ.get("WS_GATEWAY_FUZZ_SEED", "6455"))
SESSIONS = int(os.environ.get("WS_GATEWAY_FUZZ_SESSIONS", "100"))
CONCURRENCY = 6
MAX_MESSAGE = 100 * 1024
MAX_FRAME = 16 * 1024
LIMITS = {"max_message_size": "100KiB", "max_frame_size": "16KiB"}
SESSION_END = 5.0
"""Seconds (scaled) a session may take to end once its peer's stream is out (close_timeout is 500ms)."""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def hostile_stream(seed: int, *, client: bool) -> tuple[bytes, Expected]:
    """A seeded stream (valid one time in four) whose delivered text messages are all UTF-8, and its model.

    The peers at the end (uvicorn, aiohttp's client) check UTF-8 in text messages themselves and
    close with 1007; the gateway relays text as bytes (so does the model), so the live test keeps
    to streams where that cannot race with the gateway's own verdict.
    """
    for attempt in range(100):
        ch = RandomChoices(seed * 1000 + attempt)
        specs = valid_frames(ch, client=client, large=chance(ch, 10))
        broken = seed % 4 != 0
        if broken:
            specs = mutate(ch, specs, client=client)
            if chance(ch, 50):
                specs += valid_frames(ch, client=client, close=70)
        stream = encode(specs)
        if broken:
            stream = damage(ch, stream)
        exp = reference_decode(stream, client=client, max_message=MAX_MESSAGE, max_frame=MAX_FRAME)
        if all(opcode != TEXT or _utf8(payload) for opcode, payload in exp.messages):
            return stream, exp
    raise AssertionError(f"seed {seed}: no stream with UTF-8 texts in 100 attempts")


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reassemble(frames: list[tuple[bool, int, bytes]]) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    """Data frames read back as whole messages, and the payloads of the pongs among them."""
    messages, pongs, opcode, parts = [], [], -1, []
    for fin, op, payload in frames:
        if op == 0xA:
            pongs.append(payload)
        if op >= 0x8:
            continue
        opcode = op if op else opcode
        parts.append(payload)
        if fin:
            messages.append((opcode, b"".join(parts)))
            parts = []
    return messages, pongs


async def send_in_pieces(writer: asyncio.StreamWriter, stream: bytes, rng: random.Random) -> bool:
    """Write ``stream`` in random pieces; False when the gateway closed the connection first."""
    pos = 0
    try:
        while pos < len(stream):
            size = rng.choice((1, 7, 100, 1500, 16384, 70000))
            writer.write(stream[pos:pos + size])
            pos += size
            await writer.drain()
    except ConnectionError:
        return False
    return True


@dataclass
class Tally:
    """What the sessions of one leg did, for the checks at the end and the report."""

    sessions: int = 0
    by_end: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0
    causes: Counter[str] = field(default_factory=Counter)
    """The ``cause`` each session's log line must have."""

    def count(self, end: str, seconds: float, cause: str) -> None:
        self.causes[cause] += 1
        self.sessions += 1
        self.by_end[end] = self.by_end.get(end, 0) + 1
        self.slowest = max(self.slowest, seconds)


def code_of(event: tuple[object, ...]) -> int:
    """The close code of a model's ("close", code, reason) or ("violation", code, final) event."""
    code = event[1]
    assert isinstance(code, int)
    return code


def cause_of(end: tuple[object, ...]) -> str:
    """The session line's cause for a peer's end (README's close table): its violation, or its close code's cause."""
    if end[0] == "violation":
        return "message_too_big" if end[1] == 1009 else "protocol_error"
    return cause_for_code(code_of(end)).value


def awaits_our_close(exp: Expected) -> bool:
    """After a violation the gateway waits for the peer's close, unless the stream had one or cannot be read on."""
    return bool(exp.end) and exp.events[-1][0] == "violation" and exp.events[-1][2] is False


async def closed_by_gateway(reader: asyncio.StreamReader) -> bytes | None:
    """Read to the end: what came (after a close frame: nothing, RFC 6455 5.5.1), or None if TCP stayed open."""
    rest = b""
    try:
        async with asyncio.timeout(scaled(SESSION_END)):
            while data := await reader.read(65536):
                rest += data
    except ConnectionError:
        pass  # our late writes may turn the gateway's FIN into a reset: closed all the same
    except TimeoutError:
        return None
    return rest


def pings_before_end(exp: Expected) -> list[bytes]:
    """Payloads of the pings a relay must answer: those before the peer's end (after its own close it sends nothing)."""
    end = exp.events.index(exp.end) if exp.end else len(exp.events)
    return [e[1] for e in exp.events[:end] if e[0] == "ping" and isinstance(e[1], bytes)]


async def hostile_client(port: int, seed: int, tally: Tally) -> None:
    """One raw client: send the seed's stream, then check the close code and the echoes the model predicts."""
    stream, exp = hostile_stream(seed, client=True)
    rng = random.Random(seed)
    started = time.monotonic()
    client = await RawClient.connect(port)
    try:
        assert client.status == 101, f"seed {seed}: {client.head}"
        # Up to where the gateway stops reading; the rest only once its close is read (writing on
        # while it closes TCP would turn its FIN into a reset that can overtake the close frame).
        sent = await send_in_pieces(client.writer, stream[:exp.read_to], rng)
        end = exp.end
        if end is None and (exp.tail or (exp.partial is not None and rng.random() < 0.5)):
            # The stream stops inside a frame (or a message): the client just goes away.
            client.writer.close()
            tally.count("client vanished", time.monotonic() - started, "abnormal")
            return
        if end is None:
            client.send(client_frame(0x8, (1000).to_bytes(2, "big")))
            expected = 1000
        else:
            expected = code_of(end)
        assert sent, f"seed {seed}: the gateway closed the connection before reading all it must read"
        code, _, frames = await client.read_until_close(timeout=SESSION_END)
        await send_in_pieces(client.writer, stream[exp.read_to:], rng)  # what it must not read: may fail
        assert code == expected, f"seed {seed}: close {code}, model says {end or 'no end (we sent 1000)'}"
        echoes, pongs = reassemble(frames)
        assert echoes == exp.messages[:len(echoes)], f"seed {seed}: echoes are not the messages sent, in order"
        assert pongs == pings_before_end(exp), f"seed {seed}: the pongs do not answer the pings, in order"
        if awaits_our_close(exp) and rng.random() < 0.5:
            client.send(client_frame(0x8, (1000).to_bytes(2, "big")))  # else the gateway's close_timeout ends it
        rest = await closed_by_gateway(client.reader)
        assert rest is not None, f"seed {seed}: the gateway did not close TCP"
        assert rest == b"", f"seed {seed}: the gateway wrote {rest[:40]!r} after its close frame"
        tally.count(f"{end[0]} {end[1]}" if end else "closed by us", time.monotonic() - started,
                    cause_of(end) if end else "normal")
    finally:
        client.close()


async def steady_echo(url: str, stop: asyncio.Event) -> int:
    """Echo through the gateway until ``stop``; every echo must come back, in order. Returns the count."""
    count = 0
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/ws/echo") as ws:
        while not stop.is_set():
            payload = f"steady {count} " + "x" * (count * 37 % 3000)
            if count % 2:
                await ws.send_bytes(payload.encode())
            else:
                await ws.send_str(payload)
            message = await asyncio.wait_for(ws.receive(), scaled(10))
            kind, data = (aiohttp.WSMsgType.BINARY, payload.encode()) if count % 2 else (aiohttp.WSMsgType.TEXT,
                                                                                      payload)
            assert (message.type, message.data) == (kind, data), f"echo {count}: {message}"
            count += 1
        await ws.close()
        assert ws.close_code == 1000, f"the steady client's close: {ws.close_code}"
    return count


async def settled(gw: GatewayProcess, sessions: int, fds: int) -> None:
    """Every session logged, none open, the descriptors back to the baseline, the process alive, the log clean."""
    await gw.wait_session_log(sessions, timeout=SESSION_END * 2)
    assert len(gw.session_logs()) == sessions
    await wait_metric_zero(gw, "ws_gateway_sessions_open")
    await async_wait_until(lambda: open_fds(gw.pid) <= fds, SESSION_END, f"the gateway's descriptors back to {fds}")
    assert gw.alive()
    log = gw.output()
    assert "Traceback" not in log and "Fatal error" not in log, log[-3000:]


async def wait_metric_zero(gw: GatewayProcess, name: str) -> None:
    """Poll the gateway's /metrics until ``name`` is 0 (within SESSION_END, scaled)."""
    deadline = time.monotonic() + scaled(SESSION_END)
    while (value := await gw.metric(name)) != 0:
        assert time.monotonic() < deadline, f"{name} is still {value}"
        await asyncio.sleep(0.05)


async def baseline(gw: GatewayProcess, warm_up: Callable[[], Awaitable[None]]) -> int:
    """The gateway's descriptor count after one session and one scrape (lazy opens done)."""
    await warm_up()
    await gw.wait_session_log(1)
    await wait_metric_zero(gw, "ws_gateway_sessions_open")
    return open_fds(gw.pid)


async def test_hostile_clients_with_a_steady_client(
    make_gateway: Callable[..., GatewayProcess], upstream: Upstream
) -> None:
    """Seeded malformed and valid client streams end as the model says; a steady client on the gateway never notices."""
    gw = make_gateway(upstream.url, {"client": {"close_timeout": "500ms"}, "upstream": LIMITS})

    async def warm_up() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(gw.url + "/ws/echo") as ws:
            await ws.send_str("warm")
            assert (await asyncio.wait_for(ws.receive(), scaled(10))).data == "warm"

    fds = await baseline(gw, warm_up)
    stop = asyncio.Event()
    steady = asyncio.create_task(steady_echo(gw.url, stop))
    tally = Tally()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(seed: int) -> None:
        async with slots:
            await hostile_client(gw.port, seed, tally)

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(SEED + i) for i in range(SESSIONS)))
    finally:
        stop.set()
        echoed = await steady
    elapsed = time.monotonic() - started
    print(f"client leg: {tally.sessions} hostile sessions in {elapsed:.1f}s, slowest {tally.slowest:.2f}s, "
          f"{echoed} steady echoes; ends: {tally.by_end}")
    assert tally.sessions == SESSIONS and tally.slowest < scaled(SESSION_END)
    assert echoed >= SESSIONS, "the steady client ran for the whole test"
    await settled(gw, 1 + SESSIONS + 1, fds)
    causes = Counter(line["cause"] for line in gw.session_logs())
    assert causes == tally.causes + Counter(normal=2), "the session lines' causes are not the model's"


class HostileUpstream:
    """A raw upstream on 127.0.0.1: a valid 101 to every upgrade, then the stream its path's seed makes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.received: dict[int, bytes] = {}
        """What the gateway sent each seed's connection, when it stayed to read (until EOF)."""

    async def __aenter__(self) -> HostileUpstream:
        self.server = await asyncio.start_server(self._handle, HOST, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            path = head.split(" ", 2)[1]
            key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
            seed = int(path.rsplit("/", 1)[1])
            stream, exp = hostile_stream(seed, client=False) if seed >= 0 else (b"\x88\x02\x03\xe8", None)
            rng = random.Random(seed)
            read_to = len(stream) if exp is None else exp.read_to
            if not await send_in_pieces(writer, stream[:read_to], rng):
                return
            if exp is not None and exp.end is None and not lingers(seed):
                return  # gone without a close frame
            # Stay until the gateway closes (it aborts us after close_timeout if we never answer); what
            # it must not read goes only once its close is here (see hostile_client).
            received, rest = b"", stream[read_to:]
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(scaled(SESSION_END)):
                    while data := await reader.read(65536):
                        received += data
                        if rest and any(e[0] == "close" for e in gateway_frames(received).events):
                            await send_in_pieces(writer, rest, rng)
                            rest = b""
            self.received[seed] = received
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled at the end of a failed test: end quietly (asyncio would log a cancelled handler)
        finally:
            writer.close()
            self.handlers.discard(task)


def gateway_frames(data: bytes) -> Expected:
    """What the gateway sent the app, read as the app would (the gateway is the client there: it masks)."""
    return reference_decode(data, client=True, max_message=1 << 40, max_frame=1 << 40)


def lingers(seed: int) -> bool:
    """Whether the app of a stream with no end stays connected (the client closes) rather than dropping TCP."""
    return random.Random(-seed).random() < 0.5


def upstream_close_code(exp: Expected) -> int:
    """The close the gateway sends the app (README's close table): the violation's code, the app's own, or 1000
    (the client's) when the app sent no end and the client closed."""
    return 1000 if exp.end is None else code_of(exp.end)


def upstream_expectation(exp: Expected) -> int:
    """The client's close code when the app sends what ``exp`` models (README's close table, reconnection off)."""
    end = exp.end
    if end is None:
        return 1011  # the app went away without a close frame
    if end[0] == "violation":
        return 1001 if end[1] == 1009 else 1014
    return code_of(end)


async def hostile_session(gw: GatewayProcess, seed: int, tally: Tally) -> None:
    """One client through the gateway to the hostile upstream: the model's messages, then the predicted close."""
    _, exp = hostile_stream(seed, client=False)
    started = time.monotonic()
    messages: list[tuple[int, bytes]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gw.url}/fuzz/{seed}") as ws:
        while True:
            if exp.end is None and len(messages) == len(exp.messages) and lingers(seed):
                await ws.close()  # the app says nothing more and does not leave: we do
                code = 1000
                break
            message = await asyncio.wait_for(ws.receive(), scaled(SESSION_END * 2))
            if message.type == aiohttp.WSMsgType.TEXT:
                messages.append((TEXT, message.data.encode()))
            elif message.type == aiohttp.WSMsgType.BINARY:
                messages.append((BINARY, message.data))
            else:
                assert message.type == aiohttp.WSMsgType.CLOSE, f"seed {seed}: {message}"
                code = message.data or 1005  # aiohttp: 0 for a close frame with no code
                break
    assert messages == exp.messages, f"seed {seed}: messages differ from the model's"
    if code != 1000 or exp.end is not None:
        assert code == upstream_expectation(exp), f"seed {seed}: close {code}, model says {exp.end or 'no end'}"
    cause = cause_of(exp.end) if exp.end else "normal" if code == 1000 else "abnormal"
    tally.count(f"{exp.end[0]} {exp.end[1]}" if exp.end else f"no end, {code}", time.monotonic() - started, cause)


async def test_hostile_upstream(make_gateway: Callable[..., GatewayProcess]) -> None:
    """Seeded malformed, valid and truncated app streams reach the client as the model says; nothing is left behind."""
    async with HostileUpstream() as app:
        gw = make_gateway(f"ws://{HOST}:{app.port}", {"client": {"close_timeout": "500ms", **LIMITS},
                                                      "reconnect": {"enabled": False}})

        async def warm_up() -> None:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{gw.url}/fuzz/-1") as ws:
                assert (await asyncio.wait_for(ws.receive(), scaled(10))).type == aiohttp.WSMsgType.CLOSE

        fds = await baseline(gw, warm_up)
        tally = Tally()
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(seed: int) -> None:
            async with slots:
                await hostile_session(gw, seed, tally)

        started = time.monotonic()
        await asyncio.gather(*(one(SEED + i) for i in range(SESSIONS)))
        elapsed = time.monotonic() - started
        print(f"upstream leg: {tally.sessions} sessions in {elapsed:.1f}s, slowest {tally.slowest:.2f}s; "
              f"ends: {tally.by_end}")
        await settled(gw, 1 + SESSIONS, fds)
        causes = Counter(line["cause"] for line in gw.session_logs())
        assert causes == tally.causes + Counter(normal=1), "the session lines' causes are not the model's"
        await async_wait_until(lambda: not app.handlers, SESSION_END, "the app's connections to end")
        heard = sorted(seed for seed in app.received if seed >= 0)
        stayed = [seed for seed in range(SEED, SEED + SESSIONS)
                  if hostile_stream(seed, client=False)[1].end is not None or lingers(seed)]
        assert heard == stayed, "not every app that stayed read the gateway to the end"
        for seed, received in app.received.items():
            if seed >= 0:
                _, exp = hostile_stream(seed, client=False)
                said = gateway_frames(received)
                code = upstream_close_code(exp)
                assert [e for e in said.events if e[0] != "close"] == [("pong", p) for p in pings_before_end(exp)], (
                    f"seed {seed}: the gateway's pongs to the app are not the answers to its pings")
                assert [e[:2] for e in said.events[-1:]] == [("close", code)], f"seed {seed}: {said.events[-1:]}"
                assert said.read_to == len(received), f"seed {seed}: the gateway wrote after its close frame"
        for line in gw.session_logs()[1:]:
            _, exp = hostile_stream(int(line["path"].rsplit("/", 1)[1]), client=False)
            counted = (line["messages_out"] - exp.messages_count, line["bytes_out"] - exp.payload_bytes)
            assert counted in ((0, 0), exp.pending), f"{line['path']}: counters off by {counted}"


async def answering_upstream(answer: bytes) -> tuple[asyncio.Server, int]:
    """A raw upstream on 127.0.0.1 that answers every upgrade with ``answer`` and stays open until the peer leaves."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await reader.read()
        writer.close()

    port = free_port()
    return await asyncio.start_server(handle, HOST, port), port


@pytest.mark.parametrize("status", [
    pytest.param(b"\xb201", id="superscript-digit"),
    pytest.param(b"1234567", id="seven-digits"),
])
async def test_upstream_status_not_three_digits_is_an_invalid_handshake(
    make_gateway: Callable[..., GatewayProcess], status: bytes
) -> None:
    """An upstream whose status code is not three digits gets the client a 502 (invalid), with no traceback or leak."""
    server, port = await answering_upstream(b"HTTP/1.1 " + status + b" Switching Protocols\r\n\r\n")
    try:
        gw = make_gateway(f"ws://{HOST}:{port}", {"upstream": {"connect_timeout": "1s"}})
        fds = open_fds(gw.pid)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(gw.url + "/ws/echo")
                assert info.value.status == 502
        await async_wait_until(lambda: open_fds(gw.pid) <= fds, SESSION_END, "the upstream sockets closed")
        assert "Traceback" not in gw.output()
    finally:
        server.close()
