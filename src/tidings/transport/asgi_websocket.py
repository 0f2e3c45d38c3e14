"""uvicorn's WebSocket protocol for the ASGI path, held to the rules of the direct one.

When ``websocket_direct`` is off, ``tidings serve`` runs every WebSocket over
ASGI with uvicorn's ``websockets-sansio`` implementation, whose frames are
read by the ``websockets`` library. This subclass adds what the direct path
does and the library leaves to its user, so both paths give the same outcome
(``tests/integration/test_websocket_conformance.py`` runs on both):

* the handshake policy of :mod:`tidings.websocket.handshake` (permessage-deflate
  with one compressed frame valid for every subscriber);
* at most ``websocket_max_fragments`` frames per message (1009 past it);
* no reading while the socket does not take our writes, so pongs and replies
  cannot pile up behind a client that does not read;
* a long read is parsed a slice per loop turn, so that one client's burst of
  tiny frames does not hold up everyone else;
* a failed connection half-closes TCP after its close frame and drops the
  rest unread, so the client gets the close before the end of the stream
  instead of a reset (RFC 6455 7.1.7);
* invalid UTF-8 closes with 1007 without an error log per offending client.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.server import ServerProtocol

from ..config import Settings
from ..websocket.handshake import deflate_extensions
from ..websocket.reader import INVALID_DATA, MESSAGE_TOO_BIG

# Bytes of one client parsed per loop turn (the library parses all it is given at once).
READ_SLICE = 16 * 1024


class AsgiWebSocketProtocol(WebSocketsSansIOProtocol):
    """One WebSocket served over ASGI, under Tidings' limits."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = ServerProtocol(
            extensions=deflate_extensions(settings.websocket_compression),
            max_size=self.config.ws_max_size,
            logger=logging.getLogger("uvicorn.error"),
        )
        self._max_fragments = settings.websocket_max_fragments
        self._fragments = 0
        self._write_paused = False
        self._failed = False
        # What is left of a long read, parsed a slice per loop turn.
        self._backlog = bytearray()

    # --- limits on what the client sends ------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return  # after a failure, everything is dropped unread until the client hangs up
        if self._backlog:
            self._backlog += data
            return
        if len(data) > READ_SLICE:
            # One read may hold tens of thousands of frames: parse a slice per
            # loop turn, with reading paused, so that other clients are served between.
            self._backlog = bytearray(data[READ_SLICE:])
            data = data[:READ_SLICE]
            self.transport.pause_reading()
            self.loop.call_soon(self._parse_backlog)
        super().data_received(data)

    def _parse_backlog(self) -> None:
        backlog, self._backlog = self._backlog, bytearray()
        if self._failed or self.transport.is_closing():
            return
        if len(backlog) > READ_SLICE:
            self._backlog = backlog[READ_SLICE:]
            self.loop.call_soon(self._parse_backlog)
        super().data_received(bytes(backlog[:READ_SLICE]))
        self._resume_reading()

    def _resume_reading(self) -> None:
        if not (self.read_paused or self._write_paused or self._backlog or self._failed):
            self.transport.resume_reading()

    def handle_text(self, event: Frame) -> None:
        self._fragments = 1
        super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        self._fragments = 1
        super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self._failed:
            return
        if self._fragments >= self._max_fragments:
            self.conn.fail(MESSAGE_TOO_BIG, "too many fragments")
            self.handle_parser_exception()
            return
        self._fragments += 1
        super().handle_cont(event)

    def send_receive_event_to_app(self) -> None:
        # uvicorn logs a traceback at ERROR for every text message that is not
        # UTF-8, so any client could flood the error log: fail with 1007 quietly.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.fail(INVALID_DATA, "invalid utf-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        """Send the close, half-close TCP, and read (dropping) until the client's EOF."""
        if self._failed:
            return
        self._failed = True
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
        else:  # pragma: no cover  (TLS cannot half-close)
            self.transport.close()

    # --- backpressure -------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        self._resume_reading()

    async def receive(self) -> Any:
        # uvicorn's, except that reading stays paused while writes or a backlog are.
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self._resume_reading()
        return message


def asgi_websocket_protocol(settings: Settings) -> Any:
    """What uvicorn's ``ws`` setting takes: an AsgiWebSocketProtocol per upgrade."""

    def factory(**kwargs: Any) -> AsgiWebSocketProtocol:
        return AsgiWebSocketProtocol(settings=settings, **kwargs)

    return factory
