"""A storm on one node over Redis (issue 13): many operations at once queue, none is refused.

1,000 clients connect to one node at once, each subscribes to the same ``chat:``
channel (presence, join/leave, history: several Redis operations per
subscribe, all in flight together), and every subscribe succeeds; a publication
then reaches all of them. And 1,000 server-API publishes at once all succeed,
with offsets 1..1000, each once. Before the Redis broker bounded and pipelined
its commands, redis-py's connection pool refused everything past its 100th
connection (error 100, "broker unavailable").

The client side opens its WebSockets a bounded number at a time (handshakes
need no Redis), then sends every connect, and then every subscribe, at once:
the server sees them together.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis
from websockets.asyncio.client import connect

from tests.conftest import API_KEY, Running, running_server, test_settings, wait_for
from tests.integration.wsclient import Message, WSClient
from tests.redis_server import RedisServer
from tidings.brokers.redis import RedisBroker
from tidings.config import DEFAULT_NAMESPACES

CLIENTS = 1000
PUBLISHES = 1000
CHANNEL = "chat:storm"
# Client side only: WebSocket handshakes in flight at once.
OPENING_AT_ONCE = 100
# Generous: the server and the 1,000 clients share one event loop on a shared machine.
TIMEOUT = 30.0

T = TypeVar("T")


def raise_file_limit(wanted: int) -> None:
    """Each client costs two descriptors here (its socket and the server's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def storm_settings(tmp_path: Path, redis: RedisServer) -> Any:
    # The chat namespace as it ships, except that joins and leaves go to the
    # clients that ask (none here) rather than to all: each join still travels
    # through Redis, but 1,000 x 1,000 join pushes are not this test's subject.
    chat = DEFAULT_NAMESPACES["chat"].model_copy(update={"force_push_join_leave": False})
    return test_settings(
        tmp_path,
        broker_url=redis.unique_url(),
        namespaces={"chat": chat},
    )


async def bounded(limit: int, calls: list[Awaitable[T]]) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


@asynccontextmanager
async def clients(server: Running, count: int) -> AsyncIterator[list[WSClient]]:
    opened: list[WSClient] = []

    async def open_one() -> None:
        ws = await connect(
            server.ws_url,
            open_timeout=TIMEOUT,
            close_timeout=5,
            ping_interval=None,
            max_size=2**22,
        )
        opened.append(WSClient(ws))

    try:
        await bounded(OPENING_AT_ONCE, [open_one() for _ in range(count)])
        yield opened
    finally:
        await asyncio.gather(*(c.ws.close() for c in opened), return_exceptions=True)


async def all_at_once(
    clients: list[WSClient], command: str, params: list[Message]
) -> list[Message]:
    """Send one command from every client, then read every reply."""
    ids = [c.new_id() for c in clients]
    await asyncio.gather(
        *(c.send({"id": i, command: p}) for c, i, p in zip(clients, ids, params, strict=True))
    )
    return await asyncio.gather(
        *(c.reply(i, timeout=TIMEOUT) for c, i in zip(clients, ids, strict=True))
    )


def errors(replies: list[Message]) -> list[Any]:
    return [r["error"] for r in replies if "error" in r]


async def _count(items: Awaitable[list[Any]], expected: int) -> bool:
    return len(await items) == expected


async def request(server: Running, path: str, payload: Any = None) -> tuple[int, bytes]:
    """One HTTP request (POST with a payload) on a connection of its own: HTTP/1.1
    by hand, as an HTTP client's pool costs more than the server at a thousand
    requests at once."""
    body = b"" if payload is None else json.dumps(payload).encode()
    head = (
        f"{'GET' if payload is None else 'POST'} {path} HTTP/1.1\r\n"
        f"Host: {server.host}:{server.port}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode() + body)
        response = await asyncio.wait_for(reader.read(), TIMEOUT)  # until the server closes
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    headers, _, content = rest.partition(b"\r\n\r\n")
    assert b"chunked" not in headers.lower(), headers
    return int(status_line.split()[1]), content


async def publish(server: Running, data: Any) -> tuple[int, Any]:
    status, content = await request(server, "/api/publish", {"channel": CHANNEL, "data": data})
    return status, json.loads(content)


def sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


async def test_a_thousand_clients_subscribe_at_once_and_all_get_the_publication(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    raise_file_limit(4 * CLIENTS + 1000)
    settings = storm_settings(tmp_path, redis_server)
    async with running_server(settings) as server, clients(server, CLIENTS) as conns:
        tokens = [{"token": server.token(f"user{i}")} for i in range(CLIENTS)]
        connected = await all_at_once(conns, "connect", tokens)
        assert not errors(connected), errors(connected)[:3]
        subscribed = await all_at_once(conns, "subscribe", [{"channel": CHANNEL}] * CLIENTS)
        failed = errors(subscribed)
        assert not failed, f"{len(failed)} of {CLIENTS} subscribes failed, e.g. {failed[:3]}"
        assert all(r["subscribe"].get("recoverable") for r in subscribed)

        broker = server.tidings.hub.broker
        assert isinstance(broker, RedisBroker)
        async with Redis(port=redis_server.port) as redis:  # a look from outside the node
            presence = await redis.hlen(f"{broker.prefix}:{{{CHANNEL}}}:presence")
            assert presence == CLIENTS
            # Each connection is counted for the per-user limit (after its connect reply).
            users = f"{broker.prefix}:cluster:{{users}}:user:*"
            await wait_for(lambda: _count(redis.keys(users), CLIENTS), timeout=TIMEOUT)

        status, reply = await publish(server, {"text": "to all"})
        assert status == 200, reply
        offset = reply["result"]["offset"]
        got = await asyncio.gather(
            *(c.publication(CHANNEL, {"text": "to all"}, timeout=TIMEOUT) for c in conns)
        )
        assert [p.get("offset") for p in got] == [offset] * CLIENTS


async def test_a_thousand_server_api_publishes_at_once_all_succeed_in_one_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    raise_file_limit(4 * PUBLISHES + 1000)
    settings = storm_settings(tmp_path, redis_server)
    async with running_server(settings) as server, clients(server, 1) as (watcher,):
        await watcher.connect(server.token("watcher"))
        await watcher.subscribe(CHANNEL)
        responses = await asyncio.gather(*(publish(server, {"n": n}) for n in range(PUBLISHES)))
        bad = [r for r in responses if r[0] != 200]
        assert not bad, f"{len(bad)} of {PUBLISHES} publishes failed, e.g. {bad[:3]}"
        results = [body["result"] for _, body in responses]
        assert sorted(r["offset"] for r in results) == list(range(1, PUBLISHES + 1))
        assert len({r["epoch"] for r in results}) == 1
        # The subscriber gets them all, once each, in offset order.
        data = await watcher.publications(CHANNEL, PUBLISHES, timeout=TIMEOUT)
        by_offset = sorted(range(PUBLISHES), key=lambda n: results[n]["offset"])
        assert data == [{"n": n} for n in by_offset]

        # The node pipelined them (far fewer pipelines than operations); none timed out.
        status, content = await request(server, "/metrics")
        assert status == 200
        metrics = content.decode()
        operations = sample(metrics, "tidings_redis_latency_seconds_count")
        assert operations >= PUBLISHES
        assert sample(metrics, "tidings_redis_pipeline_size_sum") >= operations
        assert sample(metrics, "tidings_redis_pipeline_size_count") < operations / 2
        assert sample(metrics, "tidings_redis_timeouts_total") == 0
