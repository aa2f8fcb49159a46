"""A fast WebSocket echo server for the benchmark: raw uvloop protocol, frames echoed unmasked.

Not part of the gateway. It exists so the relay under test, not the upstream,
is what limits the measurement. Usage: ``python -m bench.echo_server PORT``.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp._websocket.helpers import websocket_mask

from gateway.core.codec import build_header
from gateway.core.handshake import accept_key


class EchoProtocol(asyncio.Protocol):
    """Upgrade, then echo every data frame (unmasked) and answer pings and closes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:"))
            assert self.transport is not None
            self.transport.write(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
            self.upgraded = True
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            masked = b1 & 0x80
            total = header + (4 if masked else 0) + length
            if len(buf) - pos < total:
                break
            payload = bytearray(buf[pos + total - length:pos + total])
            if masked:
                websocket_mask(bytes(buf[pos + header:pos + header + 4]), payload)
            opcode = b0 & 0x0F
            if opcode == 0x9:
                out.append(build_header(True, 0xA, length, None) + payload)
            elif opcode == 0x8:
                out.append(build_header(True, 0x8, length, None) + payload)
            elif opcode != 0xA:
                out.append(build_header(bool(b0 & 0x80), opcode, length, None) + payload)
            pos += total
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(EchoProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
