"""A sans-I/O reader of the frames a WebSocket client sends (RFC 6455, RFC 7692).

Bytes go in with :meth:`FrameReader.receive_data`; events come out of
:meth:`FrameReader.next_event`, one at a time, so the caller can stop pulling
(and stop reading its socket) while it is busy. No asyncio, no sockets: the
tests feed it byte literals.

Why our own and not the ``websockets`` library's ``Protocol`` (which the ASGI
path uses, and which this reader is checked against, case by case, in
``tests/unit/test_frame_reader.py``):

* every rule is checked on the frame header, before any of its payload is
  kept: ``websockets`` checks reserved bits, control-frame length and RSV1 on
  continuations only once the whole payload has been buffered, so a client
  may hold up to ``max_message_size`` per connection before being refused;
* an idle connection holds ~0.2 KiB here against ~1.3 KiB for a
  ``websockets.Protocol`` (a parser generator, a stream reader, a UUID, lists),
  which also keeps the last frame it read alive in the generator's locals
  (measured with tracemalloc; the idle budget of a connection is 8 KiB);
* fragments per message are capped, and each frame costs the same whatever
  came before it (no re-counting of earlier fragments).

Its decisions (the close code for each fault) are those of ``websockets``.
"""

from __future__ import annotations

import codecs
import zlib
from dataclasses import dataclass
from typing import Any

# A pure function (websockets' C helper, or its Python twin): no I/O.
try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})

# Close codes (RFC 6455 7.4.1).
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
NO_STATUS_RECEIVED = 1005
# Codes a peer may send in a close frame: the registered ones that are not
# reserved for local use (1004, 1005, 1006, 1015), and 3000-4999.
_PEER_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

# The empty stored block every compressed message ends with; senders drop it (RFC 7692 7.2.1).
DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame (code 1005 when it carried none): answer it, then hang up."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The peer broke a rule: send a close with ``code``, then close TCP (RFC 6455 7.1.7)."""

    code: int
    reason: str


# A complete message is a str (text) or bytes (binary): no wrapper on the hot path.
Event = str | bytes | Ping | Pong | CloseReceived | Failure


@dataclass(frozen=True, slots=True)
class Inflate:
    """What the permessage-deflate negotiation fixed for the client's messages."""

    # The client resets its compressor after every message (client_no_context_takeover).
    resets: bool = True
    window_bits: int = 15


def close_code_allowed(code: int) -> bool:
    """Whether a peer may put ``code`` in its close frame (RFC 6455 7.4)."""
    return code in _PEER_CLOSE_CODES or 3000 <= code < 5000


class FrameReader:
    """Reads the frames of one client connection, checking each rule on the header."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_fragments",
        "_inflate",
        "_inflater",
        "_max_fragments",
        "_max_size",
        "_message_compressed",
        "_message_size",
        "_message_text",
        "_parts",
        "_position",
        "done",
    )

    def __init__(
        self, *, max_message_size: int, max_fragments: int, inflate: Inflate | None = None
    ) -> None:
        self._max_size = max_message_size
        self._max_fragments = max_fragments
        self._inflate = inflate
        self._buffer = bytearray()
        self._position = 0
        # The message being assembled from fragments: None between messages.
        self._parts: list[Any] | None = None
        self._fragments = 0
        self._message_size = 0
        self._message_text = False
        self._message_compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._inflater: Any = None
        # Set once a close frame was read or a rule broken: nothing more is read.
        self.done = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buffer) - self._position

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the network; after a close or a failure they are dropped."""
        if not self.done:
            self._buffer += data

    def next_event(self) -> Event | None:
        """The next complete event, or None until more bytes arrive."""
        buffer = self._buffer
        while not self.done:
            start = self._position
            available = len(buffer) - start
            if available < 2:
                break
            first, second = buffer[start], buffer[start + 1]
            opcode = first & 0x0F
            fin = first & 0x80
            # The header, checked before anything else is read.
            if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
                return self._fail(PROTOCOL_ERROR, "invalid opcode")
            if not second & 0x80:
                return self._fail(PROTOCOL_ERROR, "frame not masked")
            length = second & 0x7F
            header = 6
            if length == 126:
                if available < 4:
                    break
                length = (buffer[start + 2] << 8) | buffer[start + 3]
                header = 8
            elif length == 127:
                if available < 10:
                    break
                length = int.from_bytes(buffer[start + 2 : start + 10], "big")
                header = 14
            fault = self._check_header(first, opcode, fin, length)
            if fault is not None:
                return fault
            end = start + header + length
            if len(buffer) < end:
                break
            # The whole frame is here: unmask, consume, act.
            mask = buffer[end - length - 4 : end - length]
            payload = apply_mask(buffer[end - length : end], mask) if length else b""
            self._position = end
            event = (
                self._control(opcode, payload)
                if opcode >= 8
                else self._data(opcode, bool(fin), bool(first & 0x40), payload)
            )
            if event is not None:
                return event
        # Out of whole frames: drop what was consumed (one move per batch of frames).
        if self._position:
            del buffer[: self._position]
            self._position = 0
        return None

    # --- header rules -----------------------------------------------------

    def _check_header(self, first: int, opcode: int, fin: int, length: int) -> Failure | None:
        """The failure a frame's header alone proves, or None."""
        if opcode >= 8:
            # The size first, as websockets does: a huge declared length is 1009.
            if length > self._max_size:
                return self._fail(MESSAGE_TOO_BIG, "frame too big")
            if first & 0x70:
                return self._fail(PROTOCOL_ERROR, "reserved bits must be 0")
            if length > 125:
                return self._fail(PROTOCOL_ERROR, "control frame too long")
            if not fin:
                return self._fail(PROTOCOL_ERROR, "fragmented control frame")
            return None
        in_message = self._parts is not None
        # The room left in the message: a frame past it is refused before it is read.
        if length > self._max_size - (self._message_size if in_message else 0):
            return self._fail(MESSAGE_TOO_BIG, "message too big")
        if first & 0x30:
            return self._fail(PROTOCOL_ERROR, "reserved bits must be 0")
        if opcode == OP_CONTINUATION:
            if not in_message:
                return self._fail(PROTOCOL_ERROR, "unexpected continuation frame")
            if first & 0x40:
                return self._fail(PROTOCOL_ERROR, "unexpected rsv1 on continuation frame")
            if self._fragments >= self._max_fragments:
                return self._fail(MESSAGE_TOO_BIG, "too many fragments")
        else:
            if in_message:
                return self._fail(PROTOCOL_ERROR, "expected a continuation frame")
            if first & 0x40 and self._inflate is None:
                return self._fail(PROTOCOL_ERROR, "reserved bits must be 0")
        return None

    # --- frames -----------------------------------------------------------

    def _control(self, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        # Close: validated as RFC 6455 5.5.1 and 7.4 ask.
        if len(payload) == 0:
            code, reason = NO_STATUS_RECEIVED, ""
        elif len(payload) == 1:
            return self._fail(PROTOCOL_ERROR, "close frame too short")
        else:
            code = int.from_bytes(payload[:2], "big")
            try:  # the reason before the code, as websockets does
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(INVALID_DATA, "invalid utf-8 in close reason")
            if not close_code_allowed(code):
                return self._fail(PROTOCOL_ERROR, "invalid status code")
        if self._parts is not None:
            # A close in the middle of a message: websockets refuses it too.
            return self._fail(PROTOCOL_ERROR, "incomplete fragmented message")
        self._stop()
        return CloseReceived(code, reason)

    def _data(self, opcode: int, fin: bool, rsv1: bool, payload: bytes) -> Event | None:
        if opcode != OP_CONTINUATION:
            if fin and not rsv1:
                # The common case: a whole, uncompressed message in one frame.
                return self._text(payload) if opcode == OP_TEXT else payload
            self._parts = []
            self._fragments = 0
            self._message_size = 0
            self._message_text = opcode == OP_TEXT
            self._message_compressed = rsv1
        parts = self._parts
        assert parts is not None
        self._fragments += 1
        if self._message_compressed:
            inflated = self._inflate_piece(payload, fin)
            if isinstance(inflated, Failure):
                return inflated
            payload = inflated
        self._message_size += len(payload)
        if self._message_text:
            # Checked as it comes: a bad sequence fails at its fragment, not at the end.
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = codecs.getincrementaldecoder("utf-8")()
            try:
                parts.append(decoder.decode(payload, fin))
            except UnicodeDecodeError:
                return self._fail(INVALID_DATA, "invalid utf-8")
        else:
            parts.append(payload)
        if not fin:
            return None
        message: str | bytes = "".join(parts) if self._message_text else b"".join(parts)
        self._parts = None
        self._decoder = None
        return message

    def _text(self, payload: bytes) -> str | Failure:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(INVALID_DATA, "invalid utf-8")

    def _inflate_piece(self, payload: bytes, fin: bool) -> bytes | Failure:
        """Inflate one fragment of a compressed message, never past the room left."""
        settings = self._inflate
        assert settings is not None
        inflater = self._inflater
        if inflater is None:
            inflater = self._inflater = zlib.decompressobj(-settings.window_bits)
        if fin:
            payload += DEFLATE_TAIL
        room = self._max_size - self._message_size
        try:
            # max_length: a small message that inflates past the limit is a bomb,
            # refused without ever holding the inflated whole.
            out: bytes = inflater.decompress(payload, room + 1)
        except zlib.error:
            return self._fail(PROTOCOL_ERROR, "decompression failed")
        if len(out) > room:
            return self._fail(MESSAGE_TOO_BIG, "message too big")
        if fin and settings.resets:
            self._inflater = None  # the client starts afresh: so do we, and free the window
        return out

    # --- the end ------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> Failure:
        self._stop()
        return Failure(code, reason)

    def _stop(self) -> None:
        """Read nothing more and let go of every buffer."""
        self.done = True
        self._buffer = bytearray()
        self._position = 0
        self._parts = None
        self._decoder = None
        self._inflater = None
