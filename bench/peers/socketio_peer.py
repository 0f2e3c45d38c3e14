"""python-socketio on uvicorn: ``emit`` to a room.

Clients connect at ``/socket.io/?EIO=4&transport=websocket``, send the event
``subscribe`` with the channel (with an ack) and receive ``pub`` events whose
argument is the same publication object the other peers send. A client
publishes with the event ``publish`` (``{"channel": C, "data": D}``, with an
ack): its handler emits to the room, the sender included. ``POST
/api/publish`` is a FastAPI route mounted beside it (``other_asgi_app``, as
python-socketio's documentation shows), emitting the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
import socketio
import uvicorn
import uvloop
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from .common import API_KEY, PUBLISH_PATH, Control, raise_nofile_limit, serve_under_control

sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
api = FastAPI()
app = socketio.ASGIApp(sio, other_asgi_app=api)
connections: set[str] = set()
offset = 0  # publications from clients and the API


@sio.event  # type: ignore[untyped-decorator]
async def connect(sid: str, environ: dict[str, Any]) -> None:
    connections.add(sid)


@sio.event  # type: ignore[untyped-decorator]
async def disconnect(sid: str, *args: Any) -> None:
    connections.discard(sid)


@sio.on("subscribe")  # type: ignore[untyped-decorator]
async def subscribe(sid: str, channel: str) -> str:
    await sio.enter_room(sid, channel)
    return "ok"


async def emit_publication(channel: str, data: Any) -> None:
    global offset
    offset += 1
    push = {"push": {"channel": channel, "pub": {"data": data, "offset": offset}}}
    await sio.emit("pub", push, room=channel)


@sio.on("publish")  # type: ignore[untyped-decorator]
async def publish(sid: str, message: dict[str, Any]) -> str:
    await emit_publication(message["channel"], message["data"])
    return "ok"


class PublishRequest(BaseModel):
    channel: str
    data: dict[str, Any]


@api.post(PUBLISH_PATH)
async def api_publish(
    body: PublishRequest, x_api_key: str | None = Header(default=None)
) -> dict[str, Any]:
    if x_api_key != API_KEY:
        raise HTTPException(status_code=401)
    await emit_publication(body.channel, body.data)
    return {"result": {}}


async def serve(host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)

    def publish(channel: str, data: bytes, seq: int) -> Any:
        push = {"push": {"channel": channel, "pub": {"data": orjson.loads(data), "offset": seq}}}
        return sio.emit("pub", push, room=channel)

    control = Control(publish, lambda: {"connections": len(connections)})
    await serve_under_control(server, control)


def run(host: str, port: int) -> None:
    raise_nofile_limit()
    uvloop.run(serve(host, port))
