"""The hub: sessions, channels, permissions and fan-out for one node."""

from .channels import Channel, parse_channel, personal_channel
from .events import (
    ConnectEvent,
    Handlers,
    MessageEvent,
    PublishEvent,
    RPCEvent,
    SubscribeEvent,
)
from .hub import AbortHook, Hub
from .session import Session

__all__ = [
    "AbortHook",
    "Channel",
    "ConnectEvent",
    "Handlers",
    "Hub",
    "MessageEvent",
    "PublishEvent",
    "RPCEvent",
    "Session",
    "SubscribeEvent",
    "parse_channel",
    "personal_channel",
]
