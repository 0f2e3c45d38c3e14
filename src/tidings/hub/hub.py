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
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .. import __version__
from ..auth.tokens import ApiKeyring, TokenVerifier
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
    UnsubscribeCode,
)
from ..protocol.formats import JSON, PROTOBUF, WireFormat
from ..protocol.messages import (
    HistoryResult,
    JoinPush,
    LeavePush,
    MessagePush,
    UnsubscribePush,
)
from .channels import Channel, parse_channel
from .cluster import Cluster, DisconnectUser, SendMessage, SubscribeUser, UnsubscribeUser
from .events import Handlers
from .join_leave import JoinLeaveBatcher, JoinOrLeave
from .metrics import Metrics
from .session import MAX_COALESCED_FRAME, Frame, Session, Subscription, Transport

log = logging.getLogger("tidings.hub")

# Parsed channels kept (about 200 bytes each); invalid names are never kept.
CHANNEL_CACHE_SIZE = 16_384

# Given an ASGI scope, drops that connection at once; installed by the server.
AbortHook = Callable[[MutableMapping[str, Any]], bool]

# Whether a user (first argument) is a member of a room (its id); installed by
# the accounts store. Asked once per client command on a room:<id> channel.
MembershipCheck = Callable[[str, str], Awaitable[bool]]


class Hub:
    """Sessions, local channel membership and fan-out for one node."""

    version = __version__

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        handlers: Handlers | None = None,
        *,
        api_keys: ApiKeyring | None = None,
    ) -> None:
        if not settings.secret:
            raise ValueError("settings.secret is required (see Settings.with_generated_keys)")
        self.settings = settings
        self.broker = broker
        self.handlers = handlers or Handlers()
        # Channels resolved by name: the settings never change, and publishing
        # to many channels would otherwise parse each name at every publication.
        self._channels_by_name: dict[str, Channel] = {}
        self.verifier = TokenVerifier.from_settings(settings)
        # Server API keys, as SHA-256 digests only.
        self.api_keys = api_keys if api_keys is not None else ApiKeyring.from_settings(settings)
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
        # The last stream position seen of each channel subscribed upstream, to
        # find publications the broker lost (see on_publication).
        self._positions: dict[str, StreamPosition] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = False
        self.abort_hook: AbortHook | None = None
        # Without it (no store), every room:<id> channel is refused.
        self.room_membership: MembershipCheck | None = None
        self.metrics = Metrics()
        # Every node's side: control messages, heartbeats, the live nodes.
        self.cluster = Cluster(self)
        self.join_leave = JoinLeaveBatcher(self._fan_out_join_leave)
        # Per user: the lock that keeps counting and uncounting its connections
        # in the broker in order, and how many operations hold or wait for it.
        self._user_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self)
        await self.cluster.start()
        self.running = True

    async def stop(self) -> None:
        """Close every connection with 3001 (shutdown: reconnect), then the broker."""
        await self.close_sessions()
        if self._tasks:  # uncounting the closed connections, among others
            await asyncio.wait(list(self._tasks), timeout=self.settings.shutdown_timeout)
        await self.cluster.stop()
        await self.broker.close()
        self.join_leave.close()

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
        if session.user and self.settings.max_connections_per_user > 0:
            self._spawn(self._count_connection(session))

    def detach(self, session: Session) -> None:
        """Forget a closing session at once, so nothing more is fanned out to it."""
        self._open.discard(session)
        if self.sessions.pop(session.client_id, None) is not None:
            user_sessions = self.users.get(session.user)
            if user_sessions is not None:
                user_sessions.discard(session)
                if not user_sessions:
                    del self.users[session.user]
            if session.user and self.settings.max_connections_per_user > 0:
                self._spawn(self._uncount_connection(session.user, session.client_id))
        for name in session.subscriptions:
            subscribers = self.channels.get(name)
            if subscribers is not None:
                subscribers.discard(session)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(_run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- connections per user, across nodes -------------------------------
    #
    # The session checks max_connections_per_user against this node's
    # connections before it attaches. The broker counts them on every node
    # (Redis: a Lua script, atomic across nodes): a connection over the limit
    # there is closed with 3504 right after its connect reply.

    async def _user_op(self, user: str, work: Awaitable[None]) -> None:
        """Run ``work`` after the earlier broker operations on ``user``'s count."""
        entry = self._user_locks.get(user)
        if entry is None:
            entry = self._user_locks[user] = (asyncio.Lock(), [0])
        lock, holders = entry
        holders[0] += 1
        try:
            async with lock:
                await work
        finally:
            holders[0] -= 1
            if not holders[0]:
                del self._user_locks[user]

    async def _count_connection(self, session: Session) -> None:
        await self._user_op(session.user, self._count(session))

    async def _count(self, session: Session) -> None:
        cap = self.settings.max_connections_per_user
        try:
            added = await self.broker.add_user_connection(session.user, session.client_id, cap)
        except BrokerUnavailable as e:
            # Let it in: the broker counts it once it is back.
            log.debug("cannot count a connection of %r: %s", session.user, e)
            return
        if self.sessions.get(session.client_id) is not session:
            await self._uncount(session.user, session.client_id)
        elif not added:
            self.metrics.limits["connections_per_user"] += 1
            session.disconnect(Disconnect.of(DisconnectCode.CONNECTION_LIMIT))

    async def _uncount_connection(self, user: str, client_id: str) -> None:
        await self._user_op(user, self._uncount(user, client_id))

    async def _uncount(self, user: str, client_id: str) -> None:
        try:
            await self.broker.remove_user_connection(user, client_id)
        except BrokerUnavailable as e:
            # The broker forgets it by itself (Redis: when the entry expires).
            log.debug("cannot uncount a connection of %r: %s", user, e)

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
            if self.channel(channel).options.history_enabled:
                # Where the stream is now that publications flow in: a gap later
                # is measured from here (on_resubscribed).
                _, position = await self.broker.history(channel, since=None, limit=0)
                self._positions.setdefault(channel, position)
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
            self._positions.pop(channel, None)
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
        if subscribers is None:
            return
        if publication.offset and self._gap(channel, publication.offset, epoch):
            self._insufficient_state(channel)
        if not subscribers:
            return
        self.join_leave.send_waiting(channel)  # someone's join before their message
        started = time.perf_counter()
        offset = publication.offset
        # Encode once per wire format in use, not once per subscriber.
        text: bytes | None = None
        binary: bytes | None = None
        text_size = binary_size = 0
        # A copy: a delivery may disconnect a slow subscriber, which edits the set.
        targets = tuple(subscribers)
        # Counted here, once, for every delivery written at once.
        text_sent = binary_sent = 0
        for session in targets:
            if session.binary:
                if binary is None:
                    binary = PROTOBUF.encode_push(channel, publication)
                    binary_size = len(binary)
                binary_sent += session.deliver(channel, binary, binary_size, offset)
            else:
                if text is None:
                    text = JSON.encode_push(channel, publication)
                    text_size = len(text)
                text_sent += session.deliver(channel, text, text_size, offset)
        metrics = self.metrics
        metrics.publications_out += len(targets)
        metrics.messages_out += text_sent + binary_sent
        metrics.bytes_out += text_sent * text_size + binary_sent * binary_size
        metrics.observe_fanout(time.perf_counter() - started)

    def _fan_out_join_leave(self, channel: str, events: list[JoinOrLeave]) -> None:
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        # Per format: the events encoded once, in frames of several pushes.
        frames: dict[WireFormat, list[Frame]] = {}
        metrics = self.metrics
        for session in tuple(subscribers):
            if not session.wants_join_leave(channel):
                continue
            fmt = session.format
            encoded = frames.get(fmt)
            if encoded is None:
                encoded = frames[fmt] = _joined(fmt, [fmt.encode_push(channel, e) for e in events])
            for frame in encoded:
                if session.deliver(channel, frame, len(frame)):
                    metrics.messages_out += 1
                    metrics.bytes_out += len(frame)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        if channel in self.channels:
            self.join_leave.add(channel, JoinPush(info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self.channels:
            self.join_leave.add(channel, LeavePush(info))

    def on_control(self, message: bytes) -> None:
        self.cluster.on_control(message)

    # --- gaps: publications the broker lost -------------------------------
    #
    # The rule: a channel with history has a gap on this node when a publication
    # arrives whose offset is past the last one seen + 1, or whose epoch differs
    # from the last one seen (the stream was lost and began again); and, after the
    # broker lost its subscriptions for a while and has them again, when the
    # stream's top is past the last offset seen, or its epoch differs, or it has
    # no stream any more (on_resubscribed). "The last one seen" starts at the
    # stream top read when the node subscribes upstream. An offset at or below
    # the last one seen is no gap (it was in flight while that top was read).
    #
    # On a gap, every recoverable local subscriber of the channel gets an
    # unsubscribe push with code 2500 (insufficient state): the SDKs subscribe
    # again at once with recover=true from their last offset, and recovery fills
    # the gap from history or answers recovered: false when the epoch changed.
    # The memory broker never loses a publication, so this never fires there.

    def _gap(self, channel: str, offset: int, epoch: str) -> bool:
        last = self._positions.get(channel)
        if last is None or last.epoch != epoch or offset > last.offset:
            self._positions[channel] = StreamPosition(offset, epoch)
        return last is not None and (last.epoch != epoch or offset > last.offset + 1)

    def on_resubscribed(self, positions: Mapping[str, StreamPosition | None]) -> None:
        for channel, position in positions.items():
            last = self._positions.get(channel)
            if last is None:
                continue  # no history, or nothing known to compare with
            if position is None or position.epoch != last.epoch or position.offset > last.offset:
                log.warning("channel %s may have lost publications: recovering", channel)
                if position is None:
                    del self._positions[channel]
                else:
                    self._positions[channel] = position
                self._insufficient_state(channel)

    def _insufficient_state(self, channel: str) -> None:
        """Make the recoverable subscribers of ``channel`` resubscribe and recover (2500).

        A subscription whose subscribe reply is still being made is left alone:
        the SDKs ignore an unsubscribe push before that reply, and the reply's
        history is read after this node joined the channel's fan-out.
        """
        subscribers = self.channels.get(channel)
        if not subscribers:
            return
        push = UnsubscribePush(int(UnsubscribeCode.INSUFFICIENT_STATE), "insufficient state")
        for session in tuple(subscribers):
            sub = session.subscriptions.get(channel)
            if sub is None or not sub.recoverable or session.is_subscribing(channel):
                continue
            if sub.server_side:
                # The SDKs drop a server-side subscription on an unsubscribe push;
                # a reconnect (3010) recovers it through connect instead.
                session.disconnect(Disconnect.of(DisconnectCode.INSUFFICIENT_STATE))
                continue
            del session.subscriptions[channel]
            subscribers.discard(session)
            session.send_push(channel, push)
            task = asyncio.get_running_loop().create_task(self._left(session, sub))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _left(self, session: Session, sub: Subscription) -> None:
        """Presence, leave event and upstream, after a 2500 unless the client is back."""
        if sub.channel.name in session.subscriptions:
            return
        try:
            await self.leave(session, sub)
        except Exception:
            log.exception("leaving %s failed for client %s", sub.channel.name, session.client_id)

    # --- operations shared by clients, the server API and Python ----------

    def channel(self, name: str) -> Channel:
        """``name`` resolved to its namespace options, or ``ProtocolError`` 107/102."""
        channel = self._channels_by_name.get(name)
        if channel is None:
            channel = parse_channel(name, self.settings)
            if len(self._channels_by_name) >= CHANNEL_CACHE_SIZE:
                self._channels_by_name.clear()  # simpler than LRU, and as good for round-robin
            self._channels_by_name[name] = channel
        return channel

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

    # Operations on a user's connections act on every node: on this one at
    # once, on the others through a control message (see cluster.py). A
    # message naming a client found here is not sent on. The async ones raise
    # BrokerUnavailable (after acting here) when the other nodes cannot be
    # told; the sync ones tell them in the background and log a failure.

    def disconnect_user(self, user: str, reason: Disconnect, client_id: str = "") -> int:
        """Close ``user``'s connections (or one) on every node; returns how many were here."""
        count = self.disconnect_here(user, reason, client_id)
        if not (client_id and count):
            self.cluster.send_soon(DisconnectUser(user, client_id, reason.code, reason.reason))
        return count

    async def adisconnect_user(self, user: str, reason: Disconnect, client_id: str = "") -> int:
        """As ``disconnect_user``, once every node has been told."""
        count = self.disconnect_here(user, reason, client_id)
        if not (client_id and count):
            await self.cluster.send(DisconnectUser(user, client_id, reason.code, reason.reason))
        return count

    def disconnect_here(self, user: str, reason: Disconnect, client_id: str = "") -> int:
        sessions = self._targets(user, client_id)
        for session in sessions:
            session.disconnect(reason)
        return len(sessions)

    def _targets(self, user: str, client_id: str) -> list[Session]:
        return [s for s in self.user_sessions(user) if not client_id or s.client_id == client_id]

    async def unsubscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Unsubscribe a user's connections from a channel on every node, telling each client."""
        count = await self.unsubscribe_here(user, channel, client_id)
        if not (client_id and count):
            await self.cluster.send(UnsubscribeUser(user, channel, client_id))

    async def unsubscribe_here(self, user: str, channel: str, client_id: str = "") -> int:
        sessions = self._targets(user, client_id)
        for session in sessions:
            await session.server_unsubscribe(channel)
        return len(sessions)

    async def subscribe_user(self, user: str, channel: str, client_id: str = "") -> None:
        """Subscribe a user's connections to a channel on the server side, on every node."""
        self.channel(channel)  # an invalid channel fails here, before any node acts
        count = await self.subscribe_here(user, channel, client_id)
        if not (client_id and count):
            await self.cluster.send(SubscribeUser(user, channel, client_id))

    async def subscribe_here(self, user: str, channel: str, client_id: str = "") -> int:
        parsed = self.channel(channel)
        sessions = self._targets(user, client_id)
        for session in sessions:
            await session.server_subscribe(parsed)
        return len(sessions)

    def send_message(self, user: str, data: bytes) -> int:
        """Push a ``message`` to ``user``'s connections on every node; returns how many here."""
        self.cluster.send_soon(SendMessage(user, data))
        return self.send_here(user, data)

    async def asend_message(self, user: str, data: bytes) -> int:
        """As ``send_message``, once every node has been told."""
        count = self.send_here(user, data)
        await self.cluster.send(SendMessage(user, data))
        return count

    def send_here(self, user: str, data: bytes) -> int:
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


async def _run(work: Awaitable[None]) -> None:
    """Await ``work`` in a background task; log what it raised."""
    try:
        await work
    except Exception:
        log.exception("a background task of the hub failed")


def _joined(fmt: WireFormat, messages: list[bytes]) -> list[Frame]:
    """Messages joined into as few frames as the coalescing limit allows."""
    frames: list[Frame] = []
    group: list[bytes] = []
    size = 0
    for message in messages:
        if group and size + len(message) > MAX_COALESCED_FRAME:
            frames.append(fmt.separator.join(group))
            group, size = [], 0
        group.append(message)
        size += len(message) + len(fmt.separator)
    if group:
        frames.append(fmt.separator.join(group))
    return frames
