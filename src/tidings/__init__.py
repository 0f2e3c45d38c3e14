"""Tidings: a real-time messaging hub for FastAPI that speaks the Centrifugo client protocol."""

__version__ = "0.1.0"

from .app import Tidings, create_app
from .config import NamespaceOptions, Settings
from .hub.events import (
    ConnectEvent,
    MessageEvent,
    PublishEvent,
    RPCEvent,
    SubscribeEvent,
)
from .protocol import (
    ClientInfo,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ProtocolError,
    Publication,
    StreamPosition,
)

__all__ = [
    "ClientInfo",
    "ConnectEvent",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "MessageEvent",
    "NamespaceOptions",
    "ProtocolError",
    "Publication",
    "PublishEvent",
    "RPCEvent",
    "Settings",
    "StreamPosition",
    "SubscribeEvent",
    "Tidings",
    "__version__",
    "create_app",
]
