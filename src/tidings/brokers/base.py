"""The broker interface: how a node publishes, keeps history and presence.

A broker is picked by URL scheme (``memory://``, ``redis://``) from the table in
``tidings.brokers``. The hub talks to it through this small interface only, and
the broker calls the hub back through ``BrokerEvents`` whenever a publication,
join or leave arrives for a channel the node has subscribed to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..protocol import ClientInfo, Publication, StreamPosition


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a channel's stream to keep."""

    size: int
    ttl: float


class BrokerEvents(Protocol):
    """What a broker delivers to the node that subscribed to a channel."""

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_resubscribed(self, positions: Mapping[str, StreamPosition | None]) -> None:
        """The broker lost its subscriptions for a while and has them again.

        ``positions`` gives each resubscribed channel's stream top as it is now
        (None: the channel has no stream). Every publication up to that top that
        reached this node at all has been delivered before this call, so a top
        past the last offset the node saw means publications were lost.
        """

    def on_control(self, message: bytes) -> None:
        """A control message from a node of the deployment, this one included.

        Control messages (``tidings.hub.cluster``) make every node act on a
        user's connections and share node stats. They are fire-and-forget: a
        node cut off from the broker when one is sent never sees it.
        """


class BrokerUnavailable(Exception):
    """The broker cannot serve a request now; a retry may succeed."""


class Broker(Protocol):
    async def start(self, events: BrokerEvents) -> None:
        """Connect, and deliver events for subscribed channels to ``events``."""

    async def close(self) -> None: ...

    @property
    def ready(self) -> bool:
        """Whether publications can be delivered right now."""

    async def subscribe(self, channel: str) -> None:
        """Start receiving this channel's events on this node."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: Mapping[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        """Publish to every node; with ``history``, assign the next offset and keep it."""

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[list[Publication], StreamPosition]:
        """Publications after ``since.offset`` (or the latest), and the stream top.

        ``limit`` < 0 means all that is kept; 0 means only the stream position.
        """

    async def remove_history(self, channel: str) -> None: ...

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None: ...

    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def publish_control(self, message: bytes) -> None:
        """Send a control message to every node of the deployment (this one too)."""

    async def add_user_connection(self, user: str, client_id: str, limit: int) -> bool:
        """Count a connection of ``user`` across nodes; False at the limit (then not counted).

        ``limit`` <= 0: no limit. The connections of a node that stopped
        (or crashed) stop counting once it is gone.
        """

    async def remove_user_connection(self, user: str, client_id: str) -> None: ...
