"""The bare asyncio ceiling: the handshake by hand, pre-framed bytes to every transport.

No framework, no per-connection task, no queue: a publication is framed once
and the same bytes are written to each subscriber's transport, one
``write`` per message per subscriber. It has no backpressure at all (a client
that stops reading grows its transport buffer) and no compression: it is the
per-message ceiling of the event loop, not a server to deploy.

A client's publish command is parsed (one JSON line) and written to every
subscriber's transport the same way, then answered; ``POST /api/publish``
(HTTP/1.1 keep-alive, parsed by hand like the handshake) does the same.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Any, cast

import orjson
import uvloop

from .common import (
    API_KEY,
    PUBLISH_PATH,
    Control,
    client_publish,
    hello_reply,
    publish_reply,
    push_line,
    raise_nofile_limit,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER = 16 * 1024
MAX_FRAME = 1 << 20

channels: dict[str, set[asyncio.Transport]] = {}
offset = 0  # publications from clients and the API
HTTP_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n"


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked server frame, FIN set."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


class BareProtocol(asyncio.Protocol):
    __slots__ = ("buffer", "channel", "open", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        self.channel: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None and self.transport is not None:
            channels.get(self.channel, set()).discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            self._requests()
        if self.open:
            self._frames()

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.abort()

    def _requests(self) -> None:
        """HTTP/1.1 requests until one upgrades to WebSocket (keep-alive, by hand)."""
        assert self.transport is not None
        while not self.open and not self.transport.is_closing():
            buf = self.buffer
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER:
                    self._fail()
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "sec-websocket-key" in headers:
                del buf[: end + 4]
                self._handshake(headers["sec-websocket-key"])
                return
            length = int(headers.get("content-length") or 0)
            if length > MAX_FRAME:
                self._fail()
                return
            if len(buf) < end + 4 + length:
                return
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self._http(lines[0], headers, body)

    def _http(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
        assert self.transport is not None
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0]
        if method != "POST" or path != PUBLISH_PATH:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        if headers.get("x-api-key") != API_KEY:
            self.transport.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
            return
        request = orjson.loads(body)
        publish_from_client(request["channel"], orjson.dumps(request["data"]))
        self.transport.write(HTTP_OK + b'{"result":{}}')

    def _handshake(self, key: str) -> None:
        assert self.transport is not None
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 6:
            b0, b1 = buf[0], buf[1]
            opcode, length, pos = b0 & 0x0F, b1 & 0x7F, 2
            if length == 126:
                if len(buf) < 8:
                    return
                (length,) = struct.unpack_from("!H", buf, 2)
                pos = 4
            elif length == 127:
                if len(buf) < 14:
                    return
                (length,) = struct.unpack_from("!Q", buf, 2)
                pos = 10
            if length > MAX_FRAME or not b1 & 0x80:
                self._fail()
                return
            if len(buf) < pos + 4 + length:
                return
            mask = buf[pos : pos + 4]
            start = pos + 4
            masked = bytes(buf[start : start + length])
            del buf[: start + length]
            # Unmask: XOR with the key repeated, as one big integer (fast for any length).
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(masked, "big") ^ int.from_bytes(key, "big")).to_bytes(
                length, "big"
            )
            self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == 0x8:  # close: echo it and hang up
            transport.write(frame(0x8, payload[:2]))
            transport.close()
        elif opcode == 0x9:
            transport.write(frame(0xA, payload))
        elif opcode == 0x1 and self.channel is None:
            hello = hello_reply(payload)
            if hello is None:
                transport.close()
                return
            self.channel, reply = hello
            transport.write(frame(0x1, reply))
            channels.setdefault(self.channel, set()).add(transport)
        elif opcode == 0x1:
            command = client_publish(payload)
            if command is not None:
                command_id, channel, data = command
                publish_from_client(channel, data)
                transport.write(frame(0x1, publish_reply(command_id)))


def publish(channel: str, data: bytes, seq: int) -> None:
    subscribers = channels.get(channel)
    if not subscribers:
        return
    framed = frame(0x1, push_line(channel, data, seq))
    for transport in subscribers:
        transport.write(framed)


def publish_from_client(channel: str, data: bytes) -> None:
    global offset
    offset += 1
    publish(channel, data, offset)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BareProtocol, host, port, backlog=4096)

    def stats() -> dict[str, Any]:
        return {"connections": sum(len(s) for s in channels.values())}

    control = Control(publish, stats)
    control.emit({"event": "ready", "pid": os.getpid()})
    await control.run()
    server.close()


def run(host: str, port: int) -> None:
    raise_nofile_limit()
    uvloop.run(serve(host, port))
