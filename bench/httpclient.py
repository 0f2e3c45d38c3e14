"""A minimal HTTP/1.1 keep-alive client for the load generator: POST and wait, nothing else.

One :class:`HttpConnection` per concurrent client; it sends a request and
waits for the whole response (``content-length`` or chunked) before the next,
so a connection has at most one request in flight. No redirects, no TLS,
loopback only: the cost per request stays a small, fixed part of the
generator's, the same for every server.
"""

from __future__ import annotations

import asyncio
import re
from typing import cast

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


def parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete response in ``buf``, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    start = end + 4
    match = _CONTENT_LENGTH.search(head)
    if match is not None:
        n = int(match.group(1))
        if len(buf) < start + n:
            return None
        return status, bytes(buf[start : start + n]), start + n
    if b"\r\ntransfer-encoding: chunked" in head:
        pos, body = start, bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if size == 0:
                return status, bytes(body), pos
    return status, b"", start


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection: ``request`` writes a request and awaits its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        parsed = parse_response(self.buffer)
        if parsed is not None:
            status, body, used = parsed
            del self.buffer[:used]
            waiter.set_result((status, body))

    async def request(self, message: bytes) -> tuple[int, bytes]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def post(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The bytes of one POST request with a JSON body."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
