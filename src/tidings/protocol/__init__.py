"""The I/O-free core of the Centrifugo client protocol v2: values, codes and codecs.

Nothing in this package does I/O or imports an event loop, so every part of it
can be tested with plain values.
"""

from .codes import (
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ProtocolError,
    UnsubscribeCode,
)
from .messages import ClientInfo, Publication, StreamPosition

__all__ = [
    "ClientInfo",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "ProtocolError",
    "Publication",
    "StreamPosition",
    "UnsubscribeCode",
]
