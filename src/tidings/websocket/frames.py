"""The frames a server writes (RFC 6455 5.2, RFC 7692 7.2): built once, written to many."""

from __future__ import annotations

import struct
import zlib

from .reader import DEFLATE_TAIL, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "close_frame",
    "deflate_message",
    "frame_header",
]


def frame_header(opcode: int, length: int, rsv1: bool = False) -> bytes:
    """The header of an unmasked server frame with FIN set."""
    first = 0x80 | opcode | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def deflate_message(payload: bytes) -> bytes:
    """One message compressed on its own (no context kept), without the final empty block."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(DEFLATE_TAIL) else data


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``code`` None for one without a status (the answer to an empty close)."""
    if code is None:
        return frame_header(OP_CLOSE, 0)
    # 123 bytes of reason at most, cut on a character boundary (a control frame holds 125).
    payload = code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()
    return frame_header(OP_CLOSE, len(payload)) + payload
