"""The control channel between nodes, in-process: its message format, the Python API
acting on every node, heartbeats, and connections per user counted across nodes.

(tests/integration/test_cluster.py runs real ``tidings serve`` processes behind nginx.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from centrifuge import Client

from tests.conftest import API_KEY, Running, running_server, test_settings, wait_for
from tests.integration.test_cluster import Seen
from tests.integration.wsclient import ws_client
from tests.redis_server import RedisServer
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.redis import RedisBroker
from tidings.hub import cluster
from tidings.hub.cluster import (
    ChannelsReply,
    ChannelsRequest,
    DisconnectUser,
    Heartbeat,
    NodeInfo,
    SendMessage,
    SubscribeUser,
    UnsubscribeUser,
)

NODE = NodeInfo("u1", "n1", "0.1.0", 5, 1, 1, 2, 3)


@pytest.mark.one_websocket_path
@pytest.mark.parametrize(
    "message",
    [
        DisconnectUser("alice", "", 3503, "logged out"),
        DisconnectUser("alice", "c1", 3001, ""),
        UnsubscribeUser("bob", "chat:x", ""),
        SubscribeUser("bob", "news", "c2"),
        SendMessage("carol", b'{"hi":"\\n"}\n\x00binary'),
        Heartbeat(NODE, 7.0),
        ChannelsRequest("r1", "chat:*"),
        ChannelsReply("r1", "u2", {"chat:x": 2, "news": 1}, truncated=True),
    ],
)
def test_control_messages_round_trip(message: cluster.Control) -> None:
    data = cluster.encode("origin", message)
    header = orjson.loads(data[: data.index(b"\n")])
    assert header["v"] == 1 and header["o"] == "origin"
    assert cluster.decode(data) == ("origin", message)


@pytest.mark.one_websocket_path
def test_unknown_versions_and_types_are_ignored_and_bad_ones_refused() -> None:
    assert cluster.decode(b'{"v": 2, "t": "disconnect", "o": "x", "user": "a"}\n') is None
    assert cluster.decode(b'{"v": 1, "t": "reboot", "o": "x"}\n') is None
    for bad in (
        b"no header line",
        b"[1]\n",
        b'{"v": 1, "t": "disconnect", "o": "x", "code": "3503"}\n',
        b'{"v": 1, "t": "heartbeat", "o": "x", "node": 1, "ttl": 5}\n',
        b'{"v": 1, "t": "channels", "o": "x", "channels": {"a": "1"}}\n',
    ):
        with pytest.raises(ValueError):
            cluster.decode(bad)


@pytest.mark.one_websocket_path
async def test_memory_broker_delivers_control_messages_to_its_node() -> None:
    broker = MemoryBroker()
    got: list[bytes] = []

    class Events:
        def on_control(self, message: bytes) -> None:
            got.append(message)

    await broker.start(Events())  # type: ignore[arg-type]  # only on_control is used
    await broker.publish_control(b"m")
    assert got == [b"m"]
    assert await broker.add_user_connection("u", "c1", 2)
    assert await broker.add_user_connection("u", "c2", 2)
    assert not await broker.add_user_connection("u", "c3", 2)
    assert await broker.add_user_connection("u", "c1", 2)  # a refresh, not another
    await broker.remove_user_connection("u", "c1")
    assert await broker.add_user_connection("u", "c3", 2)
    assert await broker.add_user_connection("u", "c4", 0)  # 0: no limit


# --- two in-process nodes on one Redis --------------------------------------------------


@asynccontextmanager
async def two_nodes(
    tmp_path: Path, redis: RedisServer, **settings: Any
) -> AsyncIterator[tuple[Running, Running]]:
    url = redis.unique_url()
    async with (
        running_server(
            test_settings(tmp_path / "a", broker_url=url, node_name="a", **settings)
        ) as a,
        running_server(
            test_settings(tmp_path / "b", broker_url=url, node_name="b", **settings)
        ) as b,
    ):
        yield a, b


def api(server: Running) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http_url, headers={"X-API-Key": API_KEY}, timeout=10)


async def test_python_api_disconnect_and_send_message_reach_every_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        two_nodes(tmp_path, redis_server) as (a, b),
        ws_client(b.ws_url) as carol,
    ):
        await carol.connect(b.token("carol"))
        # Nobody on node a: 0 here, and node b still gets the message.
        assert await a.tidings.send_message("carol", {"hi": 1}) == 0
        push = await carol.wait(lambda m: "message" in m.get("push", {}))
        assert push["push"]["message"]["data"] == {"hi": 1}
        assert await a.tidings.disconnect("carol", code=4501, reason="bye") == 0
        assert await carol.closed() == 4501


@pytest.mark.one_websocket_path
async def test_info_lists_live_nodes_and_forgets_stopped_ones(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    async with (
        running_server(test_settings(tmp_path / "a", broker_url=url, node_name="a")) as a,
        api(a) as http,
    ):

        async def names() -> list[str]:
            response = await http.post("/api/info", json={})
            return [n["name"] for n in response.json()["result"]["nodes"]]

        async with running_server(test_settings(tmp_path / "b", broker_url=url, node_name="b")):
            # A new node is known at once (the others answer its first heartbeat).
            await wait_for(lambda: _equals(names(), ["a", "b"]), timeout=2)
            response = await http.post("/api/info", json={})
            node_b = response.json()["result"]["nodes"][1]
            assert set(node_b) == {
                "name",
                "uid",
                "version",
                "uptime",
                "num_clients",
                "num_users",
                "num_channels",
                "num_subs",
            }
        # A node that stops says so: gone at once, not after its heartbeat's ttl.
        await wait_for(lambda: _equals(names(), ["a"]), timeout=2)


async def test_channels_adds_up_every_node(tmp_path: Path, redis_server: RedisServer) -> None:
    async with (
        two_nodes(tmp_path, redis_server) as (a, b),
        api(a) as http,
        ws_client(a.ws_url) as on_a,
        ws_client(b.ws_url) as on_b,
        ws_client(b.ws_url) as also_on_b,
    ):
        await wait_for(lambda: len(a.tidings.hub.cluster.nodes()) == 2, timeout=5)
        for client, user in ((on_a, "x"), (on_b, "y"), (also_on_b, "z")):
            await client.connect(a.token(user))
            await client.subscribe("chat:shared")
        await on_b.subscribe("chat:only-b")
        await on_b.subscribe("news")
        response = await http.post("/api/channels", json={"pattern": "chat:*"})
        assert response.json()["result"]["channels"] == {
            "chat:shared": {"num_clients": 3},
            "chat:only-b": {"num_clients": 1},
        }


async def test_connections_per_user_are_counted_across_nodes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with two_nodes(tmp_path, redis_server, max_connections_per_user=2) as (a, b):
        token = a.token("dave")
        first, second = Client(a.ws_url, token=token), Client(b.ws_url, token=token)
        await first.connect()
        await second.connect()
        try:
            # Node a has one of dave's connections, under the cap; Redis counts two.
            third = Seen()
            extra = Client(a.ws_url, token=token, events=third)
            await extra.connect()
            try:
                await wait_for(lambda: third.disconnected == [3504], timeout=5)
            finally:
                await extra.disconnect()
            assert a.tidings.hub.metrics.limits["connections_per_user"] == 1
            # A closed connection frees its slot on every node.
            await second.disconnect()
            again = Seen()
            retry = Client(a.ws_url, token=token, events=again)
            await retry.connect()
            try:
                await asyncio.sleep(0.3)  # a refusal would come right after connect
                assert again.connected == 1 and not again.disconnected
            finally:
                await retry.disconnect()
        finally:
            await first.disconnect()
            await second.disconnect()


async def test_a_dead_nodes_connections_stop_counting(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.unique_url()
    settings = test_settings(tmp_path, broker_url=url, max_connections_per_user=1)
    async with running_server(settings) as a:
        # A node that crashed with a connection of erin's: its entry, no refreshes.
        crashed = RedisBroker(url)
        crashed.node_ttl = 1.0
        assert await crashed.add_user_connection("erin", "ghost", 1)
        await crashed.client.aclose()
        await crashed.client.connection_pool.disconnect()
        refused = Seen()
        client = Client(a.ws_url, token=a.token("erin"), events=refused)
        await client.connect()
        try:
            await wait_for(lambda: refused.disconnected == [3504], timeout=5)
        finally:
            await client.disconnect()
        # Until the crashed node's liveness expires (Redis' clock is this machine's).
        nodes = f"{crashed.prefix}:cluster:{{users}}:nodes"
        live = a.tidings.hub.broker
        assert isinstance(live, RedisBroker)

        async def expired() -> bool:
            until = await live.client.zscore(nodes, crashed.node_id)
            return until is None or until < time.time() * 1000

        await wait_for(expired, timeout=5)
        welcome = Seen()
        client = Client(a.ws_url, token=a.token("erin"), events=welcome)
        await client.connect()
        try:
            await asyncio.sleep(0.3)
            assert welcome.connected == 1 and not welcome.disconnected
        finally:
            await client.disconnect()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
