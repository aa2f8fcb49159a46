"""FastAPI echo used as the realistic upstream of the benchmark (uvicorn, websockets-sansio)."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.websocket("/{path:path}")
async def echo(websocket: WebSocket, path: str) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            else:
                await websocket.send_text(message.get("text") or "")
    except WebSocketDisconnect:
        return
