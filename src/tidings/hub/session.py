"""One client connection: its protocol state, its commands and its writer.

Order of work for each frame: decode, act, flush. Replies and pushes go into
one outgoing queue, bounded in bytes; a writer task drains it, joining
everything queued into as few frames as possible. Nothing here blocks a
publisher: ``deliver`` only appends to the queue, and a client that lets its
queue overflow is closed with 3008 (slow).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from ..auth import InvalidToken, TokenExpired
from ..auth.tokens import KeysUnavailable, SubscriptionClaims
from ..brokers import BrokerUnavailable
from ..config import ROOM_NAMESPACE
from ..protocol import (
    ClientInfo,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ProtocolError,
    StreamPosition,
    UnsubscribeCode,
)
from ..protocol.formats import JSON, WireFormat
from ..protocol.messages import (
    BadCommand,
    Command,
    ConnectRequest,
    ConnectResult,
    DisconnectPush,
    EmptyResult,
    HistoryRequest,
    HistoryResult,
    Method,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PushBody,
    RefreshRequest,
    RefreshResult,
    Result,
    RPCRequest,
    RPCResult,
    SendRequest,
    SubRefreshRequest,
    SubRefreshResult,
    SubscribePush,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribePush,
    UnsubscribeRequest,
)
from .channels import Channel
from .events import ConnectEvent, MessageEvent, PublishEvent, RPCEvent, SubscribeEvent
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("tidings.session")

# A coalesced frame stops growing past this size, so one frame never holds a
# client's whole backlog (clients read a frame in one piece).
MAX_COALESCED_FRAME = 64 * 1024
# A backlog is joined into pieces of about this size as it grows (see
# Session._compact_tail), leaving room for the writer to add a little.
COMPACTED_SIZE = MAX_COALESCED_FRAME - 4096

# What the queue holds: text frames (JSON) or binary frames (Protobuf).
Frame = bytes

# Closes after which nothing queued is worth sending: the peer is gone, or
# it is too slow to take what is queued.
_NOTHING_MORE_TO_SEND = frozenset({DisconnectCode.CONNECTION_CLOSED, DisconnectCode.SLOW})

# Seconds a closing connection gets to take its close frame before it is dropped.
CLOSE_TIMEOUT = 5.0


class Transport(Protocol):
    """The I/O a session needs from its WebSocket."""

    async def send(self, frame: Frame) -> None:
        """Send one WebSocket message: text for a str, binary for bytes."""

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""


@runtime_checkable
class DirectWriter(Protocol):
    """A transport that writes a whole message at once while its socket keeps up."""

    def write_now(self, payload: bytes) -> bool:
        """Write one message at once, if the socket keeps up; whether it did."""


class State(Enum):
    CONNECTING = 1
    CONNECTED = 2
    CLOSED = 3


@dataclass(slots=True)
class Subscription:
    channel: Channel
    info: ClientInfo
    recoverable: bool
    positioned: bool
    join_leave: bool
    expires_at: float | None = None
    # Made by the server (token channels, the server API), not by a subscribe
    # command: the SDKs can only get these back by reconnecting.
    server_side: bool = False


class Session:
    """The server side of one connection."""

    # Slots: thousands of these live at once, mostly idle. The fields that every
    # delivery reads come first, in one or two cache lines: a fan-out touches
    # thousands of sessions in a row, and most of its time goes to memory.
    __slots__ = (  # noqa: RUF023
        "_direct",
        "_pending",
        "_queue",
        "_writer",
        "_deadline",
        "state",
        "binary",
        "_awaiting_pong",
        "_bucket",
        "_closer",
        "_drained",
        "_loop",
        "_loose",
        "_loose_bytes",
        "_queued_bytes",
        "_ready",
        "_refused",
        "_reply_bytes",
        "_separator",
        "_timers",
        "client_id",
        "conn_info",
        "expires_at",
        "format",
        "headers",
        "hub",
        "settings",
        "subscriptions",
        "transport",
        "user",
    )

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        *,
        headers: Mapping[str, str] | None = None,
        wire_format: WireFormat = JSON,
    ) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.transport = transport
        self.headers = headers or {}
        self.format = wire_format
        # Checked per delivery by the fan-out, which encodes once per format.
        self.binary = wire_format.binary
        self._separator = wire_format.separator
        # A transport that can write a message synchronously (the direct path).
        self._direct: DirectWriter | None = (
            transport if isinstance(transport, DirectWriter) else None
        )
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.state = State.CONNECTING
        self.conn_info: bytes | None = None
        self.expires_at: float | None = None
        # When the connection must be closed: the earliest token exp (connection
        # or subscription) plus the grace. Nothing is sent after it.
        self._deadline: float | None = None
        # Commands refused by the rate limit since the last one it let through.
        self._refused = 0
        self.subscriptions: dict[str, Subscription] = {}
        # Pushes for channels whose subscribe reply is not sent yet: the SDKs
        # drop pushes that arrive before the reply. (offset, frame, size).
        self._pending: dict[str, list[tuple[int, Frame, int]]] = {}
        # Channels whose subscribe reply is computed: the highest offset it covers.
        self._ready: dict[str, int] = {}
        # (frame, size, is a reply). Pushes count against the slow limit;
        # replies do not (their size is the client's own doing), but while
        # they exceed it the session stops taking commands: backpressure.
        # Made on first use: on the direct path an idle connection never needs one.
        self._queue: deque[tuple[Frame, int, bool]] | None = None
        self._queued_bytes = 0
        self._reply_bytes = 0
        # Pushes at the queue's tail not joined yet (see _compact_tail).
        self._loose = 0
        self._loose_bytes = 0
        self._drained: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._bucket = TokenBucket(self.settings.command_rate, self.settings.command_burst)
        self._loop = asyncio.get_running_loop()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._awaiting_pong = False
        self._schedule("auth", self.settings.auth_timeout, self._auth_timeout)

    # --- identity ---------------------------------------------------------

    @property
    def info(self) -> ClientInfo:
        return ClientInfo(user=self.user, client=self.client_id, conn_info=self.conn_info)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this connection's outgoing queue."""
        return self._queued_bytes

    @property
    def closed_already(self) -> bool:
        return self.state is State.CLOSED

    def is_subscribing(self, channel: str) -> bool:
        """Whether a subscribe to ``channel`` is under way (its reply not queued yet)."""
        return channel in self._pending

    def wants_join_leave(self, channel: str) -> bool:
        sub = self.subscriptions.get(channel)
        return sub is not None and sub.join_leave

    # --- outgoing ---------------------------------------------------------

    def deliver(self, channel: str, frame: Frame, size: int, offset: int = 0) -> bool:
        """Queue a push for ``channel``: the fan-out hot path.

        ``frame`` was encoded once for every subscriber; this only appends it.
        Returns whether it was written at once, which the caller counts in the
        metrics (once per publication rather than once per subscriber).
        """
        if self._pending:
            pending = self._pending.get(channel)
            if pending is not None:
                pending.append((offset, frame, size))
                return False
        return self._enqueue(frame, size)

    def _enqueue(self, frame: Frame, size: int, reply: bool = False) -> bool:
        """Write ``frame`` now if the socket keeps up, else queue it; whether it was written."""
        if self.state is State.CLOSED:
            return False
        direct = self._direct
        if (
            direct is not None
            and not self._queue
            and self._writer is None
            and (self._deadline is None or time.time() < self._deadline)
            and direct.write_now(frame)
        ):
            # The socket kept up: written at once, no queue and no task (the
            # frame, and its compressed form, are built once for all subscribers).
            return True
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append((frame, size, reply))
        self._queued_bytes += size
        if reply:
            self._reply_bytes += size
            self._loose = self._loose_bytes = 0
        else:
            if self._queued_bytes - self._reply_bytes > self.settings.write_queue_max_bytes:
                self.hub.metrics.slow_disconnects += 1
                self.disconnect(Disconnect.of(DisconnectCode.SLOW))
                return False
            self._loose += 1
            self._loose_bytes += size
            if self._loose_bytes >= COMPACTED_SIZE:
                self._compact_tail()
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())
        return False

    def _compact_tail(self) -> None:
        """Join the pushes queued since the last reply or compaction into one frame.

        A client that stops reading would otherwise pin each message it did not
        get, one small allocation among the short-lived ones of everyone else's
        traffic: the heap then grows several times faster than the queue.
        """
        queue = self._queue
        assert queue is not None
        # The writer may have taken some from the head meanwhile.
        count = min(self._loose, len(queue))
        self._loose = self._loose_bytes = 0
        if count < 2:
            return
        tail = [queue.pop() for _ in range(count)]
        tail.reverse()
        joined = self._separator.join([frame for frame, _, _ in tail])
        queue.append((joined, sum(size for _, size, _ in tail), False))

    def _send_encoded(self, data: bytes, reply: bool = False) -> None:
        """Queue one message already encoded in this connection's format."""
        self._send(data, len(data), reply)

    def _send(self, frame: Frame, size: int, reply: bool = False) -> None:
        """Write or queue one message, counting it if it went out at once."""
        if self._enqueue(frame, size, reply):
            metrics = self.hub.metrics
            metrics.messages_out += 1
            metrics.bytes_out += size

    async def _replies_drained(self) -> None:
        """Wait while replies the client has not read exceed the queue limit."""
        while self._reply_bytes > self.settings.write_queue_max_bytes and not self.closed_already:
            if self._drained is None:
                self._drained = asyncio.Event()
            await self._drained.wait()

    def send_push(self, channel: str, body: PushBody) -> None:
        """Encode and queue a push that is for this connection alone."""
        self._send_encoded(self.format.encode_push(channel, body))

    async def _write_loop(self) -> None:
        queue = self._queue
        metrics = self.hub.metrics
        try:
            while queue:
                frame, size, reply = queue.popleft()
                replies = size if reply else 0
                count = 1
                if queue and size < MAX_COALESCED_FRAME:
                    # Coalesce: one frame, one system call, for all that is queued.
                    parts = [frame]
                    total = size
                    while queue and total + queue[0][1] < MAX_COALESCED_FRAME:
                        part, part_size, part_reply = queue.popleft()
                        parts.append(part)
                        total += part_size
                        if part_reply:
                            replies += part_size
                    frame = self._separator.join(parts)
                    size, count = total, len(parts)
                self._queued_bytes -= size
                if replies:
                    self._reply_bytes -= replies
                    if self._drained is not None:
                        self._drained.set()
                        self._drained = None
                if self._deadline is not None and time.time() >= self._deadline:
                    # The expiry timer may not have run yet: never send past the deadline.
                    self._expiry_check()
                    if self.state is State.CLOSED:
                        return
                await self.transport.send(frame)
                metrics.messages_out += count
                metrics.bytes_out += size
        except asyncio.CancelledError:
            raise
        except Exception:
            self.disconnect(Disconnect.of(DisconnectCode.WRITE_ERROR))
        finally:
            self._writer = None

    # --- timers -----------------------------------------------------------

    def _schedule(self, name: str, delay: float, callback: Any) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = self._loop.call_later(max(delay, 0.0), callback)

    def _auth_timeout(self) -> None:
        if self.state is State.CONNECTING:
            self.disconnect(Disconnect.of(DisconnectCode.STALE))

    def _ping(self) -> None:
        if self.state is not State.CONNECTED:
            return
        if not self._awaiting_pong:
            # Only an answered ping starts a new deadline: rescheduling it on
            # every ping would never close a mute client if pong_timeout >= ping_interval.
            self._awaiting_pong = True
            self._schedule("pong", self.settings.pong_timeout, self._pong_deadline)
        self._send_encoded(self.format.ping)
        self._schedule("ping", self.settings.ping_interval, self._ping)

    def _pong_deadline(self) -> None:
        if self._awaiting_pong:
            self.disconnect(Disconnect.of(DisconnectCode.NO_PONG))

    def _set_expiry(self, expires_at: float | None) -> None:
        self.expires_at = expires_at
        self._update_deadline()

    def _update_deadline(self) -> None:
        """Schedule the close for the earliest token expiry (connection or subscription)."""
        times = [s.expires_at for s in self.subscriptions.values() if s.expires_at is not None]
        if self.expires_at is not None:
            times.append(self.expires_at)
        if not times:
            self._deadline = None
            timer = self._timers.pop("expiry", None)
            if timer is not None:
                timer.cancel()
            return
        self._deadline = min(times) + self.settings.token_expiry_grace
        self._schedule("expiry", self._deadline - time.time(), self._expiry_check)

    def _expiry_check(self) -> None:
        """Close with 3005 (connection token) or 3006 (a subscription token) once
        exp plus the grace has passed without a refresh; else look again later."""
        if self.state is not State.CONNECTED:
            return
        cutoff = time.time() - self.settings.token_expiry_grace
        if self.expires_at is not None and self.expires_at <= cutoff:
            self.disconnect(Disconnect.of(DisconnectCode.EXPIRED))
            return
        for sub in self.subscriptions.values():
            if sub.expires_at is not None and sub.expires_at <= cutoff:
                self.disconnect(Disconnect.of(DisconnectCode.SUBSCRIPTION_EXPIRED))
                return
        self._update_deadline()

    def _ttl(self, expires_at: float | None) -> tuple[bool, int]:
        if expires_at is None:
            return False, 0
        # Rounded down, so clients refresh before the token expires; but at
        # least 1: a ttl of 0 is left out of JSON replies (a zero value), and
        # the SDKs read a missing ttl as "no expiry" or fail on it.
        return True, max(1, int(expires_at - time.time()))

    # --- closing ----------------------------------------------------------

    def disconnect(self, reason: Disconnect) -> None:
        """Close this connection with ``reason``. Safe to call from anywhere, more than once."""
        if self.state is State.CLOSED:
            return
        was_connected = self.state is State.CONNECTED
        self.state = State.CLOSED
        self.hub.metrics.disconnects[reason.code] += 1
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if reason.code in _NOTHING_MORE_TO_SEND:
            if self._queue is not None:
                self._queue.clear()  # a running writer sees it empty and stops
            self._queued_bytes = self._reply_bytes = 0
        if self._drained is not None:
            self._drained.set()  # a command waiting for the client to read gives up
        self._pending.clear()
        subscriptions = list(self.subscriptions.values())
        self.hub.detach(self)
        self.subscriptions.clear()
        self._closer = self._loop.create_task(
            self._close(reason, subscriptions if was_connected else [])
        )

    async def _close(self, reason: Disconnect, subscriptions: list[Subscription]) -> None:
        writer = self._writer
        if reason.code in _NOTHING_MORE_TO_SEND and writer is not None:
            writer.cancel()
        try:
            await self.hub.leave_all(self, subscriptions)
        except Exception:
            log.exception("cleanup of client %s failed", self.client_id)
        if reason.code == DisconnectCode.CONNECTION_CLOSED:
            return
        try:
            # A peer that stopped reading would hold the close frame (and this
            # task) forever: give it a while, then drop the connection.
            await asyncio.wait_for(self._say_goodbye(reason), CLOSE_TIMEOUT)
        except TimeoutError:
            self.transport.abort()
        except Exception:
            pass  # the peer is gone already

    async def _say_goodbye(self, reason: Disconnect) -> None:
        # Replies queued before the decision go out first (the reply to a
        # command, then the close that a later bad line caused).
        if self._writer is not None:
            await self._writer
        if self._queue:
            await self._write_loop()
        if reason.code != DisconnectCode.SLOW and reason.code >= 3000:
            # Also say it in-band: some proxies do not pass close codes through.
            # (Not for WebSocket-level codes such as 1009: the protocol never
            # got that far, as with a server that refuses at that layer.)
            push = self.format.encode_push("", DisconnectPush(reason.code, reason.reason))
            await self.transport.send(push)
        await self.transport.close(reason.code, reason.reason)

    async def closed(self) -> None:
        """Wait until the connection is fully closed and cleaned up."""
        if self._closer is not None:
            await self._closer

    # --- incoming ---------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        """Decode a frame and run each of its commands in order."""
        metrics = self.hub.metrics
        metrics.messages_in += 1
        metrics.bytes_in += len(frame)
        try:
            commands = self.format.decode(frame)
        except Disconnect as d:
            self.disconnect(d)
            return
        for command in commands:
            if self.state is State.CLOSED:
                return
            await self._handle(command)
            if self.state is State.CONNECTING:
                # The connect failed with an error reply (109: get a new token). As
                # Centrifugo does, skip the rest of the frame: the SDKs batch their
                # subscribes after connect, and those must not close the connection
                # with a terminal 3501 (dropping the reply) before the client retries.
                return

    async def _handle(self, command: Command | BadCommand) -> None:
        if isinstance(command, BadCommand):
            self._reply_error(command.id, ProtocolError(command.code, command.message))
            return
        if command.method is None:
            self._awaiting_pong = False  # an empty command is a pong
            return
        if not self._bucket.take():
            metrics = self.hub.metrics
            metrics.rate_limited += 1
            metrics.limits["command_rate"] += 1
            metrics.commands[(command.method.value, "111")] += 1
            self._refused += 1
            flood = self.settings.command_flood_limit
            if flood and self._refused >= flood:
                # It keeps hammering while refused: close (3013; the SDKs back off).
                metrics.limits["command_flood"] += 1
                self.disconnect(Disconnect.of(DisconnectCode.TOO_MANY_REQUESTS))
                return
            if command.id:
                self._reply_error(command.id, ProtocolError.of(ErrorCode.TOO_MANY_REQUESTS))
            return
        self._refused = 0
        if self.state is State.CONNECTING and command.method is not Method.CONNECT:
            self.disconnect(Disconnect.of(DisconnectCode.BAD_REQUEST, "connect first"))
            return
        if self._reply_bytes > self.settings.write_queue_max_bytes:
            await self._replies_drained()
            if self.closed_already:
                return
        outcome = "ok"
        try:
            result: Result | None = await _HANDLERS[command.method](self, command.request)
            if result is not None and command.id and self.state is not State.CLOSED:
                reply = self.format.encode_reply(command.id, command.method, result)
                self._send_encoded(reply, reply=True)
        except ProtocolError as e:
            outcome = str(e.code)
            self._reply_error(command.id, e)
        except Disconnect as d:
            outcome = "disconnect"
            self.disconnect(d)
        except BrokerUnavailable:
            error = ProtocolError.of(ErrorCode.INTERNAL, "broker unavailable")
            outcome = str(error.code)
            self._reply_error(command.id, error)
        except Exception:
            log.exception("command %s of client %s failed", command.method.value, self.client_id)
            outcome = str(int(ErrorCode.INTERNAL))
            self._reply_error(command.id, ProtocolError.of(ErrorCode.INTERNAL))
        finally:
            self.hub.metrics.commands[(command.method.value, outcome)] += 1
            # Subscriptions this command completed may now pass their held pushes.
            self._release_pending()

    def _reply_error(self, command_id: int, error: ProtocolError) -> None:
        if command_id:
            self._send_encoded(self.format.encode_error(command_id, error), reply=True)

    # --- commands ---------------------------------------------------------

    async def _cmd_connect(self, req: ConnectRequest) -> ConnectResult:
        if self.state is not State.CONNECTING:
            raise Disconnect.of(DisconnectCode.BAD_REQUEST, "already connected")
        hub = self.hub
        user = ""
        info = None
        channels: list[str] = []
        if req.token:
            try:
                claims = await hub.verifier.averify_connection(req.token)
            except TokenExpired:
                raise ProtocolError.of(ErrorCode.TOKEN_EXPIRED) from None
            except InvalidToken:
                hub.metrics.auth_failures += 1
                raise Disconnect.of(DisconnectCode.INVALID_TOKEN) from None
            except KeysUnavailable:
                raise ProtocolError.of(ErrorCode.INTERNAL, "token keys unavailable") from None
            user, info = claims.user, claims.info
            self.expires_at = claims.expires_at
            channels = list(claims.channels)
        event = ConnectEvent(
            client_id=self.client_id,
            user=user,
            data=_loads(req.data),
            name=req.name,
            version=req.version,
            headers=self.headers,
            info=_loads(info),
            channels=channels,
        )
        if hub.handlers.connect is not None:
            await hub.handlers.connect(event)
            info = _dumps(event.info)
        if not req.token and event.user == "" and not self.settings.allow_anonymous:
            hub.metrics.auth_failures += 1
            raise Disconnect.of(DisconnectCode.INVALID_TOKEN, "token required")
        if self.closed_already:  # the handler took long and the client went away
            raise Disconnect.of(DisconnectCode.CONNECTION_CLOSED)
        cap = self.settings.max_connections_per_user
        if cap and event.user and len(hub.users.get(event.user, ())) >= cap:
            # Checked and attached below with no await between: concurrent connects
            # of one user cannot both slip under the cap.
            hub.metrics.limits["connections_per_user"] += 1
            raise Disconnect.of(DisconnectCode.CONNECTION_LIMIT)
        self.user = event.user
        self.conn_info = info
        self.state = State.CONNECTED
        # The handshake's headers served the connect handler; an idle connection keeps none.
        self.headers = {}
        self._timers.pop("auth").cancel()
        hub.attach(self)
        self._set_expiry(self.expires_at)
        self._schedule("ping", self.settings.ping_interval, self._ping)

        subs: dict[str, SubscribeResult] = {}
        for name in event.channels:
            try:
                channel = hub.channel(name)
            except ProtocolError:
                log.warning("server-side channel %r of user %r is invalid", name, self.user)
                continue
            if name in self.subscriptions:
                continue
            position = req.subs.get(name)
            try:
                subs[name] = await self._subscribe(
                    channel, position or SubscribeRequest(channel=name), self.info, server_side=True
                )
            except (ProtocolError, BrokerUnavailable):
                # The connection is half set up: let the client come back and retry.
                raise Disconnect.of(DisconnectCode.INTERNAL) from None
        expires, ttl = self._ttl(self.expires_at)
        return ConnectResult(
            client=self.client_id,
            version=hub.version,
            expires=expires,
            ttl=ttl,
            data=_dumps(event.reply_data),
            subs=subs,
            ping=max(1, round(self.settings.ping_interval)),
            pong=True,
            node=hub.node_name,
        )

    async def _cmd_refresh(self, req: RefreshRequest) -> RefreshResult:
        try:
            claims = await self.hub.verifier.averify_connection(req.token)
        except TokenExpired:
            raise ProtocolError.of(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken:
            self.hub.metrics.auth_failures += 1
            raise Disconnect.of(DisconnectCode.INVALID_TOKEN) from None
        except KeysUnavailable:
            raise ProtocolError.of(ErrorCode.INTERNAL, "token keys unavailable") from None
        if claims.user != self.user:
            raise Disconnect.of(DisconnectCode.INVALID_TOKEN, "token user mismatch")
        self._set_expiry(claims.expires_at)
        expires, ttl = self._ttl(claims.expires_at)
        return RefreshResult(
            client=self.client_id, version=self.hub.version, expires=expires, ttl=ttl
        )

    def _channel(self, name: str) -> Channel:
        return self.hub.channel(name)

    async def _cmd_subscribe(self, req: SubscribeRequest) -> SubscribeResult:
        channel = self._channel(req.channel)
        if req.channel in self.subscriptions:
            raise ProtocolError.of(ErrorCode.ALREADY_SUBSCRIBED)
        if len(self.subscriptions) >= self.settings.max_channels_per_connection:
            self.hub.metrics.limits["channels_per_connection"] += 1
            raise ProtocolError.of(ErrorCode.LIMIT_EXCEEDED, "too many channels")
        await self._check_room(channel)
        options = channel.options
        chan_info: bytes | None = None
        expires_at: float | None = None
        if channel.private:
            claims = await self._verify_subscription_token(req.token, req.channel)
            chan_info, expires_at = claims.info, claims.expires_at
        elif not channel.user_allowed(self.user):
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        elif self.user == "" and not options.allow_subscribe_for_anonymous:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        elif self.user != "" and not options.allow_subscribe_for_client:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        reply_data = None
        handler = self.hub.handlers.subscribe
        if handler is not None:
            event = SubscribeEvent(
                client_id=self.client_id,
                user=self.user,
                channel=req.channel,
                data=_loads(req.data),
                chan_info=_loads(chan_info),
            )
            await handler(event)
            chan_info = _dumps(event.chan_info)
            reply_data = _dumps(event.reply_data)
            if self.state is State.CLOSED or req.channel in self.subscriptions:
                raise ProtocolError.of(ErrorCode.ALREADY_SUBSCRIBED)
        info = ClientInfo(self.user, self.client_id, self.conn_info, chan_info)
        result = await self._subscribe(channel, req, info, expires_at=expires_at)
        if reply_data is not None:
            return SubscribeResult(
                expires=result.expires,
                ttl=result.ttl,
                recoverable=result.recoverable,
                epoch=result.epoch,
                publications=result.publications,
                recovered=result.recovered,
                offset=result.offset,
                positioned=result.positioned,
                data=reply_data,
                was_recovering=result.was_recovering,
            )
        return result

    async def _verify_subscription_token(self, token: str, channel: str) -> SubscriptionClaims:
        if not token:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED, "subscription token required")
        try:
            claims = await self.hub.verifier.averify_subscription(token)
        except TokenExpired:
            raise ProtocolError.of(ErrorCode.TOKEN_EXPIRED) from None
        except InvalidToken:
            self.hub.metrics.auth_failures += 1
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED) from None
        except KeysUnavailable:
            raise ProtocolError.of(ErrorCode.INTERNAL, "token keys unavailable") from None
        if claims.channel != channel or claims.user != self.user:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        return claims

    async def _subscribe(
        self,
        channel: Channel,
        req: SubscribeRequest,
        info: ClientInfo,
        *,
        expires_at: float | None = None,
        server_side: bool = False,
    ) -> SubscribeResult:
        """Join a channel and answer with its position or the publications missed.

        The session joins the channel's fan-out *before* it reads history, and
        holds that channel's pushes until the reply is queued; then it drops
        the held ones the reply already covers. Nothing falls in between.
        """
        name = channel.name
        options = channel.options
        history = options.history_enabled
        recoverable = history and (options.force_recovery or req.recoverable or req.recover)
        positioned = history and (options.force_positioning or req.positioned or recoverable)
        join_leave = options.join_leave and (options.force_push_join_leave or req.join_leave)
        sub = Subscription(
            channel, info, recoverable, positioned, join_leave, expires_at, server_side
        )
        self.subscriptions[name] = sub
        self._pending[name] = []
        try:
            await self.hub.add_subscriber(name, self)
            publications: list[Any] = []
            recovered = False
            position = StreamPosition(0, "")
            if req.recover and recoverable:
                since = StreamPosition(req.offset, req.epoch)
                publications, position = await self.hub.broker.history(
                    name, since=since, limit=options.history_size
                )
                recovered = position.epoch == req.epoch and (
                    publications[0].offset == req.offset + 1
                    if publications
                    else position.offset == req.offset
                )
                if not recovered:
                    publications = []
            elif positioned:
                _, position = await self.hub.broker.history(name, since=None, limit=0)
            if options.presence:
                await self.hub.broker.add_presence(name, self.client_id, info)
            if options.join_leave:
                await self.hub.broker.publish_join(name, info)
        except BaseException:
            self.subscriptions.pop(name, None)
            self._pending.pop(name, None)
            await self.hub.remove_subscriber(name, self)
            raise
        # Held pushes with an offset up to here are in the reply (or before the
        # position the client starts from): drop them as duplicates.
        self._ready[name] = max(position.offset, publications[-1].offset if publications else 0)
        if expires_at is not None:
            self._update_deadline()  # a subscription token's exp ends it (3006) without sub_refresh
        expires, ttl = self._ttl(expires_at)
        return SubscribeResult(
            expires=expires,
            ttl=ttl,
            recoverable=recoverable,
            epoch=position.epoch if positioned else "",
            publications=tuple(publications),
            recovered=recovered,
            offset=position.offset if positioned else 0,
            positioned=positioned,
            was_recovering=req.recover and recoverable,
        )

    def _release_pending(self) -> None:
        """After a reply is queued, send the pushes held back for its channels."""
        if not self._ready:
            return
        for name, covered in self._ready.items():
            held = self._pending.pop(name, None) or []
            for offset, frame, size in held:
                if offset == 0 or offset > covered:
                    self._send(frame, size)
        self._ready.clear()

    async def server_subscribe(self, channel: Channel) -> None:
        """Subscribe this connection on the server side and tell the client with a push."""
        if channel.name in self.subscriptions or self.state is not State.CONNECTED:
            return
        result = await self._subscribe(
            channel, SubscribeRequest(channel=channel.name), self.info, server_side=True
        )
        push = SubscribePush(
            recoverable=result.recoverable,
            epoch=result.epoch,
            offset=result.offset,
            positioned=result.positioned,
        )
        self.send_push(channel.name, push)
        self._release_pending()

    async def server_unsubscribe(self, channel: str) -> None:
        """End a subscription from the server side and tell the client with a push."""
        sub = self.subscriptions.pop(channel, None)
        if sub is None:
            return
        self._pending.pop(channel, None)
        push = UnsubscribePush(int(UnsubscribeCode.SERVER), "server unsubscribe")
        self.send_push(channel, push)
        await self.hub.leave(self, sub)

    async def _cmd_unsubscribe(self, req: UnsubscribeRequest) -> EmptyResult:
        sub = self.subscriptions.pop(req.channel, None)
        if sub is not None:
            self._pending.pop(req.channel, None)
            await self.hub.leave(self, sub)
        return EmptyResult()

    async def _check_room(self, channel: Channel) -> None:
        """Let only members at a room:<id> channel: a room one is not in looks missing.

        A room that does not exist and a room the user is not a member of give
        the same 103 "permission denied". A live subscription stands for
        membership (leaving a room unsubscribes the user's connections), so only
        commands on rooms one is not subscribed to ask the database: at most one
        query per command, none per publication.
        """
        if channel.namespace != ROOM_NAMESPACE or channel.name in self.subscriptions:
            return
        check = self.hub.room_membership
        room_id = channel.name.partition(":")[2]
        if not self.user or not room_id or check is None or not await check(self.user, room_id):
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)

    def _can(self, channel: Channel, for_client: bool, for_subscriber: bool) -> bool:
        if for_client and self.user != "" and channel.user_allowed(self.user):
            return True
        sub = self.subscriptions.get(channel.name)
        return for_subscriber and sub is not None and channel.name not in self._pending

    async def _cmd_publish(self, req: PublishRequest) -> EmptyResult:
        channel = self._channel(req.channel)
        await self._check_room(channel)
        options = channel.options
        if not self._can(
            channel, options.allow_publish_for_client, options.allow_publish_for_subscriber
        ):
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        data = req.data
        handler = self.hub.handlers.publish
        if handler is not None:
            event = PublishEvent(self.client_id, self.user, req.channel, orjson.loads(data))
            await handler(event)
            data = orjson.dumps(event.data)
        sub = self.subscriptions.get(req.channel)
        info = sub.info if sub is not None else self.info
        await self.hub.publish(channel, data, info=info)
        return EmptyResult()

    async def _presence_allowed(self, name: str) -> Channel:
        channel = self._channel(name)
        await self._check_room(channel)
        options = channel.options
        if not self._can(
            channel, options.allow_presence_for_client, options.allow_presence_for_subscriber
        ):
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        return channel

    async def _cmd_presence(self, req: PresenceRequest) -> PresenceResult:
        channel = await self._presence_allowed(req.channel)
        return PresenceResult(await self.hub.presence(channel))

    async def _cmd_presence_stats(self, req: PresenceStatsRequest) -> PresenceStatsResult:
        channel = await self._presence_allowed(req.channel)
        clients = await self.hub.presence(channel)
        return PresenceStatsResult(len(clients), len({c.user for c in clients.values()}))

    async def _cmd_history(self, req: HistoryRequest) -> HistoryResult:
        channel = self._channel(req.channel)
        await self._check_room(channel)
        options = channel.options
        if not self._can(
            channel, options.allow_history_for_client, options.allow_history_for_subscriber
        ):
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        return await self.hub.history(
            channel, limit=req.limit, since=req.since, reverse=req.reverse
        )

    async def _cmd_ping(self, req: object) -> EmptyResult:
        return EmptyResult()

    async def _cmd_rpc(self, req: RPCRequest) -> RPCResult:
        handler = self.hub.handlers.rpc.get(req.method)
        if handler is None:
            raise ProtocolError.of(ErrorCode.METHOD_NOT_FOUND)
        result = await handler(RPCEvent(self.client_id, self.user, req.method, _loads(req.data)))
        return RPCResult(_dumps(result))

    async def _cmd_send(self, req: SendRequest) -> None:
        handler = self.hub.handlers.message
        if handler is not None:
            await handler(MessageEvent(self.client_id, self.user, orjson.loads(req.data)))

    async def _cmd_sub_refresh(self, req: SubRefreshRequest) -> SubRefreshResult:
        sub = self.subscriptions.get(req.channel)
        if sub is None:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED, "not subscribed")
        claims = await self._verify_subscription_token(req.token, req.channel)
        if self.subscriptions.get(req.channel) is not sub:
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED, "not subscribed")
        sub.expires_at = claims.expires_at
        self._update_deadline()
        expires, ttl = self._ttl(claims.expires_at)
        return SubRefreshResult(expires=expires, ttl=ttl)


# Each method's handler, found once here rather than by name for every command.
_HANDLERS: dict[Method, Any] = {m: getattr(Session, f"_cmd_{m.value}") for m in Method}


def _loads(data: bytes | None) -> Any:
    return None if data is None else orjson.loads(data)


def _dumps(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)
