"""The hub: every session of this node, the channels they are in, and the fan-out.

The broker calls ``on_publication`` (and ``on_join``/``on_leave``) once per
event for a channel this node is subscribed to. The hub encodes that push
once and hands the same frame to every local subscriber; each subscriber's
writer sends it when it can. Publishers never wait on subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from .. import __version__
from ..auth import TokenVerifier
from ..brokers import Broker, BrokerUnavailable, HistoryOptions
from ..config import Settings
from ..protocol import (
    ClientInfo,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ProtocolError,
    Publication,
    StreamPosition,
)
from ..protocol.formats import JSON, PROTOBUF, WireFormat
from ..protocol.messages import (
    HistoryResult,
    JoinPush,
    LeavePush,
    MessagePush,
)
from .channels import Channel, parse_channel
from .events import Handlers
from .metrics import Metrics
from .session import Frame, Session, Subscription, Transport

log = logging.getLogger("tidings.hub")

# Given an ASGI scope, drops that connection at once; installed by the server.
AbortHook = Callable[[MutableMapping[str, Any]], bool]


class Hub:
    """Sessions, local channel membership and fan-out for one node."""

    version = __version__

    def __init__(
        self, settings: Settings, broker: Broker, handlers: Handlers | None = None
    ) -> None:
        if not settings.secret:
            raise ValueError("settings.secret is required (see Settings.with_generated_keys)")
        self.settings = settings
        self.broker = broker
        self.handlers = handlers or Handlers()
        self.verifier = TokenVerifier(settings.secret, settings.jwt_algorithms)
        self.node_name = settings.node_name or socket.gethostname()
        self.node_uid = str(uuid.uuid4())
        self.started_at = time.time()
        # Every open session, connected or not; connected ones by id and user.
        self._open: set[Session] = set()
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[Session]] = {}
        # Local subscribers of each channel.
        self.channels: dict[str, set[Session]] = {}
        # Channels whose upstream (broker) subscription is being set up.
        self._upstream: dict[str, asyncio.Future[bool]] = {}
        self.running = False
        self.abort_hook: AbortHook | None = None
        self.metrics = Metrics()

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self)
        self.running = True

    async def stop(self) -> None:
        """Close every connection with 3001 (shutdown: reconnect), then the broker."""
        await self.close_sessions()
        await self.broker.close()

    async def close_sessions(self) -> None:
        """Stop taking connections and close every open one with 3001 (reconnect elsewhere)."""
        self.running = False
        sessions = list(self._open)
        for session in sessions:
            session.disconnect(Disconnect.of(DisconnectCode.SHUTDOWN))
        if sessions:
            await asyncio.wait(
                [asyncio.ensure_future(s.closed()) for s in sessions],
                timeout=self.settings.shutdown_timeout,
            )

    @property
    def ready(self) -> bool:
        return self.running and self.broker.ready

    # --- sessions ---------------------------------------------------------

    def open_session(
        self,
        transport: Transport,
        headers: Mapping[str, str] | None = None,
        wire_format: WireFormat = JSON,
    ) -> Session:
        session = Session(self, transport, headers=headers, wire_format=wire_format)
        self._open.add(session)
        self.metrics.connections_accepted += 1
        return session

    def attach(self, session: Session) -> None:
        """Register a session that has just connected."""
        self.sessions[session.client_id] = session
        self.users.setdefault(session.user, set()).add(session)

    def detach(self, session: Session) -> None:
        """Forget a closing session at once, so nothing more is fanned out to it."""
        self._open.discard(session)
        if self.sessions.pop(session.client_id, None) is not None:
            user_sessions = self.users.get(session.user)
            if user_sessions is not None:
                user_sessions.discard(session)
                if not user_sessions:
                    del self.users[session.user]
        for name in session.subscriptions:
            subscribers = self.channels.get(name)
            if subscribers is not None:
                subscribers.discard(session)

    # --- channel membership -----------------------------------------------

    async def add_subscriber(self, channel: str, session: Session) -> None:
        """Add a local subscriber; the first one subscribes this node upstream."""
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.add(session)
            pending = self._upstream.get(channel)
            if pending is not None and not await asyncio.shield(pending):
                raise BrokerUnavailable(f"cannot subscribe to {channel}")
            return
        self.channels[channel] = {session}
        pending = self._upstream[channel] = asyncio.get_running_loop().create_future()
        ok = False
        try:
            await self.broker.subscribe(channel)
            ok = True
        finally:
            del self._upstream[channel]
            pending.set_result(ok)

    async def remove_subscriber(self, channel: str, session: Session) -> None:
        subscribers = self.channels.get(channel)
        if subscribers is None:
            return
        subscribers.discard(session)
        if not subscribers and channel not in self._upstream:
            del self.channels[channel]
            await self.broker.unsubscribe(channel)

    async def leave(self, session: Session, sub: Subscription) -> None:
        """Undo a subscription: membership, presence, and a leave event."""
        name = sub.channel.name
        await self.remove_subscriber(name, session)
        options = sub.channel.options
        if options.presence:
            await self.broker.remove_presence(name, session.client_id)
        if options.join_leave:
            await self.broker.publish_leave(name, sub.info)

    async def leave_all(self, session: Session, subscriptions: list[Subscription]) -> None:
        for sub in subscriptions:
            try:
                await self.leave(session, sub)
            except Exception:
                log.exception(
                    "leaving %s failed for client %s", sub.channel.name, session.client_id
                )

    # --- broker events: the fan-out ---------------------------------------

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        started = time.perf_counter()
        offset = publication.offset
        # Encode once per wire format in use, not once per subscriber.
        text: str | None = None
        binary: bytes | None = None
        text_size = binary_size = 0
        # A copy: a delivery may disconnect a slow subscriber, which edits the set.
        targets = tuple(subscribers)
        for session in targets:
            if session.binary:
                if binary is None:
                    binary = PROTOBUF.encode_push(channel, publication)
                    binary_size = len(binary)
                session.deliver(channel, binary, binary_size, offset)
            else:
                if text is None:
                    encoded = JSON.encode_push(channel, publication)
                    text, text_size = encoded.decode(), len(encoded)
                session.deliver(channel, text, text_size, offset)
        metrics = self.metrics
        metrics.publications_out += len(targets)
        metrics.observe_fanout(time.perf_counter() - started)

    def _fan_out_join_leave(self, channel: str, body: JoinPush | LeavePush) -> None:
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        frames: dict[WireFormat, tuple[Frame, int]] = {}
        for session in tuple(subscribers):
            if not session.wants_join_leave(channel):
                continue
            fmt = session.format
            if fmt not in frames:
                encoded = fmt.encode_push(channel, body)
                frames[fmt] = (encoded if fmt.binary else encoded.decode(), len(encoded))
            frame, size = frames[fmt]
            session.deliver(channel, frame, size)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._fan_out_join_leave(channel, JoinPush(info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._fan_out_join_leave(channel, LeavePush(info))

    # --- operations shared by clients, the server API and Python ----------

    def channel(self, name: str) -> Channel:
        return parse_channel(name, self.settings)

    async def publish(
        self,
        channel: Channel,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: Mapping[str, str] | None = None,
        skip_history: bool = False,
    ) -> StreamPosition:
        options = channel.options
        history = (
            HistoryOptions(options.history_size, options.history_ttl)
            if options.history_enabled and not skip_history
            else None
        )
        self.metrics.publications_in += 1
        return await self.broker.publish(channel.name, data, info=info, tags=tags, history=history)

    async def history(
        self,
        channel: Channel,
        *,
        limit: int = 0,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """Read a channel's history. ``limit`` 0 gives only the stream position, < 0 all."""
        options = channel.options
        if not options.history_enabled:
            raise ProtocolError.of(ErrorCode.NOT_AVAILABLE, "history is off for this channel")
        capped = options.history_size if limit < 0 else min(limit, options.history_size)
        publications, position = await self.broker.history(
            channel.name, since=since, limit=capped, reverse=reverse
        )
        if since is not None and since.epoch and since.epoch != position.epoch:
            raise ProtocolError.of(ErrorCode.UNRECOVERABLE_POSITION)
        return HistoryResult(tuple(publications), position.epoch, position.offset)

    async def presence(self, channel: Channel) -> dict[str, ClientInfo]:
        if not channel.options.presence:
            raise ProtocolError.of(ErrorCode.NOT_AVAILABLE, "presence is off for this channel")
        return await self.broker.presence(channel.name)

    def user_sessions(self, user: str) -> list[Session]:
        return list(self.users.get(user, ()))

    def disconnect_user(self, user: str, reason: Disconnect, client_id: str = "") -> int:
        sessions = self._targets(user, client_id)
        for session in sessions:
            session.disconnect(reason)
        return len(sessions)

    def _targets(self, user: str, client_id: str) -> list[Session]:
        return [s for s in self.user_sessions(user) if not client_id or s.client_id == client_id]

    async def unsubscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Unsubscribe a user's connections from a channel, telling each client."""
        for session in self._targets(user, client_id):
            await session.server_unsubscribe(channel)

    async def subscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Subscribe a user's connections to a channel on the server side."""
        parsed = self.channel(channel)
        for session in self._targets(user, client_id):
            await session.server_subscribe(parsed)

    def send_message(self, user: str, data: bytes) -> int:
        """Push an asynchronous message to every connection of ``user``."""
        sessions = self.user_sessions(user)
        for session in sessions:
            session.send_push("", MessagePush(data))
        return len(sessions)

    def channel_counts(self) -> dict[str, int]:
        return {name: len(subs) for name, subs in self.channels.items() if subs}

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.node_name,
            "version": self.version,
            "uptime": int(time.time() - self.started_at),
            "num_clients": len(self.sessions),
            "num_users": len(self.users),
            "num_channels": len(self.channels),
            "num_subs": sum(len(s) for s in self.channels.values()),
        }
