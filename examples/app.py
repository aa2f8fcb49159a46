"""Example FastAPI app: the upstream of `make demo` and of the integration tests.

Run it with ``uvicorn examples.app:app --port 8000``. Each WebSocket route
shows one behaviour a gateway has to carry faithfully.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse

from examples.demo_api import router as demo_router

app = FastAPI(title="ws-gateway example upstream")
app.include_router(demo_router)
SUBPROTOCOLS = ("chat.v2", "chat.v1")
_PAGE = Path(__file__).with_name("demo.html")


async def accept(websocket: WebSocket) -> None:
    """Accept, choosing a known subprotocol when the client offers one.

    Browsers fail a handshake whose answer names no subprotocol when they offered some
    (WHATWG WebSockets), so every route a page may open answers the offer.
    """
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=next((p for p in SUBPROTOCOLS if p in offered), None))


@app.get("/")
async def demo_page() -> HTMLResponse:
    """The demo page; it connects through the gateway (see `make demo`)."""
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"))


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    """Echo every text and binary message; picks a known subprotocol if the client offers one."""
    await accept(websocket)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        return


@app.websocket("/ws/request")
async def request_info(websocket: WebSocket) -> None:
    """Send back what the app saw of the handshake: path, query, headers, subprotocols."""
    await websocket.accept()
    await websocket.send_json(
        {
            "path": websocket.url.path,
            "query": websocket.url.query,
            "headers": [[k, v] for k, v in websocket.headers.items()],
            "subprotocols": websocket.scope.get("subprotocols", []),
        }
    )
    try:
        await websocket.receive_text()
    except WebSocketDisconnect:
        return


@app.websocket("/ws/close/{code}")
async def close_with(websocket: WebSocket, code: int, reason: str = "") -> None:
    """Accept (answering a subprotocol offer), then close with the code (and ?reason=) in the path."""
    await accept(websocket)
    await websocket.close(code=code, reason=reason)


def _deny() -> None:
    raise HTTPException(status_code=403, detail="forbidden")


@app.websocket("/ws/forbidden")
async def forbidden(websocket: WebSocket, _: None = Depends(_deny)) -> None:
    """A dependency that refuses before accept(): uvicorn answers HTTP 403."""
    await websocket.accept()


def _broken() -> None:
    raise RuntimeError("dependency failed")


@app.websocket("/ws/broken")
async def broken(websocket: WebSocket, _: None = Depends(_broken)) -> None:
    """A dependency that fails before accept(): uvicorn answers HTTP 500."""
    await websocket.accept()


@app.websocket("/ws/crash")
async def crash(websocket: WebSocket) -> None:
    """Accept, wait for one message, then fail: uvicorn drops TCP with no close frame (1006)."""
    await accept(websocket)
    await websocket.receive_text()
    raise RuntimeError("handler crashed on purpose")


@app.websocket("/ws/flood")
async def flood(websocket: WebSocket, count: int = 1000, size: int = 1024) -> None:
    """Send ``count`` binary messages of ``size`` bytes as fast as the connection takes them."""
    await accept(websocket)
    payload = b"x" * size
    try:
        for _ in range(count):
            await websocket.send_bytes(payload)
        await websocket.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        return


@app.websocket("/ws/big")
async def big(websocket: WebSocket, size: int = 1024) -> None:
    """Send one binary message of ``size`` bytes, then echo the sizes of what arrives."""
    await accept(websocket)
    try:
        await websocket.send_bytes(b"b" * size)
        while True:
            data = await websocket.receive_bytes()
            await websocket.send_text(str(len(data)))
    except WebSocketDisconnect:
        return


@app.websocket("/ws/stall")
async def stall(websocket: WebSocket, seconds: float = 5.0) -> None:
    """Accept, then block the event loop (a classic bug): pings go unanswered meanwhile."""
    await accept(websocket)
    await websocket.receive_text()
    import time

    time.sleep(seconds)  # deliberately blocking: this route demonstrates a frozen loop
    await asyncio.sleep(0)
