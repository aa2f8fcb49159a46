"""The naive aiohttp relay a typical user writes (~40 lines): the benchmark's baseline.

``python -m bench.naive_relay LISTEN_PORT UPSTREAM_URL``. Message API on both legs,
one task per direction, heartbeat on both legs so it keeps the same liveness duty.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web


async def relay(request: web.Request) -> web.WebSocketResponse:
    client = web.WebSocketResponse(heartbeat=20, compress=False)
    await client.prepare(request)
    session: aiohttp.ClientSession = request.app["session"]
    async with session.ws_connect(request.app["upstream"] + request.path_qs, heartbeat=20) as upstream:

        async def pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                       dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
            await dst.close()

        await asyncio.gather(pump(client, upstream), pump(upstream, client))
    return client


async def main(port: int, upstream: str) -> None:
    app = web.Application()
    app["upstream"] = upstream
    app["session"] = aiohttp.ClientSession()
    app.router.add_get("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
