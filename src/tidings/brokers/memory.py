"""The in-memory broker: one node, no dependencies.

History is a bounded deque per channel with a time limit per publication. Each
stream gets a random epoch when it is created; if a stream is dropped (its
history expired and nothing was published for ``stream_idle_ttl``), a later
stream of the same name gets a new epoch, so a client recovering from an old
position learns ``recovered: false`` instead of silently missing messages.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..protocol import ClientInfo, Publication, StreamPosition
from .base import BrokerEvents, HistoryOptions

# Where a publication without history stands (immutable, so shared).
NO_POSITION = StreamPosition(0, "")

# A stream with no kept publication is dropped after this long without a publish.
STREAM_IDLE_TTL = 24 * 3600.0


@dataclass(slots=True)
class _Stream:
    epoch: str
    top: int = 0
    last_publish: float = 0.0
    # (publication, monotonic expiry time), oldest first.
    entries: deque[tuple[Publication, float]] = field(default_factory=deque)

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][1] <= now:
            self.entries.popleft()


def _new_epoch() -> str:
    return secrets.token_hex(4)


class MemoryBroker:
    """A broker for one process. Everything lives in this node's memory."""

    def __init__(self, url: str = "memory://") -> None:
        self._events: BrokerEvents | None = None
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._subscribed: set[str] = set()
        self._publishes_since_sweep = 0
        # user -> client ids of that user's counted connections.
        self._user_connections: dict[str, set[str]] = {}

    async def start(self, events: BrokerEvents) -> None:
        self._events = events

    async def close(self) -> None:
        self._events = None

    @property
    def ready(self) -> bool:
        return self._events is not None

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(epoch=_new_epoch())
        return stream

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: Mapping[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        if history is not None and history.size > 0 and history.ttl > 0:
            now = time.monotonic()
            stream = self._stream(channel)
            stream.top += 1
            stream.last_publish = now
            publication = Publication(data, stream.top, info, tags)
            stream.entries.append((publication, now + history.ttl))
            while len(stream.entries) > history.size:
                stream.entries.popleft()
            stream.expire(now)
            position = StreamPosition(stream.top, stream.epoch)
            self._maybe_sweep(now)
        else:
            publication = Publication(data, 0, info, tags)
            position = NO_POSITION
        if self._events is not None and channel in self._subscribed:
            self._events.on_publication(channel, publication, position.epoch)
        return position

    def _maybe_sweep(self, now: float) -> None:
        """Drop idle empty streams now and then, so names used once do not pile up."""
        self._publishes_since_sweep += 1
        if self._publishes_since_sweep < 10_000:
            return
        self._publishes_since_sweep = 0
        for name in list(self._streams):
            stream = self._streams[name]
            stream.expire(now)
            if not stream.entries and now - stream.last_publish > STREAM_IDLE_TTL:
                del self._streams[name]

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        if self._events is not None and channel in self._subscribed:
            self._events.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if self._events is not None and channel in self._subscribed:
            self._events.on_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[list[Publication], StreamPosition]:
        stream = self._stream(channel)
        stream.expire(time.monotonic())
        position = StreamPosition(stream.top, stream.epoch)
        if limit == 0:
            return [], position
        publications = [p for p, _ in stream.entries]
        if since is not None:
            publications = [p for p in publications if p.offset > since.offset]
        if reverse:
            publications.reverse()
        if limit > 0:
            publications = publications[:limit]
        return publications, position

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.entries.clear()

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        self._presence.setdefault(channel, {})[client_id] = info

    async def remove_presence(self, channel: str, client_id: str) -> None:
        clients = self._presence.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return dict(self._presence.get(channel, {}))

    async def publish_control(self, message: bytes) -> None:
        """One node: the control message comes straight back to it."""
        if self._events is not None:
            self._events.on_control(message)

    async def add_user_connection(self, user: str, client_id: str, limit: int) -> bool:
        clients = self._user_connections.setdefault(user, set())
        if 0 < limit <= len(clients - {client_id}):
            return False
        clients.add(client_id)
        return True

    async def remove_user_connection(self, user: str, client_id: str) -> None:
        clients = self._user_connections.get(user)
        if clients is not None:
            clients.discard(client_id)
            if not clients:
                del self._user_connections[user]
