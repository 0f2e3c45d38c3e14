"""The textbook FastAPI design: a ConnectionManager with a list of sockets.

From the FastAPI documentation's WebSocket chapter, with rooms (a list per
channel) so it can serve more than one channel: ``broadcast`` awaits
``send_text`` for each subscriber in turn. A client's publish command is
broadcast the same way from its endpoint's receive loop (the chapter's chat
example), and ``POST /api/publish`` is an ordinary FastAPI route with a
pydantic body that broadcasts too. Run by uvicorn with its defaults (uvloop,
httptools, the websockets-sansio protocol) at log level warning.
"""

from __future__ import annotations

from typing import Any

import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Header, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from .common import (
    API_KEY,
    PUBLISH_PATH,
    Control,
    client_publish,
    hello_reply,
    publish_reply,
    push_line,
    raise_nofile_limit,
    serve_under_control,
)


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: dict[str, list[WebSocket]] = {}
        self.offset = 0  # publications from clients and the API

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

    async def publish(self, channel: str, data: bytes) -> None:
        self.offset += 1
        await self.broadcast(channel, push_line(channel, data, self.offset).decode())


manager = ConnectionManager()
app = FastAPI()


@app.websocket("/connection/websocket")
async def websocket_endpoint(websocket: WebSocket) -> None:
    channel = await manager.connect(websocket)
    if channel is None:
        return
    try:
        while True:
            text = await websocket.receive_text()  # pongs ("{}") and publish commands
            command = client_publish(text)
            if command is not None:
                command_id, to, data = command
                await manager.publish(to, data)
                await websocket.send_text(publish_reply(command_id).decode())
    except WebSocketDisconnect:
        manager.disconnect(channel, websocket)
    except Exception:
        manager.disconnect(channel, websocket)


class PublishRequest(BaseModel):
    channel: str
    data: dict[str, Any]


@app.post(PUBLISH_PATH)
async def api_publish(
    body: PublishRequest, x_api_key: str | None = Header(default=None)
) -> dict[str, Any]:
    if x_api_key != API_KEY:
        raise HTTPException(status_code=401)
    await manager.publish(body.channel, orjson.dumps(body.data))
    return {"result": {}}


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
