"""What application handlers receive, and may change, before Tidings acts.

A handler accepts a request by returning, rejects it by raising
``ProtocolError`` (an error reply) or ``Disconnect`` (closes the connection),
and changes it by assigning to the event's fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ConnectEvent:
    """A client asks to connect. ``user`` comes from its token (empty if none)."""

    client_id: str
    user: str
    # The JSON the client sent with connect, decoded; None if it sent none.
    data: Any
    name: str
    version: str
    headers: Mapping[str, str]
    # Set to change what others see about this connection in presence and publications.
    info: Any = None
    # Channels to subscribe the connection to on the server side.
    channels: list[str] = field(default_factory=list)
    # JSON to return to the client in the connect reply.
    reply_data: Any = None


@dataclass(slots=True)
class SubscribeEvent:
    client_id: str
    user: str
    channel: str
    data: Any
    # Shown to others as this subscriber's channel info (presence, join/leave, publications).
    chan_info: Any = None
    reply_data: Any = None


@dataclass(slots=True)
class PublishEvent:
    client_id: str
    user: str
    channel: str
    # The publication's data, decoded; assign to change what is published.
    data: Any


@dataclass(slots=True)
class RPCEvent:
    client_id: str
    user: str
    method: str
    data: Any


@dataclass(slots=True)
class MessageEvent:
    """A client sent an asynchronous message with ``send`` (no reply expected)."""

    client_id: str
    user: str
    data: Any


ConnectHandler = Callable[[ConnectEvent], Awaitable[None]]
SubscribeHandler = Callable[[SubscribeEvent], Awaitable[None]]
PublishHandler = Callable[[PublishEvent], Awaitable[None]]
RPCHandler = Callable[[RPCEvent], Awaitable[Any]]
MessageHandler = Callable[[MessageEvent], Awaitable[None]]


@dataclass(slots=True)
class Handlers:
    """The application's hooks; each is optional."""

    connect: ConnectHandler | None = None
    subscribe: SubscribeHandler | None = None
    publish: PublishHandler | None = None
    message: MessageHandler | None = None
    rpc: dict[str, RPCHandler] = field(default_factory=dict)
