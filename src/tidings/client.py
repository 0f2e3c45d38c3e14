"""A minimal client of the Centrifugo protocol v2 (JSON) over WebSocket.

It connects with a token, subscribes, answers the server's pings and yields
publications: what ``tidings listen`` needs, and handy in scripts and tests.
It does not reconnect, recover or refresh tokens; for that, use a real SDK
(centrifuge-js, centrifuge-python...).

    async with open_client("ws://127.0.0.1:8000/connection/websocket", token) as client:
        await client.subscribe("news")
        async for pub in client.publications():
            print(pub.data)
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Message = dict[str, Any]


class ClientError(Exception):
    """The server answered a command with an error, or closed the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ReceivedPublication:
    channel: str
    data: Any
    offset: int = 0


class ProtocolClient:
    """One connection. Commands run one at a time; pushes are kept until read."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._last_id = 0
        self._incoming: deque[Message] = deque()
        self._pushes: deque[Message] = deque()

    async def _send(self, message: Message) -> None:
        await self._ws.send(orjson.dumps(message).decode())

    async def _read_frame(self) -> None:
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as e:
            code, reason = (e.rcvd.code, e.rcvd.reason) if e.rcvd else (1006, "connection lost")
            raise ClientError(code, reason or "connection closed") from None
        text = frame.decode() if isinstance(frame, bytes) else frame
        # A frame may carry several newline-separated messages.
        for line in text.split("\n"):
            if line.strip():
                message = orjson.loads(line)
                if not isinstance(message, dict):
                    raise ClientError(0, f"unexpected message from server: {line[:100]}")
                self._incoming.append(message)

    async def _next_message(self) -> Message:
        """The next reply or push; the server's pings (``{}``) are answered on the way."""
        while True:
            while not self._incoming:
                await self._read_frame()
            message = self._incoming.popleft()
            if not message:
                await self._send({})  # pong
                continue
            disconnect = message.get("push", {}).get("disconnect")
            if disconnect is not None:
                raise ClientError(int(disconnect.get("code", 0)), disconnect.get("reason", ""))
            return message

    async def call(self, method: str, params: Message) -> Message:
        """Send one command and wait for its reply; raises ClientError on an error reply."""
        self._last_id += 1
        command_id = self._last_id
        await self._send({"id": command_id, method: params})
        while True:
            message = await self._next_message()
            if message.get("id") != command_id:
                self._pushes.append(message)
                continue
            error = message.get("error")
            if error is not None:
                raise ClientError(int(error.get("code", 0)), str(error.get("message", "")))
            result: Message = message.get(method) or {}
            return result

    async def connect(self, token: str, *, name: str = "tidings") -> Message:
        return await self.call("connect", {"token": token, "name": name})

    async def subscribe(self, channel: str) -> Message:
        return await self.call("subscribe", {"channel": channel})

    async def publications(self) -> AsyncIterator[ReceivedPublication]:
        """Publications of every subscribed channel, in the order they arrive."""
        while True:
            message = self._pushes.popleft() if self._pushes else await self._next_message()
            push = message.get("push") or {}
            pub = push.get("pub")
            if pub is not None:
                yield ReceivedPublication(
                    str(push.get("channel", "")), pub.get("data"), int(pub.get("offset", 0))
                )


@asynccontextmanager
async def open_client(
    url: str, token: str, *, name: str = "tidings", open_timeout: float = 10
) -> AsyncIterator[ProtocolClient]:
    """Open a WebSocket to ``url`` and connect with ``token``."""
    async with connect(url, open_timeout=open_timeout, max_size=None) as ws:
        client = ProtocolClient(ws)
        await client.connect(token, name=name)
        yield client
