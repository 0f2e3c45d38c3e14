"""The load generator's WebSocket client: picows, with a cheap reader of publications.

One :class:`Client` per connection. It never parses a publication in full:
it counts ``"pub":`` in each frame's payload (a frame may carry many
newline-separated lines), and when latency is wanted it pulls every send
time out of the frame with one regular expression. Two dialects:

- ``centrifugo``: the Tidings protocol (JSON); the other peers answer the
  same hello and push the same lines.
- ``socketio``: Engine.IO v4 WebSocket framing by hand (``0{...}`` open,
  ``40`` connect, ``421[...]`` event with an ack, ``431[...]`` the ack,
  ``42["pub",...]`` events, ``2``/``3`` ping/pong).

A client may also publish (:meth:`Client.publish`): the Centrifugo
``publish`` command, or the Socket.IO event ``publish`` with an ack (ids from
2 up; the acks are not read). ``on_pub``, when set, is called with the
receipt time of each publication: the round trip of (h) waits on it.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from array import array
from collections.abc import Callable
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport

_SEND_TIME = re.compile(rb'"t":([0-9.]+)')
_PUB = b'"pub":'
_ERROR = b'"error":'
_DEFLATE_TAIL = b"\x00\x00\xff\xff"

CONNECTING, SUBSCRIBED, CLOSED = 0, 1, 2


class Client(WSListener):
    """One subscriber connection."""

    def __init__(
        self,
        dialect: str,
        channel: str,
        hello: bytes,
        *,
        latency: array[float] | None = None,
        slow: bool = False,
    ) -> None:
        self.dialect = dialect
        self.channel = channel
        self.hello = hello
        self.latency = latency
        self.slow = slow
        self.transport: WSTransport | None = None
        self.state = CONNECTING
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.count = 0  # publications received
        self.frames = 0
        self.bytes = 0
        self.last = 0.0
        self.close_code: int | None = None
        self.deflate = False
        self._inflater: Any = None
        # From the subscribe reply (Tidings): stream position and recovery.
        self.epoch = ""
        self.offset = 0
        self.recovered: bool | None = None
        self.recovered_count = 0
        self.error = ""
        # Publishing: the next command id, the channel as JSON, errors in replies.
        self.on_pub: Callable[[float], None] | None = None
        self.fanout = 0  # members of its channel, when it publishes there
        self.published = 0
        self.command_errors = 0
        self._next_id = 3 if dialect == "centrifugo" else 2
        self._channel_json = orjson.dumps(channel)

    # --- picows callbacks ---------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        extensions = transport.response.headers.get("sec-websocket-extensions", "")
        self.deflate = "permessage-deflate" in str(extensions)
        if self.dialect == "centrifugo":
            transport.send(WSMsgType.TEXT, self.hello)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.state = CLOSED
        if self.close_code is None:
            self.close_code = 1006
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"closed ({self.close_code})"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is not WSMsgType.TEXT:
            if msg_type is WSMsgType.CLOSE:
                self.close_code = frame.get_close_code().value if frame.payload_size else 1005
                transport.send_close()
                transport.disconnect()
            return
        data = frame.get_payload_as_bytes()
        if frame.rsv1:
            if self._inflater is None:
                self._inflater = zlib.decompressobj(-15)
            data = self._inflater.decompress(data + _DEFLATE_TAIL)
        self.frames += 1
        self.bytes += len(data)
        if self.dialect == "centrifugo":
            self._centrifugo(transport, data)
        else:
            self._socketio(transport, data)

    # --- dialects -------------------------------------------------------------

    def _received(self, data: bytes, n: int) -> None:
        now = time.monotonic()
        self.count += n
        self.last = now
        if self.latency is not None:
            append = self.latency.append
            for t in _SEND_TIME.findall(data):
                append(now - float(t))
        if self.on_pub is not None:
            self.on_pub(now)

    def _centrifugo(self, transport: WSTransport, data: bytes) -> None:
        if self.state is SUBSCRIBED:
            n = data.count(_PUB)
            if n:
                self._received(data, n)
            if self.published and _ERROR in data:
                self.command_errors += data.count(_ERROR)
        else:
            for line in data.split(b"\n"):
                if line.startswith(b'{"push"'):
                    if _PUB in line:
                        self._received(line, 1)
                elif line.startswith(b'{"id":2'):
                    self._subscribe_reply(line)
        if b"{}" in data and (data.startswith(b"{}") or b"\n{}" in data):
            transport.send(WSMsgType.TEXT, b"{}")  # a ping line: pong

    def _subscribe_reply(self, line: bytes) -> None:
        reply = orjson.loads(line)
        if "error" in reply:
            self.error = str(reply["error"])
            if not self.subscribed.done():
                self.subscribed.set_exception(ConnectionError(self.error))
            return
        result = reply.get("subscribe") or {}
        self.epoch = result.get("epoch", "")
        self.offset = int(result.get("offset", 0))
        if result.get("was_recovering"):
            self.recovered = bool(result.get("recovered"))
            self.recovered_count = len(result.get("publications", ()))
        self._on_subscribed()

    def _on_subscribed(self) -> None:
        self.state = SUBSCRIBED
        if not self.subscribed.done():
            self.subscribed.set_result(None)
        if self.slow:
            self.pause()

    def _socketio(self, transport: WSTransport, data: bytes) -> None:
        if data.startswith(b'42["pub"'):
            self._received(data, 1)
        elif data == b"2":
            transport.send(WSMsgType.TEXT, b"3")
        elif data.startswith(b"0{"):
            transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40"):
            transport.send(WSMsgType.TEXT, self.hello)
        elif data.startswith(b"431["):
            self._on_subscribed()
        elif data.startswith(b"44"):
            self.error = data.decode(errors="replace")
            if not self.subscribed.done():
                self.subscribed.set_exception(ConnectionError(self.error))

    # --- publishing -------------------------------------------------------------

    def publish(self, data: bytes) -> bool:
        """Publish ``data`` (a JSON object) to its channel; False if it is closed."""
        transport = self.transport
        if transport is None or self.state is not SUBSCRIBED:
            return False
        n = self._next_id
        self._next_id = n + 1
        if self.dialect == "centrifugo":
            message = b'{"id":%d,"publish":{"channel":%b,"data":%b}}' % (
                n,
                self._channel_json,
                data,
            )
        else:
            message = b'42%d["publish",{"channel":%b,"data":%b}]' % (n, self._channel_json, data)
        transport.send(WSMsgType.TEXT, message)
        self.published += 1
        return True

    # --- control ----------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading: the kernel's buffers fill, then the server's."""
        if self.transport is not None:
            self.transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.transport.underlying_transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and self.state is not CLOSED:
            self.transport.disconnect(graceful=False)


def centrifugo_hello(token: str, channel: str, recover: tuple[int, str] | None = None) -> bytes:
    subscribe: dict[str, Any] = {"channel": channel}
    if recover is not None:
        subscribe.update(recover=True, offset=recover[0], epoch=recover[1])
    return b"\n".join(
        [
            orjson.dumps({"id": 1, "connect": {"token": token}}),
            orjson.dumps({"id": 2, "subscribe": subscribe}),
        ]
    )


def socketio_hello(channel: str) -> bytes:
    return b"421" + orjson.dumps(["subscribe", channel])
