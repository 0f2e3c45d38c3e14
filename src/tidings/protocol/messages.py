"""Typed values of the Centrifugo client protocol v2 (see ``client.proto``).

These are plain frozen dataclasses: the codecs turn frames into them and back,
and the hub works only with them, never with JSON dicts. Payloads (``data``,
``conn_info``, ``chan_info``) stay as the raw bytes a client sent: JSON text on
a JSON connection. Keeping them raw means a publication is parsed once, on the
way in, and embedded as-is on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Method(StrEnum):
    """Command methods, named as the request field of a ``Command``."""

    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    PRESENCE = "presence"
    PRESENCE_STATS = "presence_stats"
    HISTORY = "history"
    PING = "ping"
    SEND = "send"
    RPC = "rpc"
    REFRESH = "refresh"
    SUB_REFRESH = "sub_refresh"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is, as shown to others in presence, join/leave and publications."""

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A place in a channel stream: the offset of the last publication, and the epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    data: bytes
    offset: int = 0
    info: ClientInfo | None = None
    tags: Mapping[str, str] | None = None
    # Unix time in milliseconds; 0 when unknown.
    time: int = 0


# --- requests ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    channel: str
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = 0
    data: bytes | None = None
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    token: str = ""
    data: bytes | None = None
    subs: Mapping[str, SubscribeRequest] = field(default_factory=dict)
    name: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    channel: str


@dataclass(frozen=True, slots=True)
class PublishRequest:
    channel: str
    data: bytes


@dataclass(frozen=True, slots=True)
class PresenceRequest:
    channel: str


@dataclass(frozen=True, slots=True)
class PresenceStatsRequest:
    channel: str


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    channel: str
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class PingRequest:
    pass


@dataclass(frozen=True, slots=True)
class SendRequest:
    data: bytes


@dataclass(frozen=True, slots=True)
class RPCRequest:
    method: str = ""
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    token: str


@dataclass(frozen=True, slots=True)
class SubRefreshRequest:
    channel: str
    token: str


Request = (
    ConnectRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | PublishRequest
    | PresenceRequest
    | PresenceStatsRequest
    | HistoryRequest
    | PingRequest
    | SendRequest
    | RPCRequest
    | RefreshRequest
    | SubRefreshRequest
)


@dataclass(frozen=True, slots=True)
class Command:
    """One client command. ``request`` is None for an empty command: a pong."""

    id: int
    method: Method | None
    request: Request | None


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A command that was decoded far enough to answer it with an error reply."""

    id: int
    code: int
    message: str


# --- results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    expires: bool = False
    ttl: int = 0
    recoverable: bool = False
    epoch: str = ""
    publications: tuple[Publication, ...] = ()
    recovered: bool = False
    offset: int = 0
    positioned: bool = False
    data: bytes | None = None
    was_recovering: bool = False


@dataclass(frozen=True, slots=True)
class ConnectResult:
    client: str
    version: str
    expires: bool = False
    ttl: int = 0
    data: bytes | None = None
    subs: Mapping[str, SubscribeResult] = field(default_factory=dict)
    ping: int = 0
    pong: bool = False
    session: str = ""
    node: str = ""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    client: str
    version: str
    expires: bool = False
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class SubRefreshResult:
    expires: bool = False
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class EmptyResult:
    """The result of unsubscribe, publish and ping: nothing but success."""


@dataclass(frozen=True, slots=True)
class PresenceResult:
    presence: Mapping[str, ClientInfo]


@dataclass(frozen=True, slots=True)
class PresenceStatsResult:
    num_clients: int
    num_users: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: tuple[Publication, ...]
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class RPCResult:
    data: bytes | None = None


Result = (
    ConnectResult
    | SubscribeResult
    | EmptyResult
    | PresenceResult
    | PresenceStatsResult
    | HistoryResult
    | RPCResult
    | RefreshResult
    | SubRefreshResult
)


# --- pushes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinPush:
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class LeavePush:
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class UnsubscribePush:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SubscribePush:
    recoverable: bool = False
    epoch: str = ""
    offset: int = 0
    positioned: bool = False
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class MessagePush:
    data: bytes


@dataclass(frozen=True, slots=True)
class DisconnectPush:
    code: int
    reason: str


PushBody = (
    Publication
    | JoinPush
    | LeavePush
    | UnsubscribePush
    | SubscribePush
    | MessagePush
    | DisconnectPush
)
