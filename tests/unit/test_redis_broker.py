"""The Redis broker against a real redis-server: the memory broker's semantics, and more.

Offsets, history limits and time limits, epochs; pub/sub between nodes; presence
that outlives no node; and what happens when Redis goes away and comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError

from tests.conftest import wait_for
from tests.redis_server import RedisServer
from tidings.brokers import BrokerUnavailable, HistoryOptions, create_broker
from tidings.brokers.redis import RedisBroker, decode_publication, encode_publication
from tidings.protocol import ClientInfo, Publication, StreamPosition


class Events:
    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication, str]] = []
        self.joins: list[ClientInfo] = []
        self.leaves: list[ClientInfo] = []
        self.resubscribed: list[Mapping[str, StreamPosition | None]] = []

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        self.publications.append((channel, publication, epoch))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append(info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append(info)

    def on_resubscribed(self, positions: Mapping[str, StreamPosition | None]) -> None:
        self.resubscribed.append(positions)

    @property
    def offsets(self) -> list[int]:
        return [p.offset for _, p, _ in self.publications]


KEEP = HistoryOptions(size=3, ttl=60)

Started = Callable[..., Awaitable[tuple[RedisBroker, Events]]]


@asynccontextmanager
async def started(url: str, **kwargs: Any) -> AsyncIterator[tuple[RedisBroker, Events]]:
    broker = RedisBroker(url, **kwargs)
    events = Events()
    await broker.start(events)
    try:
        yield broker, events
    finally:
        await broker.close()


@pytest.fixture
async def node(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBroker, Events]]:
    async with started(redis_server.unique_url()) as pair:
        yield pair


async def test_broker_is_picked_by_url_scheme() -> None:
    for url in ("redis://127.0.0.1:1/0?prefix=app", "rediss://127.0.0.1:1/0"):
        broker = create_broker(url)
        assert isinstance(broker, RedisBroker)
        await broker.close()
    assert RedisBroker("redis://h/0?prefix=app&presence_ttl=7").prefix == "app"
    assert RedisBroker("redis://h/0?presence_ttl=7").presence_ttl == 7
    with pytest.raises(ValueError, match="prefix"):
        RedisBroker("redis://h/0?prefix=a{b}")


def test_publications_are_encoded_exactly() -> None:
    data = b'{"text": "h\\u00e9llo\\nworld",\n  "n": [1, 2.50, 123456789012345678901234567890]}'
    info = ClientInfo("al ice", "c-1", b'{"a":\n1}', b'"chan \\n info"')
    encoded = encode_publication(data, info, {"k": "v", "x": " y\n"})
    publication = decode_publication(encoded, 7)
    assert publication == Publication(data, 7, info, {"k": "v", "x": " y\n"})
    bare = decode_publication(encode_publication(b"1"))
    assert bare == Publication(b"1")
    assert decode_publication(encode_publication(b"2", ClientInfo("", "c"))).info == ClientInfo(
        "", "c"
    )


async def test_offsets_increase_and_history_keeps_the_latest(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, events = node
    await broker.subscribe("c")
    info = ClientInfo("alice", "c1", b'{"name":"Alice"}')
    positions = [
        await broker.publish("c", b'{"n":%d}' % n, info=info, history=KEEP) for n in range(5)
    ]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    await wait_for(lambda: len(events.publications) == 5)
    assert events.offsets == [1, 2, 3, 4, 5]
    assert {epoch for _, _, epoch in events.publications} == {positions[0].epoch}
    assert events.publications[0][1].info == info

    kept, top = await broker.history("c", since=None, limit=-1)
    assert [p.offset for p in kept] == [3, 4, 5] and top == positions[-1]
    assert [p.data for p in kept] == [b'{"n":2}', b'{"n":3}', b'{"n":4}']
    since, _ = await broker.history("c", since=StreamPosition(3, top.epoch), limit=-1)
    assert [p.offset for p in since] == [4, 5]
    newest, _ = await broker.history("c", since=None, limit=1, reverse=True)
    assert [p.offset for p in newest] == [5]
    oldest, _ = await broker.history("c", since=None, limit=2)
    assert [p.offset for p in oldest] == [3, 4]
    newest_after, _ = await broker.history("c", since=StreamPosition(3, ""), limit=-1, reverse=True)
    assert [p.offset for p in newest_after] == [5, 4]
    nothing, position = await broker.history("c", since=None, limit=0)
    assert nothing == [] and position == top
    past_top, _ = await broker.history("c", since=StreamPosition(5, ""), limit=-1)
    assert past_top == []


async def test_long_histories_are_read_in_batches(node: tuple[RedisBroker, Events]) -> None:
    broker, _ = node
    keep = HistoryOptions(size=2500, ttl=60)
    for n in range(2600):
        await broker.publish("long", b"%d" % n, history=keep)
    everything, top = await broker.history("long", since=None, limit=-1)
    assert [p.offset for p in everything] == list(range(101, 2601)) and top.offset == 2600
    some, _ = await broker.history("long", since=StreamPosition(150, ""), limit=1200)
    assert [p.offset for p in some] == list(range(151, 1351))
    backwards, _ = await broker.history("long", since=None, limit=1500, reverse=True)
    assert [p.offset for p in backwards] == list(range(2600, 1100, -1))


async def test_history_expires_by_time_per_publication(node: tuple[RedisBroker, Events]) -> None:
    broker, _ = node
    first = await broker.publish("c", b"1", history=HistoryOptions(size=10, ttl=0.2))
    await broker.publish("c", b"2", history=HistoryOptions(size=10, ttl=0.2))
    for n in range(3, 6):
        await broker.publish("c", b"%d" % n, history=HistoryOptions(size=10, ttl=60))

    async def kept() -> list[bytes]:
        publications, _ = await broker.history("c", since=None, limit=2)
        return [p.data for p in publications]

    # The expired ones go first; a limit counts only the live ones.
    await wait_for(lambda: _equals(kept(), [b"3", b"4"]), timeout=5)
    _, top = await broker.history("c", since=None, limit=0)
    assert top == StreamPosition(5, first.epoch)  # the stream goes on: same epoch, same top


async def test_when_every_publication_expired_the_position_stays(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, _ = node
    for n in range(3):
        last = await broker.publish("c", b"%d" % n, history=HistoryOptions(size=10, ttl=0.1))

    async def empty() -> bool:
        publications, top = await broker.history("c", since=None, limit=-1)
        return publications == [] and top == last

    await wait_for(empty, timeout=5)
    after = await broker.publish("c", b"x", history=HistoryOptions(size=10, ttl=60))
    assert after == StreamPosition(4, last.epoch)


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_remove_history_keeps_epoch_and_top(node: tuple[RedisBroker, Events]) -> None:
    broker, _ = node
    for n in range(3):
        last = await broker.publish("c", b"%d" % n, history=KEEP)
    await broker.remove_history("c")
    kept, top = await broker.history("c", since=None, limit=-1)
    assert kept == [] and top == last
    assert (await broker.publish("c", b"x", history=KEEP)).offset == 4


async def test_a_lost_stream_comes_back_with_a_new_epoch(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory()
    async with started(redis.url()) as (broker, _):
        first = await broker.publish("c", b"1", history=KEEP)
        await broker.publish("c", b"2", history=KEEP)
        await broker.client.flushall()
        # A client recovering from the old epoch sees another epoch: not recovered.
        kept, position = await broker.history("c", since=StreamPosition(2, first.epoch), limit=-1)
        assert kept == [] and position.offset == 0 and position.epoch != first.epoch
        again = await broker.publish("c", b"3", history=KEEP)
        assert again == StreamPosition(1, position.epoch)
        # Lost between publishes: the next publish starts a new epoch at offset 1.
        await broker.client.flushall()
        third = await broker.publish("c", b"4", history=KEEP)
        assert third.offset == 1 and third.epoch not in (first.epoch, again.epoch)
        kept, _ = await broker.history("c", since=None, limit=-1)
        assert [p.data for p in kept] == [b"4"]


async def test_keys_of_a_channel_share_one_hash_tag_and_expire(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, _ = node
    await broker.publish("chat:x}y", b"1", history=HistoryOptions(size=5, ttl=30))
    await broker.add_presence("chat:x}y", "c1", ClientInfo("u", "c1"))
    keys = sorted(await broker.client.keys(f"{broker.prefix}:*"))
    assert len(keys) == 4  # meta, history, presence, presence expiry
    assert len({key_slot(k) for k in keys}) == 1  # one Redis Cluster slot
    for key in keys:
        assert await broker.client.pttl(key) > 0, key  # nothing lives forever
    meta_ttl = await broker.client.pttl(f"{broker.prefix}:{{chat:x}}y}}:meta")
    assert meta_ttl > 3600_000  # the epoch outlives the history


async def test_without_history_no_offset_and_nothing_for_unsubscribed_channels(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, events = node
    assert await broker.publish("quiet", b"1") == StreamPosition(0, "")
    await broker.subscribe("loud")
    await broker.publish("loud", b"2", tags={"t": "1"})
    await wait_for(lambda: events.publications)
    channel, publication, epoch = events.publications[0]
    assert (channel, publication, epoch) == ("loud", Publication(b"2", tags={"t": "1"}), "")
    await broker.unsubscribe("loud")
    await broker.publish("loud", b"3")
    await broker.subscribe("loud")  # a marker: publications before it were delivered
    await broker.publish("loud", b"4")
    await wait_for(lambda: len(events.publications) == 2)
    assert [p.data for _, p, _ in events.publications] == [b"2", b"4"]


async def test_two_nodes_share_publications_joins_and_leaves(redis_server: RedisServer) -> None:
    url = redis_server.unique_url()
    async with started(url) as (a, seen_a), started(url) as (b, seen_b):
        await a.subscribe("room")
        await b.subscribe("room")
        alice = ClientInfo("alice", "c1", b'{"x":1}', b'{"y":2}')
        await a.publish_join("room", alice)
        offsets = []
        for n in range(10):
            publisher = a if n % 2 else b
            offsets.append((await publisher.publish("room", b"%d" % n, history=KEEP)).offset)
        await b.publish_leave("room", alice)
        assert offsets == list(range(1, 11))
        for seen in (seen_a, seen_b):
            await wait_for(lambda seen=seen: len(seen.publications) == 10 and seen.leaves)
            assert seen.offsets == offsets
            assert seen.joins == [alice] and seen.leaves == [alice]


async def test_concurrent_publishes_from_two_nodes_get_distinct_offsets(
    redis_server: RedisServer,
) -> None:
    url = redis_server.unique_url()
    async with started(url) as (a, seen_a), started(url) as (b, seen_b):
        await a.subscribe("c")
        await b.subscribe("c")
        keep = HistoryOptions(size=1000, ttl=60)
        results = await asyncio.gather(
            *((a if n % 2 else b).publish("c", b"%d" % n, history=keep) for n in range(200))
        )
        assert sorted(p.offset for p in results) == list(range(1, 201))
        for seen in (seen_a, seen_b):
            await wait_for(lambda seen=seen: len(seen.publications) == 200)
            assert seen.offsets == list(range(1, 201))  # every node, the same order
        kept, _ = await a.history("c", since=None, limit=-1)
        assert [p.offset for p in kept] == list(range(1, 201))


async def test_presence_across_nodes(redis_server: RedisServer) -> None:
    url = redis_server.unique_url()
    async with started(url) as (a, _), started(url) as (b, _):
        alice = ClientInfo("alice", "c1", b'{"a":1}')
        await a.add_presence("room", "c1", alice)
        await b.add_presence("room", "c2", ClientInfo("bob", "c2"))
        assert set(await a.presence("room")) == {"c1", "c2"}
        await b.remove_presence("room", "c2")
        assert await b.presence("room") == {"c1": alice}
        assert await a.presence("empty") == {}


async def test_presence_of_a_dead_node_expires_and_a_live_node_keeps_its_own(
    redis_server: RedisServer,
) -> None:
    url = redis_server.unique_url(presence_ttl=0.6)
    async with started(url) as (live, _):
        dead = RedisBroker(url)
        await dead.start(Events())
        await dead.add_presence("room", "gone", ClientInfo("ghost", "gone"))
        await live.add_presence("room", "here", ClientInfo("alice", "here"))
        assert set(await live.presence("room")) == {"gone", "here"}
        await dead.close()  # as good as a crash: nobody refreshes "gone" any more
        started_at = time.monotonic()
        await wait_for(lambda: _equals(_ids(live), {"here"}), timeout=5)
        assert time.monotonic() - started_at < 3
        # The live node refreshes its entry: it stays for several ttls.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            assert await _ids(live) == {"here"}
            await asyncio.sleep(0.1)


async def _ids(broker: RedisBroker) -> set[str]:
    return set(await broker.presence("room"))


async def test_a_killed_pubsub_connection_comes_back_and_reports_positions(
    redis_server: RedisServer,
) -> None:
    url = redis_server.unique_url()
    async with started(url) as (broker, events), started(url) as (other, _):
        await broker.subscribe("c")
        await broker.subscribe("plain")
        first = await other.publish("c", b"1", history=KEEP)
        await wait_for(lambda: events.offsets == [1])
        await broker.client.client_kill_filter(_type="pubsub")
        await wait_for(lambda: not broker.ready, timeout=5)
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("elsewhere")
        # Published while this node's pub/sub connection is down: missed by it.
        missed = await other.publish("c", b"2", history=KEEP)
        await wait_for(lambda: broker.ready and events.resubscribed, timeout=10)
        positions = events.resubscribed[0]
        assert positions["c"] == missed or positions["c"] == first
        assert positions["plain"] is None  # no stream
        # Subscribed again: the next publication arrives.
        await other.publish("c", b"3", history=KEEP)
        await wait_for(lambda: events.offsets[-1:] == [3], timeout=5)


async def test_commands_fail_visibly_while_redis_is_down_and_work_after(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory(persistent=True)
    async with started(redis.url(), reconnect_max=0.3) as (broker, events):
        await broker.subscribe("c")
        before = await broker.publish("c", b"1", history=KEEP)
        redis.stop()
        await wait_for(lambda: not broker.ready, timeout=5)
        for call in (
            broker.publish("c", b"2", history=KEEP),
            broker.publish("c", b"2"),
            broker.history("c", since=None, limit=-1),
            broker.presence("c"),
            broker.add_presence("c", "x", ClientInfo("u", "x")),
            broker.publish_join("c", ClientInfo("u", "x")),
            broker.subscribe("d"),
        ):
            with pytest.raises(BrokerUnavailable):
                await call
        assert broker.errors == 7  # tidings_broker_errors
        await redis.start_async()
        await wait_for(lambda: broker.ready, timeout=10)
        assert broker.reconnects == 1  # tidings_broker_reconnects
        await wait_for(lambda: events.resubscribed, timeout=5)
        assert events.resubscribed[0] == {"c": before}  # the data is back: no gap
        after = await broker.publish("c", b"3", history=KEEP)
        assert after == StreamPosition(2, before.epoch)
        await wait_for(lambda: events.offsets == [1, 2])


async def test_a_restart_without_data_changes_the_epoch(
    redis_factory: Callable[..., RedisServer],
) -> None:
    redis = redis_factory()
    async with started(redis.url(), reconnect_max=0.3) as (broker, events):
        await broker.subscribe("c")
        before = await broker.publish("c", b"1", history=KEEP)
        redis.stop()
        await wait_for(lambda: not broker.ready, timeout=5)
        await redis.start_async()
        await wait_for(lambda: events.resubscribed, timeout=10)
        assert events.resubscribed[0] == {"c": None}  # the stream is gone
        _, position = await broker.history("c", since=before, limit=-1)
        assert position.epoch != before.epoch and position.offset == 0


# --- the auto-pipeline: bounded connections, shared round trips --------------


def test_connection_options_come_from_the_url() -> None:
    broker = RedisBroker("redis://h/0?max_connections=3&command_timeout=0.5&socket_timeout=9")
    assert broker.max_connections == 3 and broker.command_timeout == 0.5
    assert broker.client.connection_pool.max_connections == 3
    assert "max_connections" not in broker.redis_url and "socket_timeout" in broker.redis_url
    default = RedisBroker("redis://h/0")
    assert default.max_connections == 16 and default.command_timeout == 5
    for bad in ("max_connections=0", "command_timeout=0", "max_connections=x"):
        with pytest.raises(ValueError):
            RedisBroker(f"redis://h/0?{bad}")


async def test_concurrent_operations_share_pipelines_and_connections(
    redis_server: RedisServer,
) -> None:
    async with started(redis_server.unique_url(max_connections=4)) as (broker, events):
        await broker.subscribe("c")
        pipelines = broker.pipeline.pipelines
        keep = HistoryOptions(size=1000, ttl=60)
        count = 500  # five times redis-py's pool limit, over four connections
        results = await asyncio.gather(
            *(broker.publish("c", b"%d" % n, history=keep) for n in range(count)),
            *(
                broker.add_presence("c", f"c{n}", ClientInfo(f"u{n}", f"c{n}"))
                for n in range(count)
            ),
        )
        assert sorted(p.offset for p in results[:count]) == list(range(1, count + 1))
        sent = broker.pipeline.pipelines - pipelines
        assert 1 <= sent < count // 10, sent  # many commands per round trip
        assert len(await broker.presence("c")) == count
        await wait_for(lambda: len(events.publications) == count)
        assert events.offsets == list(range(1, count + 1))
        # Never more connections than asked for (the pub/sub one is apart).
        pool = broker.client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= 4
        metrics = broker.command_metrics
        assert metrics.in_flight == 0 and metrics.busy == 0 and metrics.timeouts == 0
        assert metrics.pipeline_size.total == metrics.latency.count >= 2 * count
        assert metrics.pipeline_size.count == broker.pipeline.pipelines


async def test_a_failing_command_fails_only_its_own_caller(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, _ = node
    await broker.client.set(f"{broker.prefix}:{{bad}}:meta", "not a hash")
    pipelines = broker.pipeline.pipelines
    results = await asyncio.gather(
        broker.publish("good", b"1", history=KEEP),
        broker.publish("bad", b"2", history=KEEP),  # the script hits a wrong-type key
        broker.pipeline.execute("INCR", f"{broker.prefix}:x"),
        broker.pipeline.execute("NO-SUCH-COMMAND"),
        broker.publish("good", b"3", history=KEEP),
        return_exceptions=True,
    )
    assert broker.pipeline.pipelines == pipelines + 1  # one round trip for all five
    first, bad, incr, unknown, second = results
    assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)
    assert isinstance(unknown, ResponseError)
    assert incr == 1
    assert isinstance(first, StreamPosition) and isinstance(second, StreamPosition)
    assert (first.offset, second.offset) == (1, 2)
    kept, _ = await broker.history("good", since=None, limit=-1)
    assert [p.data for p in kept] == [b"1", b"3"]


async def test_scripts_flushed_from_redis_are_loaded_again(
    node: tuple[RedisBroker, Events],
) -> None:
    broker, _ = node
    await broker.publish("c", b"1", history=KEEP)
    await broker.client.script_flush()
    results = await asyncio.gather(*(broker.publish("c", b"x", history=KEEP) for _ in range(20)))
    assert sorted(p.offset for p in results) == list(range(2, 22))  # each ran once


@asynccontextmanager
async def every_connection_taken(broker: RedisBroker) -> AsyncIterator[list[Any]]:
    """Hold every connection of the broker's pool (as if others were using them)."""
    pool = broker.client.connection_pool
    held = [await pool.get_connection() for _ in range(broker.max_connections)]
    try:
        yield held
    finally:
        for conn in held:
            await pool.release(conn)


async def test_a_saturated_pool_makes_operations_wait_not_fail(redis_server: RedisServer) -> None:
    async with started(redis_server.unique_url(max_connections=2)) as (broker, _):
        async with every_connection_taken(broker) as held:
            calls = [
                asyncio.ensure_future(broker.publish("c", b"%d" % n, history=KEEP))
                for n in range(300)
            ]
            await wait_for(lambda: broker.pipeline.queued == 300)
            assert not any(c.done() for c in calls)
            await broker.client.connection_pool.release(held.pop())  # one comes free
            results = await asyncio.gather(*calls)
        assert sorted(p.offset for p in results) == list(range(1, 301))
        assert broker.command_metrics.timeouts == 0


async def test_an_operation_waiting_too_long_fails_unavailable_and_is_never_sent(
    redis_server: RedisServer,
) -> None:
    timeout = 0.3
    url = redis_server.unique_url(max_connections=1, command_timeout=timeout)
    async with started(url) as (broker, _):
        loop = asyncio.get_running_loop()
        async with every_connection_taken(broker):
            started_at = loop.time()
            with pytest.raises(BrokerUnavailable, match="no redis connection free"):
                await broker.publish("c", b"late", history=KEEP)
            assert loop.time() - started_at >= timeout
            # A caller that gives up (cancelled) takes its command out too.
            gone = asyncio.ensure_future(broker.publish("c", b"gone", history=KEEP))
            await wait_for(lambda: broker.pipeline.queued == 1)
            gone.cancel()
        assert broker.command_metrics.timeouts == 1
        # Neither was published: the next publication is the stream's first.
        assert (await broker.publish("c", b"now", history=KEEP)).offset == 1
        kept, _ = await broker.history("c", since=None, limit=-1)
        assert [p.data for p in kept] == [b"now"]


async def test_operations_after_close_fail_unavailable(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.unique_url())
    await broker.start(Events())
    await broker.close()
    with pytest.raises(BrokerUnavailable):
        await broker.publish("c", b"1", history=KEEP)
