"""A test upstream that records every client message it receives, durably across its own kills.

``/ws/record?client=N`` appends each received text message as a line ``<connection> <text>`` to
``$RECORD_DIR/N.txt`` with one ``write()`` per message, so what the app received survives SIGKILL
(the kernel has it). ``<connection>`` is ``<pid>.<n>``: a frozen app that is thawed may still hand
its old connection's handler queued messages while a new connection runs, and the tests tell the
two apart. Each connection first appends ``session <id> <connection>`` (the gateway's
``X-Gateway-Session-Id``), and one whose handshake carries ``X-Gateway-Possible-Duplicates`` a line
``dup <count>``. With
``work_ms=W`` the handler then awaits W ms after each message, as a handler that does some work per
message would: meanwhile uvicorn parses (and answers pings after) the next messages and queues them
for the handler, so a kill loses messages the app server has read but the handler never received.
The delivery tests compare these files with what the clients sent and with the gateway's loss
counters.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
RECORD_DIR = Path(os.environ.get("RECORD_DIR", "."))
_connections = itertools.count(1)


@app.websocket("/ws/record")
async def record(websocket: WebSocket, client: int, work_ms: int = 0) -> None:
    fd = os.open(RECORD_DIR / f"{client}.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    connection = f"{os.getpid()}.{next(_connections)}"
    try:
        os.write(fd, f"session {websocket.headers.get('x-gateway-session-id', '-')} {connection}\n".encode())
        duplicates = websocket.headers.get("x-gateway-possible-duplicates")
        if duplicates is not None:
            os.write(fd, f"dup {int(duplicates)}\n".encode())
        await websocket.accept()
        while True:
            os.write(fd, f"{connection} {await websocket.receive_text()}\n".encode())
            if work_ms:
                await asyncio.sleep(work_ms / 1000)
    except WebSocketDisconnect:
        pass
    finally:
        os.close(fd)


@app.websocket("/ws/stream")
async def stream(websocket: WebSocket, client: int, ticks: int = 0, interval_ms: int = 20, pad: int = 0) -> None:
    """Resume tests: record ``open``, each received text and ``closed <code>`` in ``$RECORD_DIR/N.txt``;
    echo each text as ``echo:<text>``, and meanwhile send ``tick:1`` ... ``tick:<ticks>`` every
    ``interval_ms`` (each followed by ``pad`` bytes of padding when asked). One ``open`` line per
    connection: a resumed session shows exactly one."""

    fd = os.open(RECORD_DIR / f"{client}.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, b"open\n")
    await websocket.accept()

    async def tick() -> None:
        for n in range(1, ticks + 1):
            await asyncio.sleep(interval_ms / 1000)
            await websocket.send_text(f"tick:{n}" + ("|" + "x" * pad if pad else ""))

    ticker = asyncio.ensure_future(tick())
    try:
        while True:
            text = await websocket.receive_text()
            os.write(fd, text.encode() + b"\n")
            await websocket.send_text(f"echo:{text}")
    except WebSocketDisconnect as disconnect:
        os.write(fd, f"closed {disconnect.code}\n".encode())
    finally:
        ticker.cancel()
        os.close(fd)
