"""The Redis broker: many nodes share history, presence and fan-out through Redis.

Selected by ``TIDINGS_BROKER_URL=redis://host:6379/0`` (``rediss://`` for TLS).
Query parameters of the URL that are ours, not redis-py's:

- ``prefix`` (default ``tidings``): the start of every key and pub/sub channel,
  so several deployments can share one Redis.
- ``presence_ttl`` (seconds, default 60): how long a presence entry lives
  unless its node refreshes it (every third of that), so the clients of a
  crashed node leave the presence list.
- ``reconnect_max`` (seconds, default 2): the longest pause between two
  attempts to reconnect the pub/sub connection.
- ``max_connections`` (default 16): the command connections a node keeps to
  Redis, besides its pub/sub connection. They are never more, whatever the load.
- ``command_timeout`` (seconds, default 5): how long an operation may wait for
  a free command connection, and then for its reply, before it fails with
  ``BrokerUnavailable``.

Keys of one channel (``{prefix}:{<channel>}:...``) share the hash tag
``{<channel>}``, so they live in one Redis Cluster slot and one Lua script can
touch them all:

- ``...:meta``: a hash with the stream's ``epoch`` and ``top`` (last offset).
  It outlives the history (its expiry is ``max(history ttl, 1 day)`` after the
  last publish), so offsets and epoch stay the same while a channel is in use.
  When it is gone (expired, evicted, FLUSHALL, Redis restarted without its
  data) the next publish or history read makes a new random epoch, so a
  client recovering from an old position learns ``recovered: false``.
- ``...:history``: a stream whose entry IDs are ``<offset>-0``; each entry
  holds the encoded publication and its expiry time. Kept to the history size
  by ``XADD MAXLEN``; the key expires a history ttl after the last publish.
- ``...:presence`` (hash client -> info) and ``...:presence:expiry`` (sorted
  set client -> expiry time in ms).
- ``...:pub``: the pub/sub channel for publications, joins and leaves.

Keys and channels of the deployment as a whole (``{prefix}:cluster:...``, never
a channel's, which all start ``{prefix}:{``):

- ``...:control``: the pub/sub channel of control messages (``publish_control``,
  ``BrokerEvents.on_control``; their format is ``tidings.hub.cluster``'s), to
  which every node subscribes on its pub/sub connection.
- ``...:{users}:nodes``: a sorted set of live broker ids -> expiry time (ms);
  a node with counted connections refreshes its own every ``NODE_REFRESH``
  seconds, for ``NODE_TTL``.
- ``...:{users}:user:<user>``: a sorted set of ``<broker id> <client id>`` ->
  expiry time, one member per connection of the user, for the per-user
  connection limit. A Lua script counts the members of live nodes and adds one
  only under the limit, atomically, so two nodes racing cannot both pass it.
  Members are refreshed like presence entries; a crashed node's stop counting
  as soon as its entry in ``nodes`` expires (``NODE_TTL``).

Each node holds one pub/sub connection with one SUBSCRIBE per channel that has
local subscribers (the hub asks for the first and the last one only). redis-py
does not reconnect a pub/sub connection by itself, so a reader task here does:
it notices a broken connection (EOF, an error, or no answer to a PING within
``health_interval``), marks the broker not ready, reconnects with bounded,
jittered exponential backoff, subscribes every channel again, and then tells
the hub each channel's stream top (``BrokerEvents.on_resubscribed``) so the
hub can find publications lost while the connection was down.

Commands (publishes, history reads, presence, user connection counts) go
through an auto-pipeline (``tidings.brokers.redis_pipeline``): the commands
issued by concurrent callers during one event-loop iteration travel together
in one pipeline on one of ``max_connections`` pooled connections, each caller
getting its own reply or its own error. Thousands of concurrent operations
queue and share round trips; none fails because every connection is busy,
unless it waited ``command_timeout`` for one.

Every command failing for want of Redis raises ``BrokerUnavailable``: a publish
during an outage fails visibly (error 100 to a client, HTTP 503 from the server
API). Commands are never retried here, since a retried publish could be
delivered twice; the client that got the error retries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from ..protocol import ClientInfo, Publication, StreamPosition
from .base import BrokerEvents, BrokerUnavailable, HistoryOptions
from .metrics import CommandMetrics
from .redis_pipeline import AutoPipeline

log = logging.getLogger("tidings.brokers.redis")

# A stream's epoch and top outlive its publications by at least this long
# (the memory broker's STREAM_IDLE_TTL).
META_TTL = 24 * 3600.0

# Errors that mean "Redis cannot serve this now": they become BrokerUnavailable.
# (redis-py's BusyLoadingError, while Redis loads its data, is a ConnectionError.)
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

# Marks of the PINGs the reader sends on its pub/sub connection: the reply comes
# after everything Redis sent on that connection before it.
_MARK_SUBSCRIBED = b"tidings:subscribed"
_MARK_BARRIER = b"tidings:barrier"
_MARK_SYNC = b"tidings:sync"

_CHUNK = 500

# A node's entry in the live-node set: refreshed this often, lives this long.
NODE_REFRESH = 1.0
NODE_TTL = 5.0

# Publish with history, atomically: make the stream's meta hash (a new epoch
# when it is missing, dropping any stream left from an older epoch), take the
# next offset, append the entry with ID <offset>-0 and keep the last N, set the
# expiries, and publish the publication with its offset and epoch to every node.
#
# Time limit per publication: each entry keeps its expiry time (Redis' clock,
# so every node agrees), and reads skip expired entries. Entry IDs are offsets,
# not times, so XTRIM MINID cannot trim by time; the stream key itself expires
# one ttl after the last publish, when every entry in it has expired.
#
# KEYS: stream, meta. ARGV: pub/sub channel, payload, size, ttl ms, meta ttl ms,
# epoch to use when the meta hash is missing.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local top = redis.call('HINCRBY', KEYS[2], 'top', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], string.format('%d-0', top),
  'e', string.format('%d', now + ttl), 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], 'p' .. string.format('%d', top) .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch}
"""

# Read a stream: its top and epoch (a new epoch when the meta hash is missing),
# and the live entries after `since` (-1: from the start), oldest or newest
# first, at most `limit` (< 0: all; 0: none). Returns {top, epoch, {id, payload, ...}}.
#
# KEYS: stream, meta. ARGV: since, limit, reverse (0/1), new epoch, meta ttl ms.
_HISTORY = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  return {0, epoch, {}}
end
local top = tonumber(redis.call('HGET', KEYS[2], 'top') or '0')
local limit = tonumber(ARGV[2])
local out = {}
if limit == 0 then
  return {top, epoch, out}
end
local since = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local low = '-'
if since >= 0 then
  low = string.format('%d-1', since)
end
local cmd, a, b = 'XRANGE', low, '+'
if ARGV[3] == '1' then
  cmd, a, b = 'XREVRANGE', '+', low
end
local n = 0
while true do
  local want = 1000
  if limit > 0 and limit - n < want then
    want = limit - n
  end
  local batch = redis.call(cmd, KEYS[1], a, b, 'COUNT', want)
  for i = 1, #batch do
    local fields = batch[i][2]
    local expires, payload = 0, nil
    for j = 1, #fields, 2 do
      if fields[j] == 'e' then
        expires = tonumber(fields[j + 1])
      elseif fields[j] == 'p' then
        payload = fields[j + 1]
      end
    end
    if expires > now and payload then
      n = n + 1
      out[#out + 1] = batch[i][1]
      out[#out + 1] = payload
    end
  end
  if #batch < want or (limit > 0 and n >= limit) then
    break
  end
  local last = tonumber(string.match(batch[#batch][1], '^(%d+)'))
  if cmd == 'XRANGE' then
    a = string.format('%d-1', last)
  else
    a = string.format('%d-0', last - 1)
  end
end
return {top, epoch, out}
"""

# Add (or refresh) a presence entry with an expiry on Redis' clock.
# KEYS: hash, zset. ARGV: client, info, ttl ms.
_PRESENCE_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# Remove a presence entry, atomically. KEYS: hash, zset. ARGV: client.
_PRESENCE_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# Drop expired presence entries (their node stopped refreshing them), then list
# the rest. KEYS: hash, zset.
_PRESENCE_GET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  for i = 1, #expired, 500 do
    redis.call('HDEL', KEYS[1], unpack(expired, i, math.min(i + 499, #expired)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return redis.call('HGETALL', KEYS[1])
"""


# Mark this node alive; count the connections of a user on live nodes (dropping
# expired members and those of dead nodes) and, under the limit (<= 0: none),
# add or refresh one. Returns 1 when added, 0 at the limit.
#
# KEYS: user zset, node zset. ARGV: member ("<node> <client>"), limit, ttl ms,
# node, node ttl ms.
_USER_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local ttl = tonumber(ARGV[3])
local limit = tonumber(ARGV[2])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local members = redis.call('ZRANGE', KEYS[1], 0, -1)
  local live = {}
  local n = 0
  for i = 1, #members do
    local node = string.match(members[i], '^(%S+) ')
    local alive = live[node]
    if alive == nil then
      local until_ms = node and redis.call('ZSCORE', KEYS[2], node)
      alive = until_ms ~= false and until_ms ~= nil and tonumber(until_ms) > now
      live[node or ''] = alive
    end
    if not alive then
      redis.call('ZREM', KEYS[1], members[i])
    elseif members[i] ~= ARGV[1] then
      n = n + 1
    end
  end
  if n >= limit then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

# Mark a node alive until now + ttl, and forget the nodes that expired.
# KEYS: node zset. ARGV: node, ttl ms.
_NODE_ALIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


# --- encoding ---------------------------------------------------------------
#
# A publication travels and is stored as a small JSON header, a newline, then
# the raw JSON blobs it carries, back to back: conn_info, chan_info, data. The
# header says which are there and how long (orjson never writes a raw newline,
# so the first newline ends it). The blobs are never parsed or re-encoded here:
# a subscriber gets the very bytes the publisher sent.
#
# Pub/sub messages: b"p<offset> <epoch> <publication>" (offset 0 and an empty
# epoch without history), b"j<info>" for a join and b"l<info>" for a leave,
# where <info> is the same header and blobs without data.


def _put_info(header: dict[str, Any], blobs: list[bytes], info: ClientInfo) -> None:
    header["u"] = info.user
    header["c"] = info.client
    if info.conn_info is not None:
        header["n"] = len(info.conn_info)
        blobs.append(info.conn_info)
    if info.chan_info is not None:
        header["h"] = len(info.chan_info)
        blobs.append(info.chan_info)


def encode_publication(
    data: bytes, info: ClientInfo | None = None, tags: Mapping[str, str] | None = None
) -> bytes:
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    if info is not None:
        _put_info(header, blobs, info)
    if tags:
        header["g"] = dict(tags)
    return b"".join((orjson.dumps(header), b"\n", *blobs, data))


def encode_info(info: ClientInfo) -> bytes:
    return encode_publication(b"", info)


def _split(payload: bytes) -> tuple[dict[str, Any], ClientInfo | None, int]:
    """The header, the info and where the data starts."""
    cut = payload.index(b"\n")
    header: dict[str, Any] = orjson.loads(payload[:cut])
    pos = cut + 1
    if "u" not in header:
        return header, None, pos
    conn_info = chan_info = None
    if "n" in header:
        conn_info = payload[pos : pos + header["n"]]
        pos += header["n"]
    if "h" in header:
        chan_info = payload[pos : pos + header["h"]]
        pos += header["h"]
    return header, ClientInfo(header["u"], header["c"], conn_info, chan_info), pos


def decode_publication(payload: bytes, offset: int = 0) -> Publication:
    header, info, pos = _split(payload)
    return Publication(data=payload[pos:], offset=offset, info=info, tags=header.get("g"))


def decode_info(payload: bytes) -> ClientInfo:
    _, info, _ = _split(payload)
    if info is None:
        raise ValueError("no client info")
    return info


def _new_epoch() -> str:
    return secrets.token_hex(4)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_OPTIONS = ("prefix", "presence_ttl", "reconnect_max", "max_connections", "command_timeout")

DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_COMMAND_TIMEOUT = 5.0


class RedisBroker:
    """A broker for many nodes, on one Redis (see the module docstring)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        presence_ttl: float | None = None,
        reconnect_max: float | None = None,
        max_connections: int | None = None,
        command_timeout: float | None = None,
        reconnect_base: float = 0.05,
        health_interval: float = 5.0,
        start_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _OPTIONS}
        rest = [(k, v) for k, v in query if k not in _OPTIONS]
        self.redis_url = urlunsplit(parts._replace(query=urlencode(rest)))
        self.prefix = prefix if prefix is not None else ours.get("prefix", "tidings")
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the redis key prefix must not contain '{' or '}'")
        self.presence_ttl = (
            presence_ttl if presence_ttl is not None else float(ours.get("presence_ttl", 60))
        )
        self.reconnect_max = (
            reconnect_max if reconnect_max is not None else float(ours.get("reconnect_max", 2))
        )
        self.max_connections = (
            max_connections
            if max_connections is not None
            else int(ours.get("max_connections", DEFAULT_MAX_CONNECTIONS))
        )
        self.command_timeout = (
            command_timeout
            if command_timeout is not None
            else float(ours.get("command_timeout", DEFAULT_COMMAND_TIMEOUT))
        )
        if self.presence_ttl <= 0 or self.reconnect_max <= 0 or self.command_timeout <= 0:
            raise ValueError("presence_ttl, reconnect_max and command_timeout must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.reconnect_base = min(reconnect_base, self.reconnect_max)
        self.health_interval = health_interval
        self.start_timeout = start_timeout
        # Operations that failed for want of Redis, and pub/sub reconnections
        # (tidings_broker_errors and tidings_broker_reconnects in /metrics).
        self.errors = 0
        self.reconnects = 0

        self._events: BrokerEvents | None = None
        # Commands: never retried by redis-py (a retried publish could be delivered
        # twice); a failure becomes BrokerUnavailable and the caller retries. A
        # fixed number of connections: a caller that finds them all busy waits
        # (the blocking pool; the auto-pipeline) rather than failing.
        self._pool = BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=self.max_connections,
            timeout=self.command_timeout,
            socket_timeout=self.command_timeout,
            socket_connect_timeout=self.command_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        self._client = Redis(connection_pool=self._pool)
        # What the pipeline counts (tidings_redis_* in /metrics).
        self.command_metrics = CommandMetrics()
        self._pipeline = AutoPipeline(
            self._pool,
            lanes=self.max_connections,
            timeout=self.command_timeout,
            metrics=self.command_metrics,
        )
        # No socket timeout on the pub/sub connection: it waits for messages, and
        # the reader's PINGs find a dead one. It also makes a command's bytes go
        # out before send_command yields, so SUBSCRIBE/UNSUBSCRIBE keep their order.
        self._pubsub_pool = ConnectionPool.from_url(
            self.redis_url,
            socket_connect_timeout=command_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            # RESP2: pub/sub messages are plain replies (RESP3 makes them pushes,
            # which redis-py hands to a callback instead of read_response).
            protocol=2,
        )
        self._publish: AsyncScript = self._client.register_script(_PUBLISH)
        self._history: AsyncScript = self._client.register_script(_HISTORY)
        self._presence_add: AsyncScript = self._client.register_script(_PRESENCE_ADD)
        self._presence_remove: AsyncScript = self._client.register_script(_PRESENCE_REMOVE)
        self._presence_get: AsyncScript = self._client.register_script(_PRESENCE_GET)
        self._user_add: AsyncScript = self._client.register_script(_USER_ADD)
        self._node_alive: AsyncScript = self._client.register_script(_NODE_ALIVE)
        # This broker's id in the live-node set and in user connection members.
        self.node_id = secrets.token_hex(8)
        self.node_ttl = NODE_TTL
        self._control_key = f"{self.prefix}:cluster:control".encode()
        self._conn: AbstractConnection | None = None
        self._ready = False
        self._ready_event = asyncio.Event()
        self._closing = False
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Pub/sub channel -> channel, for every channel this node is subscribed to.
        self._channels: dict[bytes, str] = {}
        # Pub/sub channel -> futures of SUBSCRIBEs sent and not confirmed yet, in order.
        self._waiters: dict[bytes, deque[asyncio.Future[None]]] = {}
        # Futures of sync PINGs sent on the pub/sub connection, in order.
        self._syncs: deque[asyncio.Future[None]] = deque()
        # Presence entries this node added: refreshed until removed.
        self._presence: dict[tuple[str, str], bytes] = {}
        # (user, client) of the connections this node counts: refreshed until removed.
        self._user_connections: set[tuple[str, str]] = set()
        self._counted_any = False

    # --- keys -------------------------------------------------------------

    def _key(self, channel: str, suffix: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{suffix}"

    def _pub_key(self, channel: str) -> bytes:
        return self._key(channel, "pub").encode()

    def _stream_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "history"), self._key(channel, "meta")]

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "presence"), self._key(channel, "presence:expiry")]

    def _user_keys(self, user: str) -> list[str]:
        return [
            f"{self.prefix}:cluster:{{users}}:user:{user}",
            f"{self.prefix}:cluster:{{users}}:nodes",
        ]

    @property
    def client(self) -> Redis:
        """A client on the command connections' pool (tests use it to look at and break Redis)."""
        return self._client

    @property
    def pipeline(self) -> AutoPipeline:
        return self._pipeline

    # --- commands ---------------------------------------------------------

    async def _command(self, *args: EncodableT) -> Any:
        """One command, pipelined with the concurrent others."""
        return await self._pipeline.execute(*args)

    async def _eval(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[EncodableT] = ()
    ) -> Any:
        """Run a Lua script by its SHA, pipelined; load it first if Redis lacks it."""
        try:
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or flushed its scripts. A NOSCRIPT reply means the
            # script did not run: running it now is no retry of a publish.
            await self._command("SCRIPT", "LOAD", script.script)
            return await self._command("EVALSHA", script.sha, len(keys), *keys, *args)

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn "Redis is not there" into BrokerUnavailable."""
        try:
            yield
        except _UNAVAILABLE as e:
            self.errors += 1
            raise BrokerUnavailable(f"redis: {what}: {e}") from e

    # --- lifecycle --------------------------------------------------------

    async def start(self, events: BrokerEvents) -> None:
        """Connect, then wait a while for the pub/sub connection; go on retrying after."""
        self._events = events
        self._closing = False
        self._pipeline.reopen()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="tidings-redis-pubsub"),
            loop.create_task(self._refresh_presence(), name="tidings-redis-presence"),
            loop.create_task(self._keep_alive(), name="tidings-redis-node"),
        ]
        try:
            await asyncio.wait_for(self._ready_event.wait(), self.start_timeout)
        except TimeoutError:
            log.warning("redis at %s is not reachable yet; retrying", self._where())

    async def close(self) -> None:
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            # A cancel can get lost inside redis-py (asyncio.wait_for on Python 3.11
            # swallows one that lands as the command completes): the loops also stop
            # on _closing, and the cancel is repeated.
            for _ in range(20):
                task.cancel()
                done, _pending = await asyncio.wait([task], timeout=0.5)
                if done:
                    break
            else:
                log.error("task %s did not stop", task.get_name())
        self._set_ready(False)
        self._fail_waiters()
        await self._pipeline.close()
        if self._counted_any:
            # Gone at once from the live-node set: its connections stop counting.
            try:
                await self.client.zrem(self._user_keys("")[1], self.node_id)
            except (*_UNAVAILABLE, RedisError) as e:
                log.debug("cannot leave the live-node set: %s", e)
        await self._client.aclose()
        await self._client.connection_pool.disconnect()
        await self._pubsub_pool.disconnect()
        self._events = None

    @property
    def ready(self) -> bool:
        return self._ready

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()

    def _where(self) -> str:
        parts = urlsplit(self.redis_url)
        return f"{parts.hostname}:{parts.port or 6379}"

    # --- the pub/sub connection -------------------------------------------

    async def _run(self) -> None:
        """Hold the pub/sub connection: connect, (re)subscribe, read; on failure, again."""
        # (make_connection has no annotations in redis-py.)
        make_connection: Callable[[], AbstractConnection] = self._pubsub_pool.make_connection
        while not self._closing:
            conn = make_connection()
            try:
                connect: Callable[[], Awaitable[None]] = conn.connect  # untyped in redis-py
                await connect()
                self._conn = conn
                keys = list(self._channels)
                await _send(conn, "SUBSCRIBE", self._control_key)
                for chunk in _chunks(keys):
                    await _send(conn, "SUBSCRIBE", *chunk)
                await _send(conn, "PING", _MARK_SUBSCRIBED)
                await self._read(conn, keys)
            except (*_UNAVAILABLE, RedisError) as e:
                if self._failures == 0:
                    log.warning("redis pub/sub connection lost: %s; reconnecting", e)
                else:
                    log.debug("redis pub/sub reconnect failed: %s", e)
            except Exception:
                # A bug must not end the reader for good: the node would stay
                # unready forever. Start over, as after a lost connection.
                log.exception("redis pub/sub reader failed; reconnecting")
            finally:
                self._conn = None
                self._set_ready(False)
                self._fail_waiters()
                await conn.disconnect(nowait=True)
            # Exponential backoff with jitter, bounded by reconnect_max.
            delay = min(self.reconnect_max, self.reconnect_base * 2**self._failures)
            self._failures = min(self._failures + 1, 30)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _read(self, conn: AbstractConnection, resubscribed: list[bytes]) -> None:
        awaiting_pong = False
        positions: dict[str, StreamPosition | None] | None = None
        while True:
            message = await conn.read_response(timeout=self.health_interval)
            if message is None:
                if awaiting_pong:
                    raise RedisConnectionError("no answer on the pub/sub connection")
                await _send(conn, "PING")
                awaiting_pong = True
                continue
            awaiting_pong = False
            if not isinstance(message, list):
                # A PING's reply while subscribed to nothing: the bare argument.
                message = [b"pong", message]
            kind = message[0]
            if kind == b"message":
                self._on_message(message[1], message[2])
            elif kind == b"subscribe":
                waiters = self._waiters.get(message[1])
                if waiters:
                    waiter = waiters.popleft()
                    if not waiters:
                        del self._waiters[message[1]]
                    if not waiter.done():
                        waiter.set_result(None)
            elif kind == b"pong" and message[1] == _MARK_SUBSCRIBED:
                if self._failures:
                    log.warning("redis pub/sub connection is back")
                    self.reconnects += 1
                self._failures = 0
                self._set_ready(True)
                channels = [self._channels[k] for k in resubscribed if k in self._channels]
                if channels:
                    # Where each stream is now. Every publication made before this
                    # read reaches this connection before the barrier's PONG, so the
                    # hub compares these tops with what it has seen once that is in.
                    positions = await self._stream_positions(channels)
                    await _send(conn, "PING", _MARK_BARRIER)
            elif kind == b"pong" and message[1] == _MARK_SYNC:
                if self._syncs:
                    sync = self._syncs.popleft()
                    if not sync.done():
                        sync.set_result(None)
            elif kind == b"pong" and message[1] == _MARK_BARRIER and positions is not None:
                events = self._events
                if events is not None:
                    try:
                        events.on_resubscribed(positions)
                    except Exception:
                        log.exception("on_resubscribed failed")
                positions = None

    def _on_message(self, key: bytes, message: bytes) -> None:
        if key == self._control_key:
            self._on_control(message)
            return
        channel = self._channels.get(key)
        events = self._events
        if channel is None or events is None:
            return  # a straggler from a channel unsubscribed since
        try:
            kind = message[:1]
            if kind == b"p":
                offset, epoch, payload = message[1:].split(b" ", 2)
                events.on_publication(
                    channel, decode_publication(payload, int(offset)), epoch.decode()
                )
            elif kind == b"j":
                events.on_join(channel, decode_info(message[1:]))
            elif kind == b"l":
                events.on_leave(channel, decode_info(message[1:]))
        except Exception:
            log.exception("cannot deliver a message of channel %r", channel)

    def _on_control(self, message: bytes) -> None:
        events = self._events
        if events is None:
            return
        try:
            events.on_control(message)
        except Exception:
            log.exception("cannot handle a control message")

    def _fail_waiters(self) -> None:
        syncs, self._syncs = self._syncs, deque()
        for sync in syncs:
            if not sync.done():
                sync.set_exception(BrokerUnavailable("redis pub/sub connection lost"))
        waiters, self._waiters = self._waiters, {}
        for queue in waiters.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_exception(BrokerUnavailable("redis pub/sub connection lost"))

    async def _stream_positions(self, channels: list[str]) -> dict[str, StreamPosition | None]:
        """Each channel's stream top, or None when it has no stream (read-only)."""
        positions: dict[str, StreamPosition | None] = {}
        for chunk in _chunks(channels):
            async with self.client.pipeline(transaction=False) as pipe:
                for channel in chunk:
                    pipe.hmget(self._key(channel, "meta"), ["epoch", "top"])
                replies = await pipe.execute()
            for channel, (epoch, top) in zip(chunk, replies, strict=True):
                positions[channel] = (
                    None if epoch is None else StreamPosition(int(top or 0), epoch.decode())
                )
        return positions

    async def subscribe(self, channel: str) -> None:
        """Subscribe upstream; returns once Redis confirmed it, so nothing after is missed."""
        conn = self._conn
        if conn is None or not self._ready:
            self.errors += 1
            raise BrokerUnavailable("redis pub/sub connection is down")
        key = self._pub_key(channel)
        self._channels[key] = channel
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, deque()).append(waiter)
        try:
            await _send(conn, "SUBSCRIBE", key)
            await asyncio.wait_for(waiter, self.command_timeout)
        except (*_UNAVAILABLE, BrokerUnavailable) as e:
            self.errors += 1
            if self._channels.pop(key, None) is not None and conn is self._conn:
                with _quiet():
                    await _send(conn, "UNSUBSCRIBE", key)
            raise BrokerUnavailable(f"redis: cannot subscribe to {channel!r}: {e}") from e

    async def unsubscribe(self, channel: str) -> None:
        key = self._pub_key(channel)
        if self._channels.pop(key, None) is None:
            return
        conn = self._conn
        if conn is not None:
            # On a broken connection the reader resubscribes without this channel.
            with _quiet():
                await _send(conn, "UNSUBSCRIBE", key)

    # --- publishing and history -------------------------------------------

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: Mapping[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        payload = encode_publication(data, info, tags)
        pub_key = self._pub_key(channel)
        with self._guard("publish"):
            if history is not None and history.size > 0 and history.ttl > 0:
                top, epoch = await self._eval(
                    self._publish,
                    self._stream_keys(channel),
                    [
                        pub_key,
                        payload,
                        history.size,
                        _ms(history.ttl),
                        _ms(max(history.ttl, META_TTL)),
                        _new_epoch(),
                    ],
                )
                return StreamPosition(int(top), epoch.decode())
            await self._command("PUBLISH", pub_key, b"p0  " + payload)
        return StreamPosition(0, "")

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        with self._guard("publish join"):
            await self._command("PUBLISH", self._pub_key(channel), b"j" + encode_info(info))

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        with self._guard("publish leave"):
            await self._command("PUBLISH", self._pub_key(channel), b"l" + encode_info(info))

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None,
        limit: int,
        reverse: bool = False,
    ) -> tuple[list[Publication], StreamPosition]:
        with self._guard("history"):
            top, epoch, flat = await self._eval(
                self._history,
                self._stream_keys(channel),
                [
                    since.offset if since is not None else -1,
                    limit,
                    1 if reverse else 0,
                    _new_epoch(),
                    _ms(META_TTL),
                ],
            )
        publications = [
            decode_publication(flat[i + 1], int(flat[i].partition(b"-")[0]))
            for i in range(0, len(flat), 2)
        ]
        if self._pub_key(channel) in self._channels:
            await self._sync()
        return publications, StreamPosition(int(top), epoch.decode())

    async def _sync(self) -> None:
        """Wait until the publications Redis made before now have reached the hub.

        The pub/sub connection and the command connections are different
        sockets: a history read can come back before a publication it already
        counts arrives by pub/sub. A subscribe drops the pushes its reply
        covers only while it holds them, so it must hold them all: a PING on
        the pub/sub connection is answered after every message sent before it.
        """
        conn = self._conn
        if conn is None or not self._ready:
            return  # nothing is delivered now; the resubscription finds the gaps
        sync = asyncio.get_running_loop().create_future()
        self._syncs.append(sync)
        try:
            await _send(conn, "PING", _MARK_SYNC)
            await asyncio.wait_for(sync, self.command_timeout)
        except (*_UNAVAILABLE, TimeoutError) as e:
            self.errors += 1
            raise BrokerUnavailable(f"redis: pub/sub sync: {e}") from e

    async def remove_history(self, channel: str) -> None:
        """Drop the publications; the epoch and the top stay, as with the memory broker."""
        with self._guard("remove history"):
            await self._command("DEL", self._key(channel, "history"))

    # --- presence ---------------------------------------------------------

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo) -> None:
        encoded = encode_info(info)
        self._presence[(channel, client_id)] = encoded
        with self._guard("add presence"):
            await self._eval(
                self._presence_add,
                self._presence_keys(channel),
                [client_id, encoded, _ms(self.presence_ttl)],
            )

    async def remove_presence(self, channel: str, client_id: str) -> None:
        self._presence.pop((channel, client_id), None)
        with self._guard("remove presence"):
            await self._eval(self._presence_remove, self._presence_keys(channel), [client_id])

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        with self._guard("presence"):
            flat = await self._eval(self._presence_get, self._presence_keys(channel))
        return {flat[i].decode(): decode_info(flat[i + 1]) for i in range(0, len(flat), 2)}

    # --- control messages and the user connections of every node ----------

    async def publish_control(self, message: bytes) -> None:
        with self._guard("publish control"):
            await self._command("PUBLISH", self._control_key, message)

    async def add_user_connection(self, user: str, client_id: str, limit: int) -> bool:
        # Kept (and refreshed) from now on, so one added during an outage is
        # counted once Redis is back; dropped below if refused.
        self._user_connections.add((user, client_id))
        self._counted_any = True
        with self._guard("add user connection"):
            added = await self._eval(
                self._user_add,
                self._user_keys(user),
                [
                    f"{self.node_id} {client_id}",
                    limit,
                    _ms(self.presence_ttl),
                    self.node_id,
                    _ms(self.node_ttl),
                ],
            )
        if not added:
            self._user_connections.discard((user, client_id))
        return bool(added)

    async def remove_user_connection(self, user: str, client_id: str) -> None:
        self._user_connections.discard((user, client_id))
        with self._guard("remove user connection"):
            await self._command("ZREM", self._user_keys(user)[0], f"{self.node_id} {client_id}")

    async def _keep_alive(self) -> None:
        """Keep this node in the live-node set (its user connections count while it is)."""
        key = self._user_keys("")[1]
        while not self._closing:
            if not self._user_connections:
                await asyncio.sleep(NODE_REFRESH)
                continue
            try:
                await self._eval(self._node_alive, [key], [self.node_id, _ms(self.node_ttl)])
            except (*_UNAVAILABLE, RedisError) as e:
                log.debug("refreshing the live-node entry failed: %s", e)
            await asyncio.sleep(NODE_REFRESH)

    async def _refresh_presence(self) -> None:
        """Refresh this node's presence and user connection entries well before they expire."""
        ttl_ms = _ms(self.presence_ttl)
        while not self._closing:
            await asyncio.sleep(self.presence_ttl / 3)
            entries = list(self._presence.items())
            connections = list(self._user_connections)
            try:
                for conn_chunk in _chunks(connections):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for user, client_id in conn_chunk:
                            await self._user_add(
                                keys=self._user_keys(user),
                                args=[
                                    f"{self.node_id} {client_id}",
                                    0,
                                    ttl_ms,
                                    self.node_id,
                                    _ms(self.node_ttl),
                                ],
                                client=pipe,
                            )
                        await pipe.execute()
                    # Removed while being refreshed: remove again.
                    for user, client_id in conn_chunk:
                        if (user, client_id) not in self._user_connections:
                            await self.remove_user_connection(user, client_id)
                for chunk in _chunks(entries):
                    async with self.client.pipeline(transaction=False) as pipe:
                        for (channel, client_id), encoded in chunk:
                            await self._presence_add(
                                keys=self._presence_keys(channel),
                                args=[client_id, encoded, ttl_ms],
                                client=pipe,
                            )
                        await pipe.execute()
            except (*_UNAVAILABLE, RedisError, BrokerUnavailable) as e:
                log.debug("refreshing presence failed: %s", e)


async def _send(conn: AbstractConnection, *args: Any) -> None:
    """Send a command on the pub/sub connection, never reconnecting it behind our back."""
    if not conn.is_connected:
        raise RedisConnectionError("the pub/sub connection is closed")
    await conn.send_command(*args, check_health=False)


@contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE:
        pass
