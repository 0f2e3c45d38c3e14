"""Small raw-protocol test clients for the Centrifugo JSON protocol.

``WSClient`` uses the ``websockets`` asyncio client: it sends commands as
JSON lines and reads replies and pushes split on newlines, answering the
server's ``{}`` pings unless told not to. Reads happen only when a test asks
for something, so a test sees exactly what the server sent.

``RawWebSocket`` speaks WebSocket by hand over an asyncio stream, for what a
well-behaved library refuses to do: send invalid UTF-8 in a text frame, set
reserved bits, leave a frame unmasked, cut a frame anywhere, or stop reading
altogether (a slow client). It also speaks permessage-deflate (RFC 7692) when
the server accepts it, and tells a close frame from the TCP connection's end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

Message = dict[str, Any]

ABNORMAL_CLOSURE = 1006


class WSClient:
    def __init__(self, ws: ClientConnection, *, answer_pings: bool = True) -> None:
        self.ws = ws
        self.answer_pings = answer_pings
        self.pings = 0
        self._next_id = 0
        self._lines: deque[Message] = deque()
        # Pushes and replies read while waiting for something else.
        self.unclaimed: list[Message] = []

    # --- sending ----------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send(self, *commands: Message) -> None:
        """Send commands in one text frame, one JSON line each."""
        await self.ws.send("\n".join(json.dumps(c) for c in commands))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a text frame (str) or a binary frame (bytes) as it is."""
        await self.ws.send(frame)

    # --- receiving --------------------------------------------------------

    async def _next_line(self, deadline: float) -> Message:
        """The next message of any kind, pings included; answers pings if asked to."""
        loop = asyncio.get_running_loop()
        while not self._lines:
            frame = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - loop.time()))
            assert isinstance(frame, str), "the server sent a binary frame"
            self._lines.extend(json.loads(line) for line in frame.split("\n") if line.strip())
        message = self._lines.popleft()
        if message == {}:
            self.pings += 1
            if self.answer_pings:
                await self.ws.send("{}")
        return message

    async def recv(self, timeout: float = 5.0) -> Message:
        """The next reply or push; server pings are counted (and answered) here."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            message = await self._next_line(deadline)
            if message != {}:
                return message

    async def wait_pings(self, count: int, timeout: float = 5.0) -> None:
        """Read until ``count`` server pings in all have come; other messages are kept."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.pings < count:
            message = await self._next_line(deadline)
            if message != {}:
                self.unclaimed.append(message)

    async def wait(self, match: Callable[[Message], bool], timeout: float = 5.0) -> Message:
        """Read until a message matches (it may have been read already)."""
        for i, message in enumerate(self.unclaimed):
            if match(message):
                del self.unclaimed[i]
                return message
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.recv(max(0.0, deadline - loop.time()))
            if match(message):
                return message
            self.unclaimed.append(message)

    async def reply(self, command_id: int, timeout: float = 5.0) -> Message:
        return await self.wait(lambda m: m.get("id") == command_id, timeout)

    async def call(
        self, method: str, params: Message | None = None, timeout: float = 5.0
    ) -> Message:
        """Send one command and return its whole reply (``{"id":..., method|error: ...}``)."""
        command_id = self.new_id()
        await self.send({"id": command_id, method: params or {}})
        return await self.reply(command_id, timeout)

    async def ok(self, method: str, params: Message | None = None) -> Message:
        """Call and return the result; fail on an error reply."""
        reply = await self.call(method, params)
        assert "error" not in reply, reply
        return reply[method]  # type: ignore[no-any-return]

    async def connect(self, token: str | None = None) -> Message:
        return await self.ok("connect", {"token": token} if token else {})

    async def subscribe(self, channel: str) -> Message:
        return await self.ok("subscribe", {"channel": channel})

    async def publication(self, channel: str, data: Any, timeout: float = 5.0) -> Message:
        """Wait for the publication of ``data`` in ``channel``."""
        push = await self.wait(
            lambda m: (
                m.get("push", {}).get("channel") == channel
                and m["push"].get("pub", {}).get("data") == data
            ),
            timeout,
        )
        return push["push"]["pub"]  # type: ignore[no-any-return]

    async def publications(self, channel: str, count: int, timeout: float = 5.0) -> list[Any]:
        """Read exactly ``count`` publications of ``channel``; return their data."""
        got: list[Any] = []
        while len(got) < count:
            push = await self.wait(
                lambda m: m.get("push", {}).get("channel") == channel and "pub" in m["push"],
                timeout,
            )
            got.append(push["push"]["pub"]["data"])
        return got

    async def closed(self, timeout: float = 5.0) -> int:
        """Read (answering pings as configured) until the server closes; its close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for _ in range(100_000):
                self.unclaimed.append(await self.recv(max(0.0, deadline - loop.time())))
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd is not None else ABNORMAL_CLOSURE
        raise AssertionError("the server kept sending and never closed")

    def take_read(self) -> list[Message]:
        """Take the messages read already but not returned yet: unclaimed ones, and
        the rest of the last frame read (a server may send several in one frame)."""
        taken = [*self.unclaimed, *(m for m in self._lines if m != {})]
        self.unclaimed.clear()
        self._lines.clear()
        return taken

    def disconnect_push(self) -> Message | None:
        """The in-band disconnect push read before the close, if any."""
        for message in self.unclaimed:
            if "disconnect" in message.get("push", {}):
                return message["push"]["disconnect"]  # type: ignore[no-any-return]
        return None

    @property
    def is_open(self) -> bool:
        return self.ws.protocol.state is State.OPEN


@asynccontextmanager
async def ws_client(url: str, *, answer_pings: bool = True) -> AsyncIterator[WSClient]:
    async with connect(
        url, open_timeout=5, close_timeout=1, ping_interval=None, max_size=2**22
    ) as ws:
        yield WSClient(ws, answer_pings=answer_pings)


# --- hand-made WebSocket ----------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# The reserved bits of a frame's first byte; RSV1 marks a compressed message.
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
# The empty stored block that ends a sync-flushed deflate message (RFC 7692 7.2.1).
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (masking and unmasking alike)."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame_header(
    opcode: int, length: int, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None
) -> bytes:
    """A frame's header: the length in as few bytes as RFC 6455 allows, then the mask key.

    ``mask`` None leaves the MASK bit clear (a server's frame, or a client's
    faulty one); ``rsv`` is any of RSV1 | RSV2 | RSV3.
    """
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if mask is not None else 0
    if length < 126:
        head.append(bit | length)
    elif length < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", length)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", length)
    if mask is not None:
        assert len(mask) == 4
        head += mask
    return bytes(head)


def frame_bytes(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    masked: bool = True,
) -> bytes:
    """A client frame: masked (with ``mask``, random by default), as RFC 6455 requires.

    ``masked=False`` sends it unmasked, which a server must refuse.
    """
    if not masked:
        return frame_header(opcode, len(payload), fin=fin, rsv=rsv) + payload
    key = os.urandom(4) if mask is None else mask
    return frame_header(opcode, len(payload), fin=fin, rsv=rsv, mask=key) + apply_mask(payload, key)


class Frame(NamedTuple):
    """A frame as the server sent it (payload unmasked, still compressed if RSV1)."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False  # a server must never mask (RFC 6455 5.1)


def deflate_params(header: str) -> dict[str, str | None] | None:
    """The parameters of the permessage-deflate extension in a response header, if any."""
    for extension in header.split(","):
        name, *params = (p.strip() for p in extension.split(";"))
        if name.lower() == "permessage-deflate":
            pairs = (p.partition("=") for p in params if p)
            return {k.strip().lower(): (v.strip().strip('"') if eq else None) for k, eq, v in pairs}
    return None


class RawWebSocket:
    """A WebSocket client written by hand on an asyncio stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._lines: deque[Message] = deque()
        # The upgrade response's headers, names in lower case.
        self.response_headers: dict[str, str] = {}
        # permessage-deflate as the server accepted it (None: not negotiated).
        self.deflate: dict[str, str | None] | None = None
        self._compressor: Any = None
        self._inflater: Any = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        path: str = "/connection/websocket",
        *,
        rcvbuf: int | None = None,
        stream_limit: int = 2**16,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> RawWebSocket:
        """Connect and upgrade. ``rcvbuf`` shrinks the kernel's receive buffer.

        ``headers`` are added to the upgrade request (Sec-WebSocket-Extensions,
        Sec-WebSocket-Protocol...).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # Each write its own segment (asyncio sets this only on sockets made with
        # proto=IPPROTO_TCP): Nagle would otherwise join the pieces of send_chopped.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout
            )
            reader, writer = await asyncio.open_connection(sock=sock, limit=stream_limit)
        except BaseException:
            sock.close()
            raise
        self = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status, *lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in status:
            self.close()
            raise AssertionError(f"upgrade refused: {status!r}")
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                name = name.strip().lower()
                value = value.strip()
                seen = self.response_headers.get(name)
                self.response_headers[name] = f"{seen}, {value}" if seen else value
        self.deflate = deflate_params(self.response_headers.get("sec-websocket-extensions", ""))
        return self

    # --- sending ----------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are: frames, parts of frames, anything."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_chopped(self, data: bytes, size: int = 1) -> None:
        """Write ``data`` ``size`` bytes at a time, letting the server read each piece."""
        for i in range(0, len(data), size):
            await self.send_raw(data[i : i + size])
            for _ in range(3):  # the server shares the loop: let it take this piece
                await asyncio.sleep(0)

    async def send_frame(
        self,
        opcode: int,
        payload: bytes,
        *,
        fin: bool = True,
        rsv: int = 0,
        mask: bytes | None = None,
        masked: bool = True,
    ) -> None:
        await self.send_raw(
            frame_bytes(opcode, payload, fin=fin, rsv=rsv, mask=mask, masked=masked)
        )

    async def send(self, *commands: Message) -> None:
        text = "\n".join(json.dumps(c) for c in commands)
        await self.send_frame(OP_TEXT, text.encode())

    def compress(self, message: bytes) -> bytes:
        """``message`` deflated as RFC 7692 says, for the frames of one compressed message.

        The client's window and context takeover are as negotiated; the
        trailing 00 00 ff ff is removed.
        """
        assert self.deflate is not None, "permessage-deflate was not negotiated"
        bits = self.deflate.get("client_max_window_bits")
        wbits = int(bits) if bits else 15
        assert wbits >= 9, "zlib cannot compress within an 8-bit window"
        if self._compressor is None or "client_no_context_takeover" in self.deflate:
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        data: bytes = self._compressor.compress(message) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(DEFLATE_TAIL)
        return data[:-4]

    # --- receiving --------------------------------------------------------

    async def read_raw_frame(self, timeout: float = 5.0) -> Frame:
        """The next frame from the server, as it came (its payload unmasked if it was masked)."""

        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
            payload = await self.reader.readexactly(n)
            if mask:
                payload = apply_mask(payload, mask)
            return Frame(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, payload, bool(mask))

        return await asyncio.wait_for(read(), timeout)

    def inflate(self, payload: bytes) -> bytes:
        """A compressed message from the server, inflated (its context kept as negotiated)."""
        assert self.deflate is not None, "a compressed frame without permessage-deflate"
        if (
            self._inflater is None
            or self._inflater.eof
            or "server_no_context_takeover" in self.deflate
        ):
            self._inflater = zlib.decompressobj(-15)
        return self._inflater.decompress(payload + DEFLATE_TAIL)  # type: ignore[no-any-return]

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """The next frame from the server (unfragmented as ours are), inflated if compressed."""
        frame = await self.read_raw_frame(timeout)
        if frame.rsv & RSV1 and frame.opcode in (OP_TEXT, OP_BINARY):
            return frame.opcode, self.inflate(frame.payload)
        return frame.opcode, frame.payload

    async def frames_until_eof(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame until the server closes the TCP connection, which must be within ``timeout``.

        A reset counts as the end too. Nothing is sent meanwhile: no pong, no close.
        """
        frames: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                frames.append(await self.read_raw_frame(max(0.0, left)))
            except (asyncio.IncompleteReadError, ConnectionError):
                return frames
            except TimeoutError:
                raise AssertionError(
                    f"the server kept the TCP connection open for {timeout}s"
                ) from None

    async def recv(self, timeout: float = 5.0) -> Message:
        """The next reply or push (pings answered)."""
        while not self._lines:
            opcode, payload = await self.read_frame(timeout)
            if opcode == OP_TEXT:
                for line in payload.decode().split("\n"):
                    if line.strip():
                        self._lines.append(json.loads(line))
            elif opcode == OP_CLOSE:
                raise ConnectionError(f"closed: {close_code(payload)}")
        message = self._lines.popleft()
        if message == {}:
            await self.send_frame(OP_TEXT, b"{}")
            return await self.recv(timeout)
        return message

    async def reply(self, command_id: int, timeout: float = 5.0) -> Message:
        for _ in range(10_000):
            message = await self.recv(timeout)
            if message.get("id") == command_id:
                return message
        raise AssertionError(f"no reply to {command_id}")

    async def close_code(self, timeout: float = 5.0, max_bytes: int = 1 << 28) -> int:
        """Read and drop everything until the server's close frame; its code (1006: none)."""
        received = 0
        while received <= max_bytes:
            try:
                opcode, payload = await self.read_frame(timeout)
            except (asyncio.IncompleteReadError, ConnectionError):
                return ABNORMAL_CLOSURE
            received += len(payload)
            if opcode == OP_CLOSE:
                code = close_code(payload)
                try:  # complete the closing handshake, politely
                    await self.send_frame(OP_CLOSE, payload[:2])
                except ConnectionError:
                    pass
                return code
        raise AssertionError(f"no close frame in {max_bytes} bytes")

    def close(self) -> None:
        self.writer.transport.abort()


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
