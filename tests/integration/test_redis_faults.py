"""Redis failures, with real servers, a real redis-server and the real Python SDK.

Each test counts every publication: the ones the server API acknowledged must
all reach each subscriber, in order and once, or the subscriber must be told
``recovered: false``. Every wait is bounded and polls (tests.conftest.wait_for).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import Client
from centrifuge.exceptions import ReplyError

from tests.conftest import API_KEY, Running, running_server, test_settings, wait_for
from tests.integration.test_python_sdk import ClientRecorder, Recorder
from tests.redis_server import RedisServer
from tidings.brokers.redis import RedisBroker

# How long Redis stays down in the outage test.
OUTAGE_SECONDS = 3.0


@asynccontextmanager
async def node(tmp_path: Path, url: str, name: str = "a") -> AsyncIterator[Running]:
    settings = test_settings(tmp_path / name, broker_url=url, node_name=name)
    async with running_server(settings) as server:
        yield server


@asynccontextmanager
async def api(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"X-API-Key": API_KEY}, timeout=10
    ) as http:
        yield http


async def publish(http: httpx.AsyncClient, channel: str, data: Any) -> httpx.Response:
    return await http.post("/api/publish", json={"channel": channel, "data": data})


async def status(http: httpx.AsyncClient, path: str) -> int:
    return (await http.get(path)).status_code


@asynccontextmanager
async def subscriber(
    server: Running, user: str, channel: str
) -> AsyncIterator[tuple[Client, Recorder]]:
    client = Client(server.ws_url, token=server.token(user))
    await client.connect()
    try:
        seen = Recorder()
        sub = client.new_subscription(channel, seen)
        await sub.subscribe()
        await sub.ready(timeout=10)
        yield client, seen
    finally:
        await client.disconnect()


def assert_in_order_once(seen: Recorder, expected: list[Any]) -> None:
    assert seen.data == expected, f"got {len(seen.data)} of {len(expected)}"
    offsets = [p.pub.offset for p in seen.publications]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))


async def test_redis_outage_publishes_fail_visibly_and_nothing_acknowledged_is_lost(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory(persistent=True)  # a restart finds its data again
    url = redis.url(prefix="outage", reconnect_max=0.5)
    async with node(tmp_path, url) as server, api(server) as http:
        async with subscriber(server, "alice", "chat:outage") as (alice, seen):
            acked: list[int] = []
            for n in range(5):
                assert (await publish(http, "chat:outage", {"n": n})).status_code == 200
                acked.append(n)
            await wait_for(lambda: len(seen.publications) == 5)

            redis.stop()
            # /readyz is red while the node cannot deliver.
            await wait_for(lambda: _is(status(http, "/readyz"), 503), timeout=5)
            late = Client(server.ws_url, token=server.token("bob"))
            async with AsyncExitStack() as stack:
                await late.connect()
                stack.push_async_callback(late.disconnect)
                late_seen = Recorder()
                late_sub = late.new_subscription("chat:outage", late_seen)
                await late_sub.subscribe()  # refused with a temporary error: the SDK retries

                failed = 0
                loop = asyncio.get_running_loop()
                until = loop.time() + OUTAGE_SECONDS
                while loop.time() < until:
                    response = await publish(http, "chat:outage", {"n": "lost"})
                    assert response.status_code == 503  # never a false success
                    error = response.json()["error"]
                    assert error["code"] == 100 and error["temporary"] is True
                    failed += 1
                    with pytest.raises(ReplyError) as refused:
                        await alice.publish("chat:outage", {"n": "lost"})
                    assert refused.value.code == 100
                    assert await status(http, "/readyz") == 503
                    await asyncio.sleep(0.2)  # pace the attempts during the outage
                assert failed >= 5

                await redis.start_async()
                await wait_for(lambda: _is(status(http, "/readyz"), 200), timeout=10)
                for n in range(5, 10):
                    response = await publish(http, "chat:outage", {"n": n})
                    assert response.status_code == 200
                    acked.append(n)
                await wait_for(lambda: len(seen.publications) >= len(acked), timeout=10)
                assert_in_order_once(seen, [{"n": n} for n in acked])
                # The subscription refused during the outage went through after it.
                await late_sub.ready(timeout=15)
                assert (await publish(http, "chat:outage", {"n": 10})).status_code == 200
                await wait_for(lambda: late_seen.data[-1:] == [{"n": 10}], timeout=10)
            await wait_for(lambda: len(seen.publications) == 11)
            assert_in_order_once(seen, [{"n": n} for n in range(11)])
            assert len(seen.subscribed) == 1  # the data survived: nothing to recover


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_lost_pubsub_connection_is_a_gap_found_by_offset_and_recovered(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    async with node(tmp_path, url) as server, api(server) as http:
        broker = server.tidings.hub.broker
        assert isinstance(broker, RedisBroker)
        broker.reconnect_base = 0.6  # a window in which publications miss this node
        async with subscriber(server, "alice", "gaps") as (_, seen):
            for n in range(3):
                assert (await publish(http, "gaps", {"n": n})).status_code == 200
            await wait_for(lambda: len(seen.publications) == 3)

            await broker.client.client_kill_filter(_type="pubsub")
            await wait_for(lambda: not broker.ready, timeout=5)
            for n in range(3, 8):  # acknowledged, but this node's pub/sub is down
                assert (await publish(http, "gaps", {"n": n})).status_code == 200
            await wait_for(lambda: broker.ready, timeout=10)
            # The node finds the gap by offset and has the client recover it.
            await wait_for(lambda: len(seen.subscribed) == 2, timeout=10)
            again = seen.subscribed[-1]
            assert again.was_recovering and again.recovered
            for n in range(8, 10):
                assert (await publish(http, "gaps", {"n": n})).status_code == 200
            await wait_for(lambda: len(seen.publications) >= 10, timeout=10)
            assert_in_order_once(seen, [{"n": n} for n in range(10)])


async def test_a_gap_on_a_server_side_subscription_reconnects_and_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    async with node(tmp_path, url) as server, api(server) as http:
        broker = server.tidings.hub.broker
        assert isinstance(broker, RedisBroker)
        broker.reconnect_base = 0.6
        events = ClientRecorder()
        # The token subscribes the client to "feed" on the server side.
        token = server.token("alice", channels=["feed"])
        client = Client(server.ws_url, token=token, events=events)
        await client.connect()
        try:
            assert (await publish(http, "feed", {"n": 0})).status_code == 200
            await wait_for(lambda: len(events.server_publications) == 1)
            await broker.client.client_kill_filter(_type="pubsub")
            await wait_for(lambda: not broker.ready, timeout=5)
            for n in range(1, 4):
                assert (await publish(http, "feed", {"n": n})).status_code == 200
            # An unsubscribe push would end a server-side subscription for good:
            # the node closes with 3010 instead, and the reconnect recovers.
            await wait_for(lambda: len(events.connected) == 2, timeout=10)
            await wait_for(lambda: len(events.server_publications) >= 4, timeout=10)
            assert [p.pub.data for p in events.server_publications] == [{"n": n} for n in range(4)]
        finally:
            await client.disconnect()


async def test_a_stream_lost_in_place_is_found_by_its_epoch(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    async with node(tmp_path, url) as server, api(server) as http:
        broker = server.tidings.hub.broker
        assert isinstance(broker, RedisBroker)
        async with subscriber(server, "alice", "lost") as (_, seen):
            for n in range(3):
                assert (await publish(http, "lost", {"n": n})).status_code == 200
            await wait_for(lambda: len(seen.publications) == 3)
            # The stream's keys vanish (eviction, a FLUSHDB) with no disconnect.
            await broker.client.delete(*await broker.client.keys(f"{broker.prefix}:*"))
            response = await publish(http, "lost", {"n": 3})
            assert response.json()["result"]["offset"] == 1  # a new stream, a new epoch
            await wait_for(lambda: len(seen.subscribed) == 2, timeout=10)
            again = seen.subscribed[-1]
            assert again.was_recovering and not again.recovered  # told, not fooled
            assert (await publish(http, "lost", {"n": 4})).status_code == 200
            await wait_for(lambda: seen.data[-1:] == [{"n": 4}], timeout=10)


async def test_redis_restarted_without_its_data_tells_clients_they_did_not_recover(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    redis = redis_factory()
    url = redis.url(prefix="amnesia", reconnect_max=0.5)
    async with node(tmp_path, url) as server, api(server) as http:
        async with subscriber(server, "alice", "amnesia") as (_, seen):
            first = await publish(http, "amnesia", {"n": 0})
            old_epoch = first.json()["result"]["epoch"]
            await wait_for(lambda: len(seen.publications) == 1)

            redis.stop()
            await wait_for(lambda: _is(status(http, "/readyz"), 503), timeout=5)
            redis.wipe()
            await redis.start_async()
            await wait_for(lambda: _is(status(http, "/readyz"), 200), timeout=10)

            await wait_for(lambda: len(seen.subscribed) == 2, timeout=10)
            again = seen.subscribed[-1]
            assert again.was_recovering and not again.recovered
            assert again.stream_position is not None
            assert again.stream_position.epoch != old_epoch
            after = await publish(http, "amnesia", {"n": 1})
            assert after.json()["result"]["offset"] == 1
            assert after.json()["result"]["epoch"] != old_epoch
            await wait_for(lambda: seen.data == [{"n": 0}, {"n": 1}], timeout=10)


async def test_two_nodes_publishing_concurrently_keep_one_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    count = 100
    async with (
        node(tmp_path, url, "a") as a,
        node(tmp_path, url, "b") as b,
        api(a) as http_a,
        api(b) as http_b,
        subscriber(a, "alice", "chat:both") as (_, on_a),
        subscriber(b, "bob", "chat:both") as (_, on_b),
        subscriber(b, "carol", "chat:both") as (_, also_on_b),
    ):
        responses = await asyncio.gather(
            *(publish(http_a if n % 2 else http_b, "chat:both", {"n": n}) for n in range(count))
        )
        assert all(r.status_code == 200 for r in responses)
        results = [r.json()["result"] for r in responses]
        assert sorted(r["offset"] for r in results) == list(range(1, count + 1))
        assert len({r["epoch"] for r in results}) == 1
        by_offset = sorted(range(count), key=lambda n: results[n]["offset"])
        expected = [{"n": n} for n in by_offset]
        for seen in (on_a, on_b, also_on_b):
            await wait_for(lambda seen=seen: len(seen.publications) >= count, timeout=15)
            assert_in_order_once(seen, expected)
        assert on_a.data == on_b.data == also_on_b.data
