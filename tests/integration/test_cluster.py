"""Several real nodes behind nginx on one Redis: node crashes, rolling restarts, a Redis
outage, concurrent publishers, and actions that must reach every node.

Each node is a ``tidings serve`` subprocess (tests/cluster.py); clients are the real
centrifuge-python SDK, connected through nginx (round-robin, no sticky sessions)
unless a test needs one on a given node. Every publication is counted: those the
server API acknowledged must reach every subscriber exactly once, in offset order
with no gap, or the subscriber must be told ``recovered: false``. Each fault test
prints its figures (published, delivered, recovered, lost) and puts them in its
assertion messages. Every wait is bounded and polls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    PublicationContext,
    ServerSubscribedContext,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

from tests.cluster import Cluster, Node, cluster
from tests.conftest import wait_for
from tests.integration.wsclient import ws_client
from tests.redis_server import RedisServer

# --- what each client saw ------------------------------------------------------------


class Seen(ClientEventHandler):
    """A client's connection events."""

    def __init__(self) -> None:
        self.connecting: list[int] = []  # codes of reconnects (not the first connect)
        self.connected = 0
        self.disconnected: list[int] = []
        self.server_subscribed: list[ServerSubscribedContext] = []

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        if ctx.code != 0:  # 0: connect() called
            self.connecting.append(ctx.code)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected += 1

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx.code)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.server_subscribed.append(ctx)


class Stream(SubscriptionEventHandler):
    """One subscription's publications and (re)subscriptions, in the order they came."""

    def __init__(self) -> None:
        self.subscribed: list[SubscribedContext] = []
        self.unsubscribed: list[int] = []
        self.publications: list[tuple[int, Any]] = []  # (offset, data["n"])
        self.recovered = 0  # publications that came with a recovering subscribe
        self.log: list[str] = []  # everything, for assertion messages

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)
        position = ctx.stream_position
        self.log.append(
            f"subscribed(recovering={ctx.was_recovering}, recovered={ctx.recovered}, "
            f"top={position.offset if position else None})"
        )

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx.code)
        self.log.append(f"unsubscribed({ctx.code})")

    async def on_publication(self, ctx: PublicationContext) -> None:
        last = self.subscribed[-1] if self.subscribed else None
        position = last.stream_position if last is not None else None
        if (
            last is not None
            and last.was_recovering
            and last.recovered
            and position is not None
            and ctx.pub.offset <= position.offset
        ):
            self.recovered += 1
        self.log.append(str(ctx.pub.offset))
        data = ctx.pub.data
        self.publications.append(
            (ctx.pub.offset, data.get("n") if isinstance(data, dict) else data)
        )

    @property
    def unrecovered(self) -> int:
        """Resubscriptions that were told ``recovered: false``."""
        return sum(1 for s in self.subscribed if s.was_recovering and not s.recovered)


@dataclass
class Watched:
    name: str
    client: Client
    seen: Seen
    stream: Stream

    @property
    def disturbed(self) -> bool:
        return (
            bool(self.seen.connecting or self.seen.disconnected) or len(self.stream.subscribed) > 1
        )


@asynccontextmanager
async def subscribers(
    url: str | Callable[[int], str], tokens: Callable[[int], str], channel: str, count: int
) -> AsyncIterator[list[Watched]]:
    """``count`` SDK clients, each subscribed to ``channel`` (recoverable); all closed after."""
    async with AsyncExitStack() as stack:
        watched = []
        for i in range(count):
            seen, stream = Seen(), Stream()
            address = url(i) if callable(url) else url
            client = Client(
                address,
                token=tokens(i),
                events=seen,
                min_reconnect_delay=0.1,
                max_reconnect_delay=1.0,
            )
            await client.connect()
            stack.push_async_callback(client.disconnect)
            sub = client.new_subscription(channel, stream)
            await sub.subscribe()
            await sub.ready(timeout=10)
            watched.append(Watched(f"c{i}", client, seen, stream))
        yield watched


# --- publishing and the figures ------------------------------------------------------


@dataclass
class Published:
    """Every publish attempt, by the ``n`` it carried."""

    acked: dict[int, int] = field(default_factory=dict)  # n -> offset (HTTP 200)
    refused: list[int] = field(default_factory=list)  # HTTP 503: failed visibly
    unknown: list[int] = field(default_factory=list)  # cut off (502, reset): maybe published
    attempts: int = 0


async def publish_one(http: httpx.AsyncClient, channel: str, n: int, out: Published) -> int:
    out.attempts += 1
    try:
        response = await http.post("/api/publish", json={"channel": channel, "data": {"n": n}})
    except httpx.TransportError:
        out.unknown.append(n)
        return 0
    if response.status_code == 200 and "result" in response.json():
        out.acked[n] = response.json()["result"]["offset"]
    elif response.status_code == 503:
        out.refused.append(n)
    else:
        out.unknown.append(n)
    return response.status_code


@asynccontextmanager
async def publishing(
    http: httpx.AsyncClient, channel: str, pace: float = 0.02
) -> AsyncIterator[Published]:
    """Publish {"n": 0}, {"n": 1}, ... every ``pace`` seconds until the block ends."""
    out = Published()
    stop = asyncio.Event()

    async def run() -> None:
        n = 0
        while not stop.is_set():
            await publish_one(http, channel, n, out)
            n += 1
            await asyncio.sleep(pace)

    task = asyncio.create_task(run())
    try:
        yield out
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def problems(stream: Stream, published: Published) -> list[str]:
    """What is wrong with what one subscriber got: gaps, duplicates, strangers, losses."""
    found = []
    offsets = [o for o, _ in stream.publications]
    ns = [n for _, n in stream.publications]
    if offsets and offsets != list(range(offsets[0], offsets[0] + len(offsets))):
        found.append(f"offsets not consecutive: {offsets}")
    if len(set(ns)) != len(ns):
        found.append(f"duplicates: {sorted(n for n in set(ns) if ns.count(n) > 1)}")
    strangers = [n for n in ns if n not in published.acked and n not in published.unknown]
    if strangers:
        found.append(f"publications never acknowledged nor in doubt: {strangers}")
    wrong = [
        (n, o) for o, n in stream.publications if n in published.acked and published.acked[n] != o
    ]
    if wrong:
        found.append(f"offsets other than the acknowledged ones: {wrong}")
    if stream.unrecovered == 0 and lost(stream, published):
        found.append(f"lost without being told: {lost(stream, published)}")
    return found


def lost(stream: Stream, published: Published) -> list[int]:
    got = {n for _, n in stream.publications}
    return [n for n in published.acked if n not in got]


def figures(title: str, published: Published, watched: list[Watched], seconds: float) -> str:
    delivered = sum(len(w.stream.publications) for w in watched)
    text = (
        f"{title}: published {published.attempts} (acknowledged {len(published.acked)}, "
        f"refused with 503 {len(published.refused)}, in doubt {len(published.unknown)}); "
        f"delivered {delivered} to {len(watched)} clients "
        f"(expected {len(published.acked) * len(watched)}); "
        f"recovered {sum(w.stream.recovered for w in watched)}; "
        f"lost {sum(len(lost(w.stream, published)) for w in watched)}; "
        f"recovered:false {sum(w.stream.unrecovered for w in watched)}; "
        f"reconnects {sum(len(w.seen.connecting) for w in watched)}; {seconds:.1f}s"
    )
    print(text)
    return text


async def all_delivered(watched: list[Watched], published: Published, timeout: float) -> None:
    def done() -> bool:
        return all(not lost(w.stream, published) for w in watched)

    try:
        await wait_for(done, timeout=timeout, interval=0.05)
    except AssertionError:
        pass  # the assertions that follow say what is missing


def assert_nothing_lost(watched: list[Watched], published: Published, report: str) -> None:
    for w in watched:
        found = problems(w.stream, published)
        assert not found, f"{w.name}: {found}\n{' '.join(w.stream.log)}\n{report}"
        assert w.stream.unrecovered == 0, f"{w.name} was told recovered: false\n{report}"
        assert not lost(w.stream, published), f"{w.name} lost messages\n{report}"


async def num_clients(node: Node, cluster: Cluster) -> int:
    async with cluster.api(node) as http:
        response = await http.post("/api/info", json={})
    return int(response.json()["result"]["nodes"][0]["num_clients"])


def prefix() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


# --- node failures ---------------------------------------------------------------------


async def test_a_node_killed_with_sigkill_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """kill -9 one of two nodes: its clients come back through nginx on the other and
    recover every missed publication; the other node's clients notice nothing."""
    started = time.monotonic()
    channel = "chat:crash"
    async with cluster(tmp_path, redis_server, nodes=2, prefix=prefix()) as c:
        a, b = c.nodes
        async with (
            subscribers(c.ws_url, lambda i: c.token(f"u{i}"), channel, 6) as watched,
            c.api() as http,
        ):
            on_a, on_b = await num_clients(a, c), await num_clients(b, c)
            assert on_a + on_b == 6 and on_a and on_b, (on_a, on_b)
            async with publishing(http, channel) as published:
                await wait_for(lambda: len(published.acked) >= 25, timeout=10)
                a.kill()
                # Exactly A's clients reconnect, through nginx, to B, and recover.
                await wait_for(
                    lambda: (
                        sum(1 for w in watched if w.disturbed) == on_a
                        and all(len(w.stream.subscribed) == 2 for w in watched if w.disturbed)
                    ),
                    timeout=15,
                )
                after = len(published.acked)
                await wait_for(lambda: len(published.acked) >= after + 25, timeout=10)
            await all_delivered(watched, published, timeout=15)
            report = figures("kill -9", published, watched, time.monotonic() - started)

            assert_nothing_lost(watched, published, report)
            moved = [w for w in watched if w.disturbed]
            stayed = [w for w in watched if not w.disturbed]
            assert len(moved) == on_a and len(stayed) == on_b, report
            for w in moved:
                again = w.stream.subscribed[-1]
                assert again.was_recovering and again.recovered, report
                assert w.seen.connected == 2 and not w.seen.disconnected, report
            for w in stayed:  # never disconnected, nothing to recover
                assert w.seen.connected == 1 and not w.seen.connecting, report
                assert len(w.stream.subscribed) == 1, report
            assert sum(w.stream.recovered for w in moved) > 0, report
            assert await num_clients(b, c) == 6


async def test_a_rolling_restart_with_sigterm_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Replace both nodes one at a time (start the new one, take the old one out of
    nginx, SIGTERM it): clients see 3001 and reconnect; nothing is lost, no publish fails."""
    started = time.monotonic()
    channel = "rolling"  # no namespace: history and forced recovery
    async with cluster(tmp_path, redis_server, nodes=2, prefix=prefix()) as c:
        async with (
            subscribers(c.ws_url, lambda i: c.token(f"u{i}"), channel, 6) as watched,
            c.api() as http,
        ):
            async with publishing(http, channel) as published:
                await wait_for(lambda: len(published.acked) >= 20, timeout=10)
                for old in list(c.nodes):
                    await c.add_nodes(1)
                    await c.balance([n for n in c.nodes if n.running and n is not old])
                    assert await old.terminate() == 0, old.log()
                    await wait_for(
                        lambda: all(
                            w.seen.connected == len(w.seen.connecting) + 1
                            and len(w.stream.subscribed) == w.seen.connected
                            for w in watched
                        ),
                        timeout=15,
                    )
                    more = len(published.acked) + 15
                    await wait_for(lambda: len(published.acked) >= more, timeout=10)  # noqa: B023
            await all_delivered(watched, published, timeout=15)
            report = figures("rolling restart", published, watched, time.monotonic() - started)

            assert_nothing_lost(watched, published, report)
            assert not published.refused and not published.unknown, report
            for w in watched:
                assert 3001 in w.seen.connecting, (w.name, w.seen.connecting, report)
                assert not w.seen.disconnected, report
                for again in w.stream.subscribed[1:]:
                    assert again.was_recovering and again.recovered, report
            running = [n for n in c.nodes if n.running]
            assert len(running) == 2
            assert sum([await num_clients(n, c) for n in running]) == 6


# --- Redis failures --------------------------------------------------------------------


OUTAGE_SECONDS = 10.0


async def test_a_redis_outage_fails_publishes_visibly_and_loses_nothing_acknowledged(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    """Redis stopped for 10 s under two nodes, then started again with its data
    (append-only file): publishes in between get 503, the rest all arrive."""
    started = time.monotonic()
    redis = redis_factory(persistent=True)
    channel = "chat:outage"
    async with cluster(tmp_path, redis, nodes=2, prefix="outage") as c:
        async with (
            subscribers(c.ws_url, lambda i: c.token(f"u{i}"), channel, 4) as watched,
            c.api() as http,
        ):
            on_a, on_b = [await num_clients(n, c) for n in c.nodes]
            assert on_a and on_b, "both nodes have subscribers"
            published = Published()
            n = 0
            for n in range(10):
                assert await publish_one(http, channel, n, published) == 200
            redis.stop()
            outage = time.monotonic()

            async def unready() -> bool:
                for node in c.nodes:
                    async with c.api(node) as direct:
                        if (await direct.get("/readyz")).status_code != 503:
                            return False
                return True

            await wait_for(unready, timeout=5)
            while time.monotonic() - outage < OUTAGE_SECONDS:
                n += 1
                status = await publish_one(http, channel, n, published)
                assert status == 503, f"a publish during the outage answered {status}"
                await asyncio.sleep(0.25)
            await redis.start_async()

            async def ready() -> bool:
                for node in c.nodes:
                    async with c.api(node) as direct:
                        if (await direct.get("/readyz")).status_code != 200:
                            return False
                return True

            await wait_for(ready, timeout=15, interval=0.05)
            for m in range(n + 1, n + 11):
                assert await publish_one(http, channel, m, published) == 200
            await all_delivered(watched, published, timeout=15)
            report = figures(
                f"redis down {OUTAGE_SECONDS:.0f}s", published, watched, time.monotonic() - started
            )

            assert_nothing_lost(watched, published, report)
            assert len(published.refused) >= 20 and not published.unknown, report
            delivered = {m for w in watched for _, m in w.stream.publications}
            assert not delivered & set(published.refused), "a refused publish was delivered"
            for w in watched:  # Redis kept its data: nobody had anything to recover
                assert not w.disturbed, (w.name, w.seen.connecting, report)


async def test_redis_restarted_without_its_data_tells_every_client(
    tmp_path: Path, redis_factory: Callable[..., RedisServer]
) -> None:
    """Redis loses everything under two nodes: every subscriber is told recovered: false
    (the epoch changed), and the publications after it arrive."""
    started = time.monotonic()
    redis = redis_factory()
    channel = "chat:amnesia"
    async with cluster(tmp_path, redis, nodes=2, prefix="amnesia") as c:
        async with (
            subscribers(c.ws_url, lambda i: c.token(f"u{i}"), channel, 4) as watched,
            c.api() as http,
        ):
            before, after = Published(), Published()
            for n in range(10):
                assert await publish_one(http, channel, n, before) == 200
            await all_delivered(watched, before, timeout=10)
            old_epoch = watched[0].stream.subscribed[0].stream_position
            redis.stop()
            redis.wipe()
            await redis.start_async()
            await wait_for(lambda: all(len(w.stream.subscribed) == 2 for w in watched), timeout=15)
            for n in range(10, 20):
                assert await publish_one(http, channel, n, after) == 200
            await all_delivered(watched, after, timeout=10)
            published = Published(
                {**before.acked, **after.acked}, attempts=before.attempts + after.attempts
            )
            report = figures("redis lost its data", published, watched, time.monotonic() - started)

            assert sorted(after.acked.values()) == list(range(1, 11)), report  # a new stream
            for w in watched:
                again = w.stream.subscribed[-1]
                assert again.was_recovering and not again.recovered, report  # told
                assert again.stream_position is not None and old_epoch is not None
                assert again.stream_position.epoch != old_epoch.epoch, report
                assert [n for _, n in w.stream.publications] == list(range(20)), report
                assert not w.seen.connecting, report  # the connection itself stayed


async def test_two_nodes_publishing_concurrently_keep_one_order(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Publishers on both nodes at once, subscribers on both: offsets strictly increase
    and every subscriber sees the same order."""
    started = time.monotonic()
    channel = "chat:both"
    count = 100  # per node
    async with cluster(tmp_path, redis_server, nodes=2, prefix=prefix()) as c:
        a, b = c.nodes
        nodes = [a, a, b, b]
        async with (
            subscribers(
                lambda i: nodes[i].ws_url, lambda i: c.token(f"u{i}"), channel, len(nodes)
            ) as watched,
            c.api(a) as http_a,
            c.api(b) as http_b,
        ):
            published = Published()
            limit = asyncio.Semaphore(16)

            async def one(http: httpx.AsyncClient, n: int) -> None:
                async with limit:
                    assert await publish_one(http, channel, n, published) == 200

            await asyncio.gather(
                *(one(http_a, n) for n in range(count)),
                *(one(http_b, n) for n in range(count, 2 * count)),
            )
            await all_delivered(watched, published, timeout=15)
            report = figures("two publishing nodes", published, watched, time.monotonic() - started)

            assert sorted(published.acked.values()) == list(range(1, 2 * count + 1)), report
            assert_nothing_lost(watched, published, report)
            order = sorted(published.acked, key=published.acked.__getitem__)
            for w in watched:
                assert [m for _, m in w.stream.publications] == order, report


# --- actions that reach every node -------------------------------------------------------


async def test_server_api_actions_reach_every_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Calls made to node 1 act on connections of nodes 2 and 3; info and channels see all."""
    async with cluster(tmp_path, redis_server, nodes=3, prefix=prefix()) as c:
        n1, n2, n3 = c.nodes
        async with c.api() as http, c.api(n1) as first:

            async def names() -> list[str]:
                response = await http.post("/api/info", json={})
                return sorted(node["name"] for node in response.json()["result"]["nodes"])

            await wait_for(lambda: _equals(names(), ["n1", "n2", "n3"]), timeout=10)

            async with (
                subscribers(n2.ws_url, lambda i: c.token("bob"), "chat:cross", 1) as (bob,),
                ws_client(n3.ws_url) as carol,
            ):
                await carol.connect(c.token("carol"))

                async def channels() -> Any:
                    response = await first.post("/api/channels", json={"pattern": "chat:*"})
                    return response.json()["result"]["channels"]

                await wait_for(
                    lambda: _equals(channels(), {"chat:cross": {"num_clients": 1}}), timeout=5
                )

                # send: a message push to carol, on node 3.
                response = await first.post("/api/send", json={"user": "carol", "data": {"hi": 1}})
                assert response.json() == {"result": {}}
                push = await carol.wait(lambda m: "message" in m.get("push", {}), timeout=5)
                assert push["push"]["message"]["data"] == {"hi": 1}

                # subscribe: bob (node 2) gets a server-side subscription.
                response = await first.post(
                    "/api/subscribe", json={"user": "bob", "channel": "news"}
                )
                assert response.json() == {"result": {}}
                await wait_for(
                    lambda: [s.channel for s in bob.seen.server_subscribed] == ["news"], timeout=5
                )

                # unsubscribe: bob leaves chat:cross (2000: server unsubscribe).
                response = await first.post(
                    "/api/unsubscribe", json={"user": "bob", "channel": "chat:cross"}
                )
                assert response.json() == {"result": {}}
                await wait_for(lambda: bob.stream.unsubscribed == [2000], timeout=5)
                await wait_for(lambda: _equals(channels(), {}), timeout=5)

                # disconnect: bob's connection on node 2 is closed (3503: no reconnect).
                response = await first.post("/api/disconnect", json={"user": "bob"})
                assert response.json() == {"result": {}}
                await wait_for(lambda: bob.seen.disconnected == [3503], timeout=5)
                assert not bob.seen.connecting
                await wait_for(lambda: _is(num_clients(n2, c), 0), timeout=5)
                assert await num_clients(n3, c) == 1  # carol stays


async def test_accounts_on_postgresql_and_limits_across_nodes(
    tmp_path: Path, redis_server: RedisServer, postgres_database: str
) -> None:
    """Two nodes on one PostgreSQL (migrated with ``tidings db upgrade`` first): a login on
    one works on the other; the per-user connection limit counts both nodes; leaving a
    room and logging out on one node act on the other."""
    async with cluster(
        tmp_path,
        redis_server,
        nodes=2,
        prefix=prefix(),
        database_url=postgres_database,
        allow_registration="true",
        max_connections_per_user="2",
    ) as c:
        n1, n2 = c.nodes
        async with c.api(n1) as first, c.api(n2) as second:
            password = "correct horse battery staple"
            response = await first.post("/register", json={"name": "alice", "password": password})
            assert response.status_code == 201, response.text
            # Logged in on node 2, with the account node 1 created.
            response = await second.post("/token", data={"username": "alice", "password": password})
            assert response.status_code == 200, response.text
            access = response.json()["access_token"]
            bearer = {"Authorization": f"Bearer {access}"}
            response = await second.post("/rooms", json={"name": "ops"}, headers=bearer)
            assert response.status_code == 201, response.text
            room = response.json()["channel"]

            async with subscribers(
                lambda i: (n1, n2)[i].ws_url, lambda i: access, room, 2
            ) as watched:
                # A third connection, on node 1, is one too many: 3504 right after connect.
                third = Seen()
                extra = Client(n1.ws_url, token=access, events=third)
                await extra.connect()
                try:
                    await wait_for(lambda: third.disconnected == [3504], timeout=5)
                finally:
                    await extra.disconnect()

                # Leaving the room on node 1 unsubscribes both connections.
                response = await first.post(f"/rooms/{room.split(':', 1)[1]}/leave", headers=bearer)
                assert response.status_code == 204, response.text
                await wait_for(
                    lambda: all(w.stream.unsubscribed == [2000] for w in watched), timeout=5
                )

                # Logging out on node 1 closes both, the one on node 2 too (3503).
                response = await first.post("/logout", headers=bearer)
                assert response.status_code == 204, response.text
                await wait_for(
                    lambda: all(w.seen.disconnected == [3503] for w in watched), timeout=5
                )
                assert not any(w.seen.connecting for w in watched)

            # Their slots are free again, on either node.
            again = Seen()
            client = Client(n2.ws_url, token=access, events=again)
            await client.connect()
            try:
                await asyncio.sleep(0.5)
                assert again.connected == 1 and not again.disconnected
            finally:
                await client.disconnect()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
