"""The floor of any Python relay: a bare uvloop TCP pipe, for the benchmarks' last row.

Accept a client, connect to the upstream, copy bytes both ways, close each side when the other
ends. No HTTP parsing, no frames, no limits, no pings, no metrics: the WebSocket upgrade passes
through to the upstream as bytes, as through NGINX. What it costs per message, per handshake and
per idle connection is what this runtime (CPython with uvloop) costs before a relay does anything,
so the gateway's figures are read against it (issue 24): "within 1.5x of the pipe" says how much of
the gateway's cost is its own work.

Flow control is the least a fair floor needs: reading one side pauses while the other side's
write buffer is over the transport's high-water mark.

Run: ``python -m bench.pipe LISTEN_PORT UPSTREAM_PORT`` (127.0.0.1 both; stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

import uvloop

HOST = "127.0.0.1"


class Half(asyncio.Protocol):
    """One side of a piped connection: what it reads goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.early = bytearray()
        """Client bytes that came before the upstream connection was up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        self.peer = None

    # The peer's transport calls these on the peer when its buffer crosses the marks.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientHalf(Half):
    """The accepted side: connects the upstream side, then pipes."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(Half, HOST, self.upstream_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None
        if self.early:
            upstream.transport.write(bytes(self.early))
            self.early.clear()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientHalf(upstream_port), HOST, port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.pipe LISTEN_PORT UPSTREAM_PORT", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(args[0]), int(args[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
