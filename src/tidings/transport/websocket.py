"""The WebSocket endpoints: the protocol (``/connection/websocket``) and the echo demo (``/ws``)."""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode

from ..hub import AbortHook, Hub
from ..hub.session import State
from ..protocol import Disconnect, DisconnectCode
from ..protocol.formats import JSON, PROTOBUF, PROTOBUF_SUBPROTOCOL
from ..websocket.handshake import origin_allowed, wants_protobuf

log = logging.getLogger("tidings.transport")


class StarletteTransport:
    """What a session needs of a Starlette WebSocket: send a text frame, close, abort."""

    __slots__ = ("_abort_hook", "_text", "_ws")

    def __init__(self, ws: WebSocket, abort_hook: AbortHook | None, text: bool = True) -> None:
        self._ws = ws
        self._abort_hook = abort_hook
        # JSON goes in text frames, Protobuf in binary ones.
        self._text = text

    async def send(self, frame: bytes) -> None:
        if self._text:
            await self._ws.send({"type": "websocket.send", "text": frame.decode()})
        else:
            await self._ws.send({"type": "websocket.send", "bytes": frame})

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)

    def abort(self) -> None:
        # ASGI cannot drop a connection whose peer stopped reading; the server
        # that runs us may (see tidings.server). Otherwise the connection stays
        # until the peer reads or TCP gives up, its buffers bounded meanwhile.
        if self._abort_hook is not None:
            self._abort_hook(self._ws.scope)


# Header values that are credentials: never written to a log.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


class RedactWebSocketDebugLog(logging.Filter):
    """Keeps tokens out of uvicorn's WebSocket debug log.

    At debug level the websockets library under uvicorn logs every frame it
    sends and receives (a connect command's token included) and every
    handshake header, through the ``uvicorn.error`` logger. This drops data
    frames from that log (control frames stay) and redacts credential headers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.levelno > logging.DEBUG or not isinstance(args, tuple):
            return True
        if any(isinstance(a, Frame) and a.opcode in _DATA_OPCODES for a in args):
            return False
        if len(args) == 2 and isinstance(args[0], str) and args[0].lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True


_REDACT = RedactWebSocketDebugLog()


def hide_secrets_from_logs() -> None:
    """Install the filter on uvicorn's WebSocket logger; safe to call more than once.

    A logger's filters survive ``logging.config.dictConfig`` (uvicorn's log config).
    """
    logging.getLogger("uvicorn.error").addFilter(_REDACT)


def _too_big(frame: str | bytes, limit: int) -> bool:
    if isinstance(frame, bytes):
        return len(frame) > limit
    # A str of n characters encodes to at most 4n bytes: encode only when it may matter.
    return len(frame) * 4 > limit and len(frame.encode()) > limit


async def protocol_endpoint(ws: WebSocket, hub: Hub) -> None:
    """Serve one client of the Centrifugo protocol (JSON format)."""
    settings = hub.settings
    if not origin_allowed(
        ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins
    ):
        log.info("refused WebSocket from origin %r", ws.headers.get("origin"))
        await ws.close(code=1008)  # before accept: the handshake gets HTTP 403
        return
    if not hub.running:
        await ws.close(code=1013)
        return
    # The SDKs ask for Protobuf with a subprotocol; ?format=protobuf also works.
    offered = ws.scope.get("subprotocols") or []
    protobuf = wants_protobuf(offered, ws.scope.get("query_string", b"").decode("latin-1"))
    wire_format = PROTOBUF if protobuf else JSON
    await ws.accept(subprotocol=PROTOBUF_SUBPROTOCOL if PROTOBUF_SUBPROTOCOL in offered else None)
    transport = StarletteTransport(ws, hub.abort_hook, text=not protobuf)
    session = hub.open_session(transport, headers=dict(ws.headers), wire_format=wire_format)
    limit = settings.max_message_size
    try:
        while session.state is not State.CLOSED:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame: str | bytes | None = message.get("bytes" if protobuf else "text")
            if frame is None:
                wrong = "text frame on a Protobuf" if protobuf else "binary frame on a JSON"
                session.disconnect(Disconnect.of(DisconnectCode.BAD_REQUEST, wrong + " connection"))
                break
            if _too_big(frame, limit):
                session.disconnect(Disconnect.of(DisconnectCode.MESSAGE_TOO_BIG))
                break
            await session.handle_frame(frame)
    finally:
        session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))
        await session.closed()


async def echo_endpoint(ws: WebSocket, hub: Hub) -> None:
    """The friendly first demo: every text message comes back as it was sent."""
    settings = hub.settings
    if not origin_allowed(
        ws.headers.get("origin"), ws.headers.get("host"), settings.allowed_origins
    ):
        await ws.close(code=1008)
        return
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        data = message.get("bytes")
        if text is not None:
            if _too_big(text, settings.max_message_size):
                await ws.close(int(DisconnectCode.MESSAGE_TOO_BIG), "message too big")
                return
            await ws.send_text(text)
        elif data is not None:
            if _too_big(data, settings.max_message_size):
                await ws.close(int(DisconnectCode.MESSAGE_TOO_BIG), "message too big")
                return
            await ws.send_bytes(data)
