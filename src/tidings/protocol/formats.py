"""The two wire formats of the protocol, behind one small interface.

A connection picks its format once, at the handshake; everything after that
goes through its ``WireFormat``: the hub encodes each push once per format in
use, and the session joins queued frames with the format's separator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import json_codec, protobuf_codec
from .codes import ProtocolError
from .messages import BadCommand, Command, Method, PushBody, Result

# The WebSocket subprotocol with which the SDKs ask for Protobuf.
PROTOBUF_SUBPROTOCOL = "centrifuge-protobuf"


@dataclass(frozen=True, slots=True)
class WireFormat:
    name: str
    # Binary frames (Protobuf) or text frames (JSON).
    binary: bool
    ping: bytes
    # What goes between messages coalesced into one frame.
    separator: bytes
    decode: Callable[[Any], list[Command | BadCommand]]
    encode_reply: Callable[[int, Method, Result], bytes]
    encode_error: Callable[[int, ProtocolError], bytes]
    encode_push: Callable[[str, PushBody], bytes]


JSON = WireFormat(
    name="json",
    binary=False,
    ping=json_codec.PING,
    separator=b"\n",
    decode=json_codec.decode_frame,
    encode_reply=json_codec.encode_reply,
    encode_error=json_codec.encode_error,
    encode_push=json_codec.encode_push,
)

PROTOBUF = WireFormat(
    name="protobuf",
    binary=True,
    ping=protobuf_codec.PING,
    separator=b"",
    decode=protobuf_codec.decode_frame,
    encode_reply=protobuf_codec.encode_reply,
    encode_error=protobuf_codec.encode_error,
    encode_push=protobuf_codec.encode_push,
)
