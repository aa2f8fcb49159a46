"""What compressed client messages that inflate a lot cost the gateway's memory (issue 14's bomb bound).

    python -m bench.deflate_bomb                      # 20 clients, 16 MiB - 1 KiB each (within the limit)
    python -m bench.deflate_bomb --clients 50 --inflated 1MiB

Starts uvicorn (examples.app, /ws/big: it reads each binary message and answers its size) and the
gateway with compression on (its defaults otherwise: upstream.max_message_size 16 MiB), then has
``--clients`` raw clients, at once, each send one compressed binary message of zeros that inflates
to ``--inflated`` bytes (about a thousandth of that on the wire) and wait for the app's answer.
Prints the gateway's peak RSS (VmHWM) before and after, and the wire bytes sent: the growth divided
by the clients is what one such message can make the gateway hold. Loopback only; every process
is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from bench.run import HOST, ROOT, free_port, wait_port
from gateway.core.parsers import positive_size


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def compressed_frame(inflated: int) -> bytes:
    """One masked binary frame, RSV1 set: ``inflated`` zero bytes deflated (sync flush, tail dropped)."""
    encoder = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    chunk = bytes(1 << 20)
    body = b"".join(encoder.compress(chunk[: min(len(chunk), inflated - done)])
                    for done in range(0, inflated, len(chunk)))
    body = (body + encoder.flush(zlib.Z_SYNC_FLUSH))[:-4]
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    length = len(body)
    header = bytes((0xC2, 0x80 | 126)) + struct.pack("!H", length) if length < 65536 else \
        bytes((0xC2, 0x80 | 127)) + struct.pack("!Q", length)
    return header + key + masked


async def one_client(port: int, frame: bytes) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write((f"GET /ws/big?size=1 HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.write(frame)
    answers = []
    inflate = zlib.decompressobj(-15)  # one context for the connection: the gateway keeps its own
    while len(answers) < 2:  # the app's 1-byte greeting, then the size it received
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length)
        if b0 & 0x0F in (1, 2):
            answers.append(inflate.decompress(payload + b"\x00\x00\xff\xff") if b0 & 0x40
                           else payload)
        elif b0 & 0x0F == 8:
            return f"closed {struct.unpack('!H', payload[:2])[0]}"
    writer.close()
    return answers[1].decode()


async def run(port: int, clients: int, frame: bytes) -> list[str]:
    return await asyncio.gather(*(one_client(port, frame) for _ in range(clients)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--inflated", type=positive_size, default=16 * 1024 * 1024 - 1024)
    args = parser.parse_args(argv)
    frame = compressed_frame(args.inflated)
    app_port, port = free_port(), free_port()
    processes = []
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port", str(app_port),
             "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(app_port, processes[-1])
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gateway", "--listen", f"{HOST}:{port}", "--admin-listen", f"{HOST}:{free_port()}",
             "--upstream", f"ws://{HOST}:{app_port}"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "GATEWAY_LOG_LEVEL": "warning",
                                             "GATEWAY_CLIENT_COMPRESSION_ENABLED": "true"}))
        gateway = processes[-1]
        wait_port(port, gateway)
        before = vm_hwm_kib(gateway.pid)
        started = time.monotonic()
        answers = asyncio.run(asyncio.wait_for(run(port, args.clients, frame), 300))
        elapsed = time.monotonic() - started
        after = vm_hwm_kib(gateway.pid)
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    print(f"{args.clients} clients at once, each one compressed message: {len(frame):,} B on the wire, "
          f"{args.inflated:,} B inflated ({args.inflated / len(frame):,.0f}x)")
    print(f"app answers: {sorted(set(answers))} in {elapsed:.1f} s")
    print(f"gateway peak RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after: "
          f"+{(after - before) / 1024:.1f} MiB, {(after - before) / 1024 / args.clients:.2f} MiB per client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
