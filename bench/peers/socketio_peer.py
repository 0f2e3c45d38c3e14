"""python-socketio on uvicorn: ``emit`` to a room.

Clients connect at ``/socket.io/?EIO=4&transport=websocket``, send the event
``subscribe`` with the channel (with an ack) and receive ``pub`` events whose
argument is the same publication object the other peers send.
"""

from __future__ import annotations

from typing import Any

import orjson
import socketio
import uvicorn
import uvloop

from .common import Control, raise_nofile_limit, serve_under_control

sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)
app = socketio.ASGIApp(sio)
connections: set[str] = set()


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
