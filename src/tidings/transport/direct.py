"""The direct WebSocket path for ``/connection/websocket`` under ``tidings serve``.

The ASGI path costs an idle connection tens of KiB (a suspended coroutine
stack through every middleware, an ``asyncio.Queue``, header copies) and every
message a trip through Starlette and uvicorn's frame builder. This protocol
takes over the socket right after uvicorn parses the upgrade request (within
the limits of ``tidings.transport.http``) and speaks RFC 6455 itself, with
the I/O-free pieces of ``tidings.websocket``:

* the handshake is answered by the policy both paths share;
* frames are read by :class:`~tidings.websocket.reader.FrameReader`, which
  checks every rule on the header, before any payload is kept; on a fault
  the close goes out, the TCP connection is half-closed and nothing more is
  read (RFC 6455 7.1.7);
* while the socket does not take what we write, we stop reading (and acting
  on what was read), so nothing the reader answers (pongs, closes) piles up,
  and neither do commands;
* an idle connection holds this object, its session, a reader and a few timer
  handles: no task and no coroutine stack (a reader task exists only while
  commands are being handled, a writer task only while the socket is backed up);
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
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from ..hub import Hub
from ..hub.session import Session, State
from ..protocol import Disconnect, DisconnectCode
from ..protocol.formats import JSON, PROTOBUF
from ..websocket.frames import (
    OP_BINARY,
    OP_PONG,
    OP_TEXT,
    close_frame,
    deflate_message,
    frame_header,
)
from ..websocket.handshake import request_path, upgrade
from ..websocket.reader import (
    NO_STATUS_RECEIVED,
    CloseReceived,
    Failure,
    FrameReader,
    Ping,
    Pong,
)

log = logging.getLogger("tidings.transport")

PATH = "/connection/websocket"

# Peers may take this long to answer our close before the socket is dropped.
CLOSE_TIMEOUT = 5.0
# Messages from one client waiting to be handled before reading pauses.
INBOX_HIGH_WATER = 64
# Frames of one client acted on per loop turn (a few hundred microseconds).
EVENTS_PER_TURN = 256


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

# What one connection may have gathered before it is written at once, whatever
# the flush policy: one system call is well spent on it, and holding more would
# only hold memory (large messages to many clients in one loop iteration).
WRITE_AT_ONCE_FROM = 64 * 1024


class Flusher:
    """Writes what each connection got during one loop iteration in one system call.

    Frames are gathered per connection as they are written, and the flush runs
    as the next callback of the event loop: after everything else this
    iteration does (every command read in it, every publication it fans out),
    before any new input is handled. A quiet server thus adds no latency (one
    zero-timeout poll), and a busy one batches by itself: the more commands
    an iteration handles, the more frames each system call carries (a client's
    publish reply and its own publication leave together). No timer is
    involved unless ``write_delay`` asks for one: then a flush waits that long
    after the first frame, for bigger batches at the cost of that latency,
    as Centrifugo's ``write_delay`` does.
    """

    __slots__ = ("_delay", "_dirty", "_handle")

    def __init__(self, write_delay: float = 0.0) -> None:
        self._delay = write_delay
        self._dirty: list[DirectWebSocket] = []
        self._handle: asyncio.Handle | None = None

    def add(self, connection: DirectWebSocket) -> None:
        """Flush ``connection`` with the others, at the end of this iteration."""
        self._dirty.append(connection)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = (
                loop.call_later(self._delay, self.flush)
                if self._delay
                else loop.call_soon(self.flush)
            )

    def flush(self) -> None:
        self._handle = None
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()


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
        "_close_timer",
        "_connections",
        "_delegate",
        "_drain",
        "_fallback",
        "_frames",
        "_inbox",
        "_kwargs",
        "_more",
        "_opcode",
        "_reader",
        "_reading",
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
        # The client's frames, read until a close or a fault (then None: bytes are dropped).
        self._frames: FrameReader | None = None
        # Messages read and not yet handled, and the task handling them.
        self._inbox: deque[str | bytes] | None = None
        self._reader: asyncio.Task[None] | None = None
        # The next turn's share of a long read (see _read_frames).
        self._more: asyncio.Handle | None = None
        self._reading = True
        self._writable = True
        self._drain: asyncio.Event | None = None
        self._binary = False
        self._opcode = OP_TEXT
        self._cache = _CACHES[OP_TEXT]
        self._deflate = False
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
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
        frames = self._frames
        if frames is not None:
            frames.receive_data(data)
            self._read_frames()
        elif self.session is None and not self._close_sent:
            self._handshake(data)
        # Else: closing. Whatever else the client sends is dropped unread.

    def eof_received(self) -> bool | None:
        if self._delegate is not None:
            return self._delegate.eof_received()
        return None  # the client is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._delegate is not None:
            self._delegate.connection_lost(exc)
            return
        self._connections.discard(self)
        self._frames = None
        if self._more is not None:
            self._more.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._writable = True
        self._wake_writer()
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))

    def pause_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.pause_writing()
            return
        self._writable = False
        self._update_reading()

    def resume_writing(self) -> None:
        if self._delegate is not None:
            self._delegate.resume_writing()
            return
        self._writable = True
        self._wake_writer()
        if self._frames is not None and self._frames.buffered and self._more is None:
            self._read_frames()  # what was left while the socket was full
        else:
            self._update_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: tell the client to reconnect elsewhere."""
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.SHUTDOWN))
        elif self.transport is not None:
            self.transport.close()

    # --- handshake --------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        assert self.transport is not None
        if request_path(data) != PATH:
            # Not ours: uvicorn's own WebSocket implementation serves it over ASGI.
            # uvicorn makes this object the transport's protocol once we return,
            # so it stays in between and forwards everything.
            self._connections.discard(self)
            other = self._delegate = self._fallback(**self._kwargs)
            other.connection_made(self.transport)
            other.data_received(data)
            return
        settings = self.hub.settings
        result = upgrade(
            data,
            allowed_origins=settings.allowed_origins,
            compression=settings.websocket_compression,
            available=self.hub.running,
        )
        self.transport.write(result.response)
        if not result.accepted:
            status = result.response.split(b"\r\n", 1)[0].decode("latin-1")
            log.info("refused WebSocket upgrade: %s", status)
            self._close_sent = True
            self.transport.close()
            return
        self._binary = result.protobuf
        self._opcode = OP_BINARY if result.protobuf else OP_TEXT
        self._cache = _CACHES[self._opcode]
        self._deflate = result.inflate is not None
        self._frames = FrameReader(
            max_message_size=settings.max_message_size,
            max_fragments=settings.websocket_max_fragments,
            inflate=result.inflate,
        )
        peer = self.transport.get_extra_info("peername")
        self.scope = {"type": "websocket", "path": PATH, "client": peer}
        self.session = self.hub.open_session(
            self, headers=result.headers, wire_format=PROTOBUF if result.protobuf else JSON
        )

    # --- reading ----------------------------------------------------------

    def _read_frames(self) -> None:
        """Act on buffered frames while the inbox has room and the socket takes our writes.

        What is left stays in the reader (at most one read's worth) until both
        hold again: a flood of pings from a client that does not read costs
        no more than the socket's buffer in pongs.
        """
        if self._more is not None:
            self._more.cancel()  # called before its turn came: this call does its work
            self._more = None
        frames = self._frames
        inbox = self._inbox
        budget = EVENTS_PER_TURN
        while (
            frames is not None
            and self._writable
            and (inbox is None or len(inbox) < INBOX_HIGH_WATER)
        ):
            if not budget:
                # One read may hold tens of thousands of frames: act on the rest
                # next turn, so that other clients are served in between.
                self._more = asyncio.get_running_loop().call_soon(self._read_frames)
                break
            budget -= 1
            event = frames.next_event()
            if event is None:
                break
            if isinstance(event, str | bytes):
                self._deliver(event)
                inbox = self._inbox
            elif isinstance(event, Ping):
                if not self._close_sent:
                    self._write(frame_header(OP_PONG, len(event.payload)) + event.payload)
            elif isinstance(event, CloseReceived):
                self._peer_closed(event)
                return
            elif isinstance(event, Failure):
                self._fail(Disconnect(event.code, event.reason))
                return
            else:
                assert isinstance(event, Pong)  # unsolicited or ours: nothing to do
            frames = self._frames  # None once a message closed the connection
        self._update_reading()

    def _deliver(self, message: str | bytes) -> None:
        session = self.session
        assert session is not None
        if session.state is State.CLOSED:
            return  # closing: frames are read only for the client's close
        if isinstance(message, str) == self._binary:
            # The protocol's rule, not WebSocket's: the session says so (in band too) and closes.
            wrong = "text frame on a Protobuf" if self._binary else "binary frame on a JSON"
            session.disconnect(Disconnect.of(DisconnectCode.BAD_REQUEST, wrong + " connection"))
            return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        """Handle the client's messages in order, one command at a time."""
        # A task, not a call from data_received: a command may await code that
        # needs a current task (anyio in httpx for a JWKS fetch, asyncio.timeout).
        session = self.session
        assert session is not None
        try:
            while session.state is not State.CLOSED:
                inbox = self._inbox
                if not inbox:
                    break
                await session.handle_frame(inbox.popleft())
                if len(inbox) < INBOX_HIGH_WATER // 2:
                    self._read_frames()  # what the full inbox left unread
        finally:
            self._reader = None
            self._inbox = None  # an idle connection holds no deque
            self._update_reading()
        # This client's commands are done: its replies (and its own publications)
        # leave now rather than a loop turn later. Other connections' frames
        # still leave together with the flusher's.
        self.flush()

    def _update_reading(self) -> None:
        """Read while the socket takes our writes and the inbox has room; else pause."""
        inbox = self._inbox
        wanted = (
            self._writable
            and self._more is None
            and (inbox is None or len(inbox) < INBOX_HIGH_WATER)
        )
        wanted = wanted or self._frames is None  # closing: read (and drop) until EOF
        transport = self.transport
        if wanted != self._reading and transport is not None and not transport.is_closing():
            self._reading = wanted
            if wanted:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _peer_closed(self, close: CloseReceived) -> None:
        """The client's close: answer it (unless ours crossed it), then hang up at once."""
        self._frames = None
        if not self._close_sent:
            code = None if close.code == NO_STATUS_RECEIVED else close.code
            self._write(close_frame(code))
            self._close_sent = True
        self.flush()
        if self.transport is not None:
            self.transport.close()
        if self.session is not None:
            self.session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_CLOSED))

    def _fail(self, reason: Disconnect) -> None:
        """Fail the connection (RFC 6455 7.1.7): close, half-close TCP, read nothing more."""
        self._frames = None
        if self._inbox is not None:
            self._inbox.clear()  # nothing after the fault is acted on
        transport = self.transport
        if not self._close_sent and transport is not None and not transport.is_closing():
            self._write(close_frame(reason.code, reason.reason))
            self._close_sent = True
            self.flush()
            if transport.can_write_eof():
                # Half-close: the client reads our close and the end of the stream,
                # while whatever it still sends is dropped unread until it hangs up.
                transport.write_eof()
                self._close_timer = asyncio.get_running_loop().call_later(
                    CLOSE_TIMEOUT, transport.abort
                )
            else:  # pragma: no cover  (TLS transports cannot half-close)
                transport.close()
        self._update_reading()
        if self.session is not None:
            self.session.disconnect(reason)
        elif transport is not None:
            transport.close()

    # --- writing: the session's Transport ---------------------------------

    def _write(self, data: bytes) -> None:
        """Gather ``data`` for the flush at the end of this loop iteration; always in order."""
        out = self._out
        if out is None:
            self._out = [data]
            self._out_bytes = len(data)
            self._flusher.add(self)
            return
        out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= WRITE_AT_ONCE_FROM:
            self.flush()

    def flush(self) -> None:
        """Write what was gathered, in one system call."""
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
        if self._close_sent or self.transport is None or self.transport.is_closing():
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
        if self._close_sent or self.transport.is_closing():
            return
        self._write(close_frame(code, reason))
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
    flusher = Flusher(hub.settings.write_delay / 1000)

    def factory(**kwargs: Any) -> DirectWebSocket:
        return DirectWebSocket(hub, fallback, flusher, **kwargs)

    return factory
