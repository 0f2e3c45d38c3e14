"""What spans the nodes of a deployment: control messages over the broker.

Every node subscribes to one control channel of its broker (with Redis, one
pub/sub channel per key prefix: ``{prefix}:cluster:control``). A control
message is a JSON header, a newline, then an optional raw payload::

    {"v": 1, "t": "disconnect", "o": "<origin node uid>", "user": "alice", ...}\\n

Types of version 1 (``v``):

============  ==========================================  =========  =========================
``t``         header fields                               payload    every other node...
============  ==========================================  =========  =========================
disconnect    user, client, code, reason                  none       closes the user's
                                                                     connections (or one)
unsubscribe   user, channel, client                       none       unsubscribes them (2000)
subscribe     user, channel, client                       none       subscribes them
                                                                     (server side)
message       user                                        data       sends a ``message`` push
heartbeat     node {uid, name, version, uptime,           none       lists the node in
              num_clients, num_users, num_channels,                  ``info`` for ``ttl``
              num_subs}, ttl                                         seconds (0: it left)
channels?     id, pattern                                 none       answers ``channels``
channels      id, to, channels {name: num_clients},       none       (the asking node merges
              truncated                                              the answers)
============  ==========================================  =========  =========================

``client`` empty means every connection of the user. The origin node acts on
its own connections at once and ignores its messages when they come back.
Messages of an unknown version or type are ignored (logged at debug level), so
nodes of two releases can run side by side during a rolling upgrade; a change
of meaning takes a new ``v``.

Delivery is what the broker's pub/sub gives: at most once, to the nodes
connected at that moment. A node cut off from Redis misses the messages sent
meanwhile (a ``disconnect`` included); heartbeats repair ``info`` by themselves.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..brokers import BrokerUnavailable
from ..protocol import Disconnect

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("tidings.cluster")

VERSION = 1

# How often a node says it is alive, and how long the others believe it.
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL + 1.0
# How long `channels` waits for the other nodes, and the most channels one
# node reports (a reply carrying more says truncated).
REQUEST_TIMEOUT = 1.0
MAX_CHANNELS_PER_NODE = 10_000


@dataclass(frozen=True, slots=True)
class DisconnectUser:
    user: str
    client: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class UnsubscribeUser:
    user: str
    channel: str
    client: str


@dataclass(frozen=True, slots=True)
class SubscribeUser:
    user: str
    channel: str
    client: str


@dataclass(frozen=True, slots=True)
class SendMessage:
    user: str
    data: bytes


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the server API's ``info`` shows it."""

    uid: str
    name: str
    version: str
    uptime: int
    num_clients: int
    num_users: int
    num_channels: int
    num_subs: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: NodeInfo
    ttl: float


@dataclass(frozen=True, slots=True)
class ChannelsRequest:
    id: str
    pattern: str


@dataclass(frozen=True, slots=True)
class ChannelsReply:
    id: str
    to: str
    channels: dict[str, int]
    truncated: bool = False


Control = (
    DisconnectUser
    | UnsubscribeUser
    | SubscribeUser
    | SendMessage
    | Heartbeat
    | ChannelsRequest
    | ChannelsReply
)

_TYPES: dict[type[Any], str] = {
    DisconnectUser: "disconnect",
    UnsubscribeUser: "unsubscribe",
    SubscribeUser: "subscribe",
    SendMessage: "message",
    Heartbeat: "heartbeat",
    ChannelsRequest: "channels?",
    ChannelsReply: "channels",
}


def encode(origin: str, message: Control) -> bytes:
    """The bytes of a control message sent by node ``origin``."""
    header: dict[str, Any] = {"v": VERSION, "t": _TYPES[type(message)], "o": origin}
    payload = b""
    if isinstance(message, SendMessage):
        header["user"] = message.user
        payload = message.data
    elif isinstance(message, Heartbeat):
        header["node"] = asdict(message.node)
        header["ttl"] = message.ttl
    else:
        header.update(asdict(message))
    return orjson.dumps(header) + b"\n" + payload


def _str(header: dict[str, Any], name: str) -> str:
    value = header.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _int(header: dict[str, Any], name: str) -> int:
    value = header.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def decode(data: bytes) -> tuple[str, Control] | None:
    """(origin, message), or None for a version or type this node does not know.

    Raises ValueError for a malformed message.
    """
    cut = data.find(b"\n")
    if cut < 0:
        raise ValueError("no header line")
    header = orjson.loads(data[:cut])
    if not isinstance(header, dict):
        raise ValueError("the header is not an object")
    if header.get("v") != VERSION:
        return None
    origin, kind = _str(header, "o"), _str(header, "t")
    message: Control
    if kind == "disconnect":
        message = DisconnectUser(
            _str(header, "user"),
            _str(header, "client"),
            _int(header, "code"),
            _str(header, "reason"),
        )
    elif kind == "unsubscribe":
        message = UnsubscribeUser(
            _str(header, "user"), _str(header, "channel"), _str(header, "client")
        )
    elif kind == "subscribe":
        message = SubscribeUser(
            _str(header, "user"), _str(header, "channel"), _str(header, "client")
        )
    elif kind == "message":
        message = SendMessage(_str(header, "user"), data[cut + 1 :])
    elif kind == "heartbeat":
        node = header.get("node")
        if not isinstance(node, dict):
            raise ValueError("node must be an object")
        ttl = header.get("ttl")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ValueError("ttl must be a number")
        info = NodeInfo(
            _str(node, "uid"),
            _str(node, "name"),
            _str(node, "version"),
            *(
                _int(node, n)
                for n in ("uptime", "num_clients", "num_users", "num_channels", "num_subs")
            ),
        )
        message = Heartbeat(info, float(ttl))
    elif kind == "channels?":
        message = ChannelsRequest(_str(header, "id"), _str(header, "pattern"))
    elif kind == "channels":
        channels = header.get("channels")
        if not isinstance(channels, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in channels.values()
        ):
            raise ValueError("channels must map names to counts")
        message = ChannelsReply(
            _str(header, "id"), _str(header, "to"), channels, bool(header.get("truncated"))
        )
    else:
        return None
    return origin, message


@dataclass(slots=True)
class _Request:
    """A ``channels`` request of this node, waiting for the others' answers."""

    waiting: set[str]
    counts: dict[str, int]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Cluster:
    """One node's side of the control channel: sends, receives, and the live nodes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.heartbeat_ttl = HEARTBEAT_TTL
        self.request_timeout = REQUEST_TIMEOUT
        # Other nodes: uid -> (their last heartbeat, when it expires: monotonic).
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._requests: dict[str, _Request] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._last_heartbeat = 0.0

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(
            self._heartbeats(), name="tidings-heartbeat"
        )

    async def stop(self) -> None:
        """Stop the heartbeats and tell the others this node is gone (best effort)."""
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.send(Heartbeat(self.local_node(), 0.0)), 1.0)
        except (BrokerUnavailable, TimeoutError):
            pass
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.hub.settings.shutdown_timeout)

    # --- sending ----------------------------------------------------------

    async def send(self, message: Control) -> None:
        """Send to every other node; BrokerUnavailable when the broker cannot."""
        await self.hub.broker.publish_control(encode(self.hub.node_uid, message))

    def send_soon(self, message: Control) -> None:
        """Send in the background; a failure is logged."""
        self._spawn(self._send_logged(message))

    async def _send_logged(self, message: Control) -> None:
        try:
            await self.send(message)
        except BrokerUnavailable as e:
            log.warning("could not tell the other nodes (%s): %s", _TYPES[type(message)], e)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- receiving --------------------------------------------------------

    def on_control(self, data: bytes) -> None:
        try:
            decoded = decode(data)
        except (ValueError, TypeError) as e:
            log.warning("ignoring a malformed control message: %s", e)
            return
        if decoded is None:
            log.debug("ignoring a control message of another version or type: %r", data[:200])
            return
        origin, message = decoded
        if origin == self.hub.node_uid:
            return  # this node acted already
        hub = self.hub
        if isinstance(message, DisconnectUser):
            hub.disconnect_here(
                message.user, Disconnect(message.code, message.reason), message.client
            )
        elif isinstance(message, UnsubscribeUser):
            self._spawn(
                self._logged(hub.unsubscribe_here(message.user, message.channel, message.client))
            )
        elif isinstance(message, SubscribeUser):
            self._spawn(
                self._logged(hub.subscribe_here(message.user, message.channel, message.client))
            )
        elif isinstance(message, SendMessage):
            hub.send_here(message.user, message.data)
        elif isinstance(message, Heartbeat):
            self._on_heartbeat(origin, message)
        elif isinstance(message, ChannelsRequest):
            self._answer_channels(origin, message)
        else:
            self._on_channels(origin, message)

    async def _logged(self, work: Any) -> None:
        try:
            await work
        except Exception:
            log.exception("a control message failed on this node")

    # --- nodes ------------------------------------------------------------

    def local_node(self) -> NodeInfo:
        stats = self.hub.stats()
        return NodeInfo(
            uid=self.hub.node_uid,
            name=stats["name"],
            version=stats["version"],
            uptime=stats["uptime"],
            num_clients=stats["num_clients"],
            num_users=stats["num_users"],
            num_channels=stats["num_channels"],
            num_subs=stats["num_subs"],
        )

    def nodes(self) -> list[NodeInfo]:
        """This node, then every other node heard from lately, by name."""
        now = time.monotonic()
        for uid in [uid for uid, (_, until) in self._nodes.items() if until <= now]:
            del self._nodes[uid]
        others = sorted((info for info, _ in self._nodes.values()), key=lambda n: (n.name, n.uid))
        return [self.local_node(), *others]

    async def _heartbeats(self) -> None:
        while True:
            await self._heartbeat()
            await asyncio.sleep(self.heartbeat_interval)

    async def _heartbeat(self) -> None:
        self._last_heartbeat = time.monotonic()
        try:
            await self.send(Heartbeat(self.local_node(), self.heartbeat_ttl))
        except BrokerUnavailable as e:
            log.debug("heartbeat not sent: %s", e)

    def _on_heartbeat(self, origin: str, message: Heartbeat) -> None:
        if message.ttl <= 0:
            self._nodes.pop(origin, None)
            return
        known = origin in self._nodes
        self._nodes[origin] = (message.node, time.monotonic() + message.ttl)
        if not known and time.monotonic() - self._last_heartbeat > 0.2:
            # A node just started: let it know this one at once, not in a while.
            self._last_heartbeat = time.monotonic()
            self._spawn(self._heartbeat())

    # --- channels across nodes ---------------------------------------------

    def _local_channels(self, pattern: str) -> dict[str, int]:
        return {
            name: n
            for name, n in self.hub.channel_counts().items()
            if not pattern or fnmatch.fnmatchcase(name, pattern)
        }

    def _answer_channels(self, origin: str, request: ChannelsRequest) -> None:
        counts = self._local_channels(request.pattern)
        truncated = len(counts) > MAX_CHANNELS_PER_NODE
        if truncated:
            counts = dict(list(counts.items())[:MAX_CHANNELS_PER_NODE])
        self.send_soon(ChannelsReply(request.id, origin, counts, truncated))

    def _on_channels(self, origin: str, reply: ChannelsReply) -> None:
        request = self._requests.get(reply.id)
        if reply.to != self.hub.node_uid or request is None or origin not in request.waiting:
            return
        request.waiting.discard(origin)
        for name, n in reply.channels.items():
            request.counts[name] = request.counts.get(name, 0) + n
        if not request.waiting:
            request.done.set()

    async def channels(self, pattern: str = "") -> dict[str, int]:
        """Channels with subscribers on any node (matching a glob), with their counts.

        Asks every node heard from lately and waits for their answers, at most
        ``request_timeout``: a node that does not answer in time is left out.
        """
        counts = self._local_channels(pattern)
        others = {n.uid for n in self.nodes()[1:]}
        if not others:
            return counts
        request_id = uuid.uuid4().hex
        request = self._requests[request_id] = _Request(others, counts)
        try:
            await self.send(ChannelsRequest(request_id, pattern))
            try:
                await asyncio.wait_for(request.done.wait(), self.request_timeout)
            except TimeoutError:
                log.info("channels: no answer from %d node(s) in time", len(request.waiting))
        finally:
            del self._requests[request_id]
        return request.counts
