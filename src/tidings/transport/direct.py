"""The direct WebSocket path for ``/connection/websocket`` under ``tidings serve``.

The ASGI path costs an idle connection tens of KiB (a suspended coroutine
stack through every middleware, an ``asyncio.Queue``, header copies) and every
message a trip through Starlette and uvicorn's frame builder. This protocol
takes over the socket right after uvicorn parses the upgrade request and
speaks RFC 6455 itself:

* an idle connection holds this object, its session and a few timer handles:
  no task and no coroutine stack (a reader task exists only while commands
  are being handled, a writer task only while the socket is backed up);
* a publication's frame is built once and the same bytes are written to every
  subscriber; with permessage-deflate it is compressed once too, which the
  ``server_no_context_takeover`` parameter makes valid for every subscriber;
* small messages are not compressed at all: below ``compression_min_size``
  deflate saves nothing worth its CPU (RFC 7692 lets each message choose).

Any other WebSocket path is handed to uvicorn's own implementation, so the
echo demo and applications' routes keep working through ASGI.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

try:  # websockets' C helper; its pure-Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from ..hub import Hub
from ..hub.session import Session, State
from ..protocol import Disconnect, DisconnectCode
from ..protocol.formats import JSON, PROTOBUF, PROTOBUF_SUBPROTOCOL
from .websocket import origin_allowed

log = logging.getLogger("tidings.transport")

PATH = "/connection/websocket"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

# Peers may take this long to answer our close before the socket is dropped.
CLOSE_TIMEOUT = 5.0
# Messages from one client waiting to be handled before reading pauses.
INBOX_HIGH_WATER = 64
# The empty deflate block that ends every compressed message (RFC 7692 7.2.1).
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def frame_header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    """The header of an unmasked server frame with FIN set."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def deflate_message(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_DEFLATE_TAIL) else data


class _FrameCache:
    """The frames of the last payload written, shared by every subscriber.

    The fan-out writes one payload object to all its subscribers in a row;
    keyed on that object's identity, its header (and compressed form) are
    built once, not once per subscriber.
    """

    __slots__ = ("compressed", "opcode", "payload", "plain")

    def __init__(self, opcode: int) -> None:
        self.opcode = opcode
        self.payload: bytes | None = None
        self.plain: bytes = b""
        self.compressed: bytes | None = None

    def load(self, payload: bytes) -> None:
        self.payload = payload
        self.plain = frame_header(self.opcode, len(payload)) + payload
        self.compressed = None

    def compressed_frame(self) -> bytes:
        """The loaded payload as one compressed frame, compressed on first use."""
        if self.compressed is None:
            assert self.payload is not None
            body = deflate_message(self.payload)
            self.compressed = frame_header(self.opcode, len(body), rsv1=True) + body
        return self.compressed


# One cache per opcode: JSON (text) and Protobuf (binary) frames differ.
_CACHES = {OP_TEXT: _FrameCache(OP_TEXT), OP_BINARY: _FrameCache(OP_BINARY)}

# A connection's frames are written at once while the server is quiet, as a
# bare server would, and gathered into one system call per connection once
# publications come fast: after two bursts of writes in a row (or a flush),
# the next ones wait at least FLUSH_INTERVAL, and as long as that burst took,
# so that flushing takes about half the time and each system call carries
# every message of the wait. The wait grows with the audience on purpose: writing
# to 5,000 clients takes ~50 ms, and with a short wait only one publication
# fits in it, so every write would carry one message again. A message thus
# waits at most about as long as the last flush took; MAX_FLUSH_DELAY bounds
# that when one flush was slow for another reason (a GC pause, say).
FLUSH_INTERVAL = 0.001
MAX_FLUSH_DELAY = 0.1
# A connection with this much gathered is written at once, pause or not: one
# system call is already well spent on it, and waiting would only hold memory
# (a long pause and large messages to many clients).
WRITE_AT_ONCE_FROM = 64 * 1024


class Flusher:
    """Decides, for all connections of a server, whether a frame goes out now or waits.

    One system call per message per subscriber is the ceiling of a server
    that writes as it goes; joining what a connection got while the previous
    flush ran (and a little after) passes it, at the cost of a few
    milliseconds of latency under load and none when idle.
    """

    __slots__ = ("_cost", "_dirty", "_ended", "_handle", "_loaded", "_started", "bursting")

    def __init__(self) -> None:
        self._dirty: list[DirectWebSocket] = []
        # Pending: the end of a burst (while bursting) or a flush.
        self._handle: asyncio.Handle | None = None
        # Read by every write: frames go straight out until the loop turns.
        self.bursting = False
        self._started = 0.0
        self._ended = 0.0
        self._cost = 0.0
        # Whether the last burst or flush came within the pause after the one
        # before it: the sign of sustained load, not of a single late write.
        self._loaded = False

    def write_at_once(self) -> bool:
        """Whether a frame may skip the gathering: the server is in a burst, or quiet."""
        if self._handle is not None:
            return self.bursting
        # perf_counter: uvloop's loop.time() stands still within one callback.
        now = time.perf_counter()
        soon = now - self._ended < self._pause()
        if soon and self._loaded:
            return False
        # Quiet, or one write right after a lone burst (a publisher at a steady
        # rate catching up after a hiccup, which a pause would only delay):
        # everything written until the loop turns goes straight out.
        self._loaded = soon
        self.bursting = True
        self._started = now
        self._handle = asyncio.get_running_loop().call_soon(self._end_burst)
        return True

    def _pause(self) -> float:
        """How long after the last burst or flush the next frames are gathered."""
        return max(FLUSH_INTERVAL, min(self._cost, MAX_FLUSH_DELAY))

    def _end_burst(self) -> None:
        self._handle = None
        self.bursting = False
        self._ended = time.perf_counter()
        self._cost = self._ended - self._started

    def add(self, connection: DirectWebSocket) -> None:
        """Flush ``connection`` with the others, once the pause since the last write is over."""
        self._dirty.append(connection)
        if self._handle is None:
            wait = self._pause() - (time.perf_counter() - self._ended)
            loop = asyncio.get_running_loop()
            self._handle = (
                loop.call_soon(self.flush) if wait <= 0 else loop.call_later(wait, self.flush)
            )

    def flush(self) -> None:
        self._handle = None
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()
        self._ended = time.perf_counter()
        self._cost = self._ended - started
        self._loaded = True


class HandshakeError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_request(data: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and headers (lower-cased names; repeated ones joined) of a request."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, target, headers


def negotiate_deflate(offer: str) -> tuple[str, bool, int] | None:
    """Accept the first permessage-deflate offer: (response, client resets, client wbits)."""
    for extension in offer.split(","):
        params = [p.strip() for p in extension.split(";")]
        if params[0].lower() != "permessage-deflate":
            continue
        names = {p.split("=", 1)[0].strip().lower(): p for p in params[1:]}
        response = ["permessage-deflate", "server_no_context_takeover"]
        client_resets = "client_no_context_takeover" in names
        if client_resets:
            response.append("client_no_context_takeover")
        if "server_max_window_bits" in names:
            # We compress with a full window only when the client allows it.
            value = names["server_max_window_bits"].partition("=")[2].strip().strip('"')
            if value and value != "15":
                continue
        wbits = 15
        if "client_max_window_bits" in names:
            value = names["client_max_window_bits"].partition("=")[2].strip().strip('"')
            if value:
                wbits = int(value) if value.isdigit() and 8 <= int(value) <= 15 else 15
                response.append(f"client_max_window_bits={wbits}")
        return "; ".join(response), client_resets, wbits
    return None


class DirectWebSocket(asyncio.Protocol):
    """One client of ``/connection/websocket``, spoken to without ASGI."""

    # The fields that write_now reads come first, in one or two cache lines:
    # the fan-out touches thousands of connections in a row.
    __slots__ = (  # noqa: RUF023
        "_writable",
        "_close_sent",
        "_cache",
        "_deflate",
        "_min_compress",
        "_out",
        "_out_bytes",
        "_flusher",
        "transport",
        "_binary",
        "_buffer",
        "_close_timer",
        "_connections",
        "_delegate",
        "_drain",
        "_failed",
        "_fallback",
        "_fragment_compressed",
        "_fragment_opcode",
        "_fragments",
        "_inbox",
        "_inflate_resets",
        "_inflate_wbits",
        "_inflater",
        "_kwargs",
        "_limit",
        "_opcode",
        "_reader",
        "hub",
        "scope",
        "session",
    )

    def __init__(
        self,
        hub: Hub,
        fallback: Callable[..., asyncio.Protocol],
        flusher: Flusher,
        config: Any,
        server_state: Any,
        app_state: Any = None,
    ) -> None:
        self.hub = hub
        self._flusher = flusher
        # uvicorn's own protocol, when the request is for another path.
        self._delegate: asyncio.Protocol | None = None
        # Frames written since the last flush, in order.
        self._out: list[bytes] | None = None
        self._out_bytes = 0
        self._fallback = fallback
        self._kwargs = {"config": config, "server_state": server_state, "app_state": app_state}
        self._connections: set[Any] = server_state.connections
        self.transport: asyncio.Transport | None = None
        self.scope: dict[str, Any] = {}  # for the server's abort hook, like uvicorn's
        self.session: Session | None = None
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_compressed = False
        self._inbox: deque[str | bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writable = True
        self._drain: asyncio.Event | None = None
        self._binary = False
        self._opcode = OP_TEXT
        self._cache = _CACHES[OP_TEXT]
        self._deflate = False
        self._inflater: Any = None
        self._inflate_resets = True
        self._inflate_wbits = 15
        self._close_sent = False
        self._failed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._limit = hub.settings.max_message_size
        self._min_compress = hub.settings.compression_min_size

    # --- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._delegate is not None:
            self._delegate.data_received(data)
            return
        if self.session is None:
            self._handshake(data)
            return
        self._buffer += data
        try:
            self._parse_frames()
        except Disconnect as d:
            self._fail(d)
        except Exception:
            log.exception("cannot read a frame")
            self._fail(Disconnect(1011, "internal error"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._delegate is not None:
            self._delegate.connection_lost(exc)
            return
        self._connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._writable = True
        self._wake_writer()
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))

    def pause_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.pause_writing()
        self._writable = False

    def resume_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.resume_writing()
        self._writable = True
        self._wake_writer()

    def eof_received(self) -> bool | None:
        if self._delegate is not None:
            return self._delegate.eof_received()
        return None

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: tell the client to reconnect elsewhere."""
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.SHUTDOWN))
        elif self.transport is not None:
            self.transport.close()

    # --- handshake --------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        assert self.transport is not None
        method, target, headers = parse_request(data)
        url = urlsplit(target)
        if url.path != PATH:
            # Not ours: uvicorn's own WebSocket implementation serves it over ASGI.
            # uvicorn makes this object the transport's protocol once we return,
            # so it stays in between and forwards everything.
            self._connections.discard(self)
            other = self._delegate = self._fallback(**self._kwargs)
            other.connection_made(self.transport)
            other.data_received(data)
            return
        try:
            response, offered = self._accept(method, headers)
        except HandshakeError as e:
            body = e.reason.encode()
            self.transport.write(
                f"HTTP/1.1 {e.status} {e.reason}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()
            return
        query = parse_qs(url.query)
        protobuf = PROTOBUF_SUBPROTOCOL in offered or query.get("format") == ["protobuf"]
        self._binary = protobuf
        self._opcode = OP_BINARY if protobuf else OP_TEXT
        self._cache = _CACHES[self._opcode]
        self.transport.write(response)
        peer = self.transport.get_extra_info("peername")
        self.scope = {"type": "websocket", "path": PATH, "client": peer}
        self.session = self.hub.open_session(
            self, headers=headers, wire_format=PROTOBUF if protobuf else JSON
        )

    def _accept(self, method: str, headers: Mapping[str, str]) -> tuple[bytes, list[str]]:
        settings = self.hub.settings
        if method != "GET":
            raise HandshakeError(405, "Method Not Allowed")
        if headers.get("sec-websocket-version") != "13":
            raise HandshakeError(426, "Upgrade Required")
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            raise HandshakeError(400, "Bad Request")
        if not origin_allowed(headers.get("origin"), headers.get("host"), settings.allowed_origins):
            log.info("refused WebSocket from origin %r", headers.get("origin"))
            raise HandshakeError(403, "Forbidden")
        if not self.hub.running:
            raise HandshakeError(503, "Service Unavailable")
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        if PROTOBUF_SUBPROTOCOL in offered:
            lines.append(f"Sec-WebSocket-Protocol: {PROTOBUF_SUBPROTOCOL}")
        if settings.websocket_compression:
            deflate = negotiate_deflate(headers.get("sec-websocket-extensions", ""))
            if deflate is not None:
                extension, self._inflate_resets, self._inflate_wbits = deflate
                self._deflate = True
                lines.append(f"Sec-WebSocket-Extensions: {extension}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), offered

    # --- reading ----------------------------------------------------------

    def _parse_frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            if not second & 0x80:
                raise Disconnect(1002, "unmasked frame")
            length = second & 0x7F
            position = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = int.from_bytes(buffer[2:4], "big")
                position = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = int.from_bytes(buffer[2:10], "big")
                position = 10
            opcode = first & 0x0F
            if first & 0x30 or (first & 0x40 and not (self._deflate and opcode < 8)):
                raise Disconnect(1002, "reserved bits set")
            if length > self._limit and opcode < 8:
                raise Disconnect.of(DisconnectCode.MESSAGE_TOO_BIG)
            end = position + 4 + length
            if len(buffer) < end:
                return
            mask = bytes(buffer[position : position + 4])
            payload = apply_mask(bytes(buffer[position + 4 : end]), mask)
            del buffer[:end]
            self._frame(bool(first & 0x80), bool(first & 0x40), opcode, payload)

    def _frame(self, fin: bool, rsv1: bool, opcode: int, payload: bytes) -> None:
        if self._failed and opcode != OP_CLOSE:
            return  # closing after a protocol error: only the peer's close matters
        if opcode >= 8:
            if not fin or len(payload) > 125:
                raise Disconnect(1002, "bad control frame")
            if opcode == OP_PING:
                self._write(frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_CLOSE:
                self._peer_closed(payload)
            elif opcode != OP_PONG:
                raise Disconnect(1002, "unknown opcode")
            return
        if opcode == OP_CONTINUATION:
            if not self._fragments:
                raise Disconnect(1002, "unexpected continuation")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments:
                raise Disconnect(1002, "expected continuation")
            self._fragment_opcode = opcode
            self._fragment_compressed = rsv1
        else:
            raise Disconnect(1002, "unknown opcode")
        self._fragments.append(payload)
        if sum(len(f) for f in self._fragments) > self._limit:
            raise Disconnect.of(DisconnectCode.MESSAGE_TOO_BIG)
        if not fin:
            return
        message = b"".join(self._fragments)
        self._fragments.clear()
        if self._fragment_compressed:
            message = self._inflate(message)
        self._deliver(self._fragment_opcode, message)

    def _inflate(self, data: bytes) -> bytes:
        inflater = self._inflater
        if inflater is None:
            inflater = zlib.decompressobj(-self._inflate_wbits)
            if not self._inflate_resets:
                self._inflater = inflater  # the client keeps its window across messages
        try:
            # max_length: a small message that inflates past the limit is a bomb,
            # refused without ever holding the inflated whole.
            out: bytes = inflater.decompress(data + _DEFLATE_TAIL, self._limit + 1)
        except zlib.error:
            raise Disconnect(1007, "invalid compressed data") from None
        if len(out) > self._limit or inflater.unconsumed_tail:
            raise Disconnect.of(DisconnectCode.MESSAGE_TOO_BIG)
        return out

    def _deliver(self, opcode: int, message: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = message.decode("utf-8")
            except UnicodeDecodeError:
                raise Disconnect.of(DisconnectCode.INVALID_UTF8) from None
            if self._binary:
                raise Disconnect.of(
                    DisconnectCode.BAD_REQUEST, "text frame on a Protobuf connection"
                )
            item: str | bytes = text
        else:
            if not self._binary:
                raise Disconnect.of(DisconnectCode.BAD_REQUEST, "binary frame on a JSON connection")
            item = message
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(item)
        if len(self._inbox) >= INBOX_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()  # the client outpaces its commands: stop reading
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        inbox = self._inbox
        session = self.session
        assert inbox is not None and session is not None
        try:
            while inbox and session.state is not State.CLOSED:
                await session.handle_frame(inbox.popleft())
                if len(inbox) < INBOX_HIGH_WATER // 2 and self.transport is not None:
                    self.transport.resume_reading()
        finally:
            self._reader = None
            self._inbox = None  # an idle connection holds no deque

    def _peer_closed(self, payload: bytes) -> None:
        if not self._close_sent:
            self._write(frame_header(OP_CLOSE, min(len(payload), 2)) + payload[:2])
            self._close_sent = True
        self.flush()
        if self.transport is not None:
            self.transport.close()
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))

    def _fail(self, reason: Disconnect) -> None:
        """A protocol error from the client: close with ``reason``, taking nothing more."""
        self._buffer.clear()
        self._fragments.clear()
        if self._failed:
            return  # more of the same stream: we are waiting for the peer's close
        self._failed = True
        if self.session is not None:
            self.session.disconnect(reason)
        elif self.transport is not None:
            self.transport.close()

    # --- writing: the session's Transport ---------------------------------

    def _write(self, data: bytes) -> None:
        """Write now while the server is quiet, else with the next flush; always in order."""
        out = self._out
        if out is not None:
            out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= WRITE_AT_ONCE_FROM:
                self.flush()
            return
        flusher = self._flusher
        if flusher.bursting or flusher.write_at_once():  # in a burst: skip the call
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
        else:
            self._out = [data]
            self._out_bytes = len(data)
            flusher.add(self)

    def flush(self) -> None:
        out, self._out = self._out, None
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def write_now(self, payload: bytes) -> bool:
        """Write one message without a task, if the socket keeps up: the fan-out's path."""
        if not self._writable or self._close_sent:
            return False
        # The hot path of every delivery: the frame cache, inlined.
        cache = self._cache
        if payload is not cache.payload:
            cache.load(payload)
        if self._deflate and len(payload) >= self._min_compress:
            data = cache.compressed_frame()
        else:
            data = cache.plain
        self._write(data)
        return True

    def _wake_writer(self) -> None:
        if self._drain is not None:
            self._drain.set()
            self._drain = None

    async def send(self, frame: bytes) -> None:
        while not self._writable and self.transport is not None:
            if self.transport.is_closing():
                raise ConnectionError("connection closed")
            if self._drain is None:
                self._drain = asyncio.Event()
            await self._drain.wait()
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        body = frame
        rsv1 = False
        if self._deflate and len(frame) >= self._min_compress:
            body, rsv1 = deflate_message(frame), True
        self._write(frame_header(self._opcode, len(body), rsv1) + body)

    async def close(self, code: int, reason: str) -> None:
        if self._close_sent or self.transport is None or self.transport.is_closing():
            return
        while not self._writable and not self.transport.is_closing():
            if self._drain is None:
                self._drain = asyncio.Event()
            await self._drain.wait()
        payload = code.to_bytes(2, "big") + reason.encode()[:123]
        self._write(frame_header(OP_CLOSE, len(payload)) + payload)
        self._close_sent = True
        transport = self.transport
        # Give the client a moment to answer with its close, then hang up.
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def abort(self) -> None:
        self._out = None
        if self.transport is not None:
            self.transport.abort()


def direct_protocol_factory(hub: Hub, fallback: Callable[..., asyncio.Protocol]) -> Any:
    """What uvicorn's ``ws`` setting takes: builds a DirectWebSocket per upgrade."""
    flusher = Flusher()

    def factory(**kwargs: Any) -> DirectWebSocket:
        return DirectWebSocket(hub, fallback, flusher, **kwargs)

    return factory
