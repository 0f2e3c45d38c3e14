"""uvicorn's httptools protocol with limits on the request head, for both WebSocket paths.

Every connection starts as an HTTP request, and an upgrade request is read
whole before either WebSocket path sees it, so its limits live here:

* the request line and headers together may take ``max_request_head_size``
  bytes, in at most ``max_request_headers`` header lines; past either, the
  client gets ``431`` with a JSON body and the connection is closed. The raw
  bytes of an unfinished head are counted as they arrive, so httptools never
  holds more than the limit plus one read;
* a head must be complete within ``request_head_timeout`` of its first byte
  (or of the connection, for the first request): else ``408`` and close.
  uvicorn has no such timeout, so a client that sends half a request would
  hold its socket forever.

httptools stays the parser; this only counts and times what it parses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import Settings

# Per header line, httptools' callbacks see name and value without ": " and CRLF.
_LINE_OVERHEAD = 4


class _LimitExceeded(Exception):
    """Raised from a parser callback to stop parsing; httptools wraps it."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """An httptools connection whose request heads are bounded in size and time."""

    # Set on the subclass that limited_http_protocol makes for one server.
    settings: Settings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings
        self._max_head = settings.max_request_head_size
        self._max_lines = settings.max_request_headers
        self._head_timeout = settings.request_head_timeout
        # The request head being read: its raw bytes so far, its parsed size and lines.
        self._reading_head = True
        self._raw_head = 0
        self._head_size = 0
        self._header_lines = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # The status and message to answer instead of uvicorn's 400, once a limit is hit.
        self._refusal: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._raw_head += len(data)
        super().data_received(data)
        # Still no end of head after more than the limit: refuse before buffering more.
        if (
            self._reading_head
            and self._raw_head > self._max_head
            and not self.transport.is_closing()
        ):
            self._refuse(431, "request header fields too large")

    # --- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_size = self._header_lines = 0
        self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self._max_lines:
            self._refusal = (431, "too many header fields")
            raise _LimitExceeded
        self._count(len(name) + len(value) + _LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._raw_head = 0
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error, or ours when a limit stopped the parser."""
        if self._refusal is not None:
            status, message = self._refusal
            self._respond(status, message)
        else:
            super().send_400_response(msg)

    # --- limits ---------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_head:
            self._refusal = (431, "request header fields too large")
            raise _LimitExceeded

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse(408, "request headers not received in time")

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        self._respond(status, message)

    def _respond(self, status: int, message: str) -> None:
        self._reading_head = False
        self._stop_head_timer()
        body = orjson.dumps({"detail": message})
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(
            status, "Bad Request"
        )
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.transport.close()


def limited_http_protocol(settings: Settings) -> type[LimitedHttpProtocol]:
    """What uvicorn's ``http`` setting takes: the protocol class, bound to ``settings``."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"settings": settings})
