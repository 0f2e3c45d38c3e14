"""The textbook FastAPI design: a ConnectionManager with a list of sockets.

From the FastAPI documentation's WebSocket chapter, with rooms (a list per
channel) so it can serve more than one channel: ``broadcast`` awaits
``send_text`` for each subscriber in turn. Run by uvicorn with its defaults
(uvloop, httptools, the websockets-sansio protocol) at log level warning.
"""

from __future__ import annotations

from typing import Any

import uvicorn
import uvloop
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from .common import Control, hello_reply, push_line, raise_nofile_limit, serve_under_control


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: dict[str, list[WebSocket]] = {}

    async def connect(self, websocket: WebSocket) -> str | None:
        await websocket.accept()
        hello = hello_reply(await websocket.receive_text())
        if hello is None:
            await websocket.close(1002)
            return None
        channel, reply = hello
        await websocket.send_text(reply.decode())
        self.active_connections.setdefault(channel, []).append(websocket)
        return channel

    def disconnect(self, channel: str, websocket: WebSocket) -> None:
        connections = self.active_connections.get(channel, [])
        if websocket in connections:
            connections.remove(websocket)

    async def broadcast(self, channel: str, message: str) -> None:
        for connection in list(self.active_connections.get(channel, ())):
            try:
                await connection.send_text(message)
            except Exception:  # gone: the endpoint's receive loop removes it
                pass


manager = ConnectionManager()
app = FastAPI()


@app.websocket("/connection/websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    channel = await manager.connect(websocket)
    if channel is None:
        return
    try:
        while True:
            await websocket.receive_text()  # pongs ("{}") and nothing else
    except WebSocketDisconnect:
        manager.disconnect(channel, websocket)
    except Exception:
        manager.disconnect(channel, websocket)


async def serve(host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    def publish(channel: str, data: bytes, seq: int) -> Any:
        return manager.broadcast(channel, push_line(channel, data, seq).decode())

    def stats() -> dict[str, Any]:
        return {"connections": sum(len(c) for c in manager.active_connections.values())}

    control = Control(publish, stats)
    await serve_under_control(server, control)


def run(host: str, port: int) -> None:
    raise_nofile_limit()
    uvloop.run(serve(host, port))
