"""The server API, driven by the real `cent` client and by plain HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cent import (
    AsyncClient,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError
from centrifuge import Client

from tests.conftest import API_KEY, Running, wait_for
from tests.integration.test_python_sdk import ClientRecorder, Recorder


@pytest.fixture
async def cent(server: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"{server.http_url}/api", API_KEY) as client:
        yield client


async def subscribed(server: Running, user: str, channel: str) -> tuple[Client, Recorder]:
    client = Client(server.ws_url, token=server.token(user))
    await client.connect()
    seen = Recorder()
    sub = client.new_subscription(channel, seen)
    await sub.subscribe()
    await sub.ready(timeout=5)
    return client, seen


async def test_publish_history_and_history_remove(server: Running, cent: AsyncClient) -> None:
    client, seen = await subscribed(server, "alice", "news")
    try:
        first = await cent.publish(PublishRequest(channel="news", data={"n": 1}))
        second = await cent.publish(PublishRequest(channel="news", data={"n": 2}))
        assert second.offset == first.offset + 1 and second.epoch == first.epoch
        await wait_for(lambda: seen.data == [{"n": 1}, {"n": 2}])
        # A publication from the server API carries no publisher info.
        assert seen.publications[0].pub.info is None

        history = await cent.history(HistoryRequest(channel="news", limit=10))
        assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}]
        assert history.offset == second.offset and history.epoch == second.epoch

        await cent.history_remove(HistoryRemoveRequest(channel="news"))
        history = await cent.history(HistoryRequest(channel="news", limit=10))
        assert history.publications == []
    finally:
        await client.disconnect()


async def test_broadcast_reports_each_channel(server: Running, cent: AsyncClient) -> None:
    client, seen = await subscribed(server, "alice", "chat:a")
    try:
        result = await cent.broadcast(
            BroadcastRequest(channels=["chat:a", "chat:b", "nope:c"], data={"all": True})
        )
        errors = [r.error for r in result.responses]
        assert errors[0] is None and errors[1] is None
        assert errors[2] is not None and errors[2].code == 102
        await wait_for(lambda: seen.data == [{"all": True}])
    finally:
        await client.disconnect()


async def test_presence_channels_info_and_disconnect(server: Running, cent: AsyncClient) -> None:
    events = ClientRecorder()
    client = Client(server.ws_url, token=server.token("bob"), events=events)
    await client.connect()
    sub = client.new_subscription("chat:room", Recorder())
    await sub.subscribe()
    await sub.ready(timeout=5)
    try:
        presence = await cent.presence(PresenceRequest(channel="chat:room"))
        assert [c.user for c in presence.presence.values()] == ["bob"]
        stats = await cent.presence_stats(PresenceStatsRequest(channel="chat:room"))
        assert (stats.num_clients, stats.num_users) == (1, 1)

        channels = await cent.channels(ChannelsRequest(pattern="chat:*"))
        assert channels.channels["chat:room"].num_clients == 1
        info = await cent.info(InfoRequest())
        assert info.nodes[0].num_clients == 1

        await cent.disconnect(DisconnectRequest(user="bob"))
        await wait_for(lambda: events.disconnected)
        assert events.disconnected[0].code == 3503  # force disconnect: do not reconnect
    finally:
        await client.disconnect()


async def test_server_side_subscribe_and_unsubscribe(server: Running, cent: AsyncClient) -> None:
    events = ClientRecorder()
    client = Client(server.ws_url, token=server.token("carol"), events=events)
    await client.connect()
    try:
        await cent.subscribe(SubscribeRequest(user="carol", channel="chat:pushed"))
        await wait_for(lambda: "chat:pushed" in server.tidings.hub.channels)
        await cent.publish(PublishRequest(channel="chat:pushed", data={"x": 1}))
        await wait_for(lambda: events.server_publications)
        assert events.server_publications[0].pub.data == {"x": 1}
        await cent.unsubscribe(UnsubscribeRequest(user="carol", channel="chat:pushed"))
        await wait_for(lambda: "chat:pushed" not in server.tidings.hub.channels)
    finally:
        await client.disconnect()


@pytest.mark.one_websocket_path
async def test_batch(server: Running, cent: AsyncClient) -> None:
    result = await cent.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel="chat:batch", data={"n": 1}),
                PublishRequest(channel="chat:batch", data={"n": 2}),
            ]
        )
    )
    assert [r.offset for r in result.replies] == [1, 2]  # type: ignore[attr-defined]


@pytest.mark.one_websocket_path
async def test_errors_are_visible(server: Running, cent: AsyncClient) -> None:
    with pytest.raises(CentApiResponseError) as unknown:
        await cent.publish(PublishRequest(channel="nope:x", data={}))
    assert unknown.value.code == 102
    async with AsyncClient(f"{server.http_url}/api", "wrong-key") as intruder:
        with pytest.raises(CentUnauthorizedError):
            await intruder.publish(PublishRequest(channel="news", data={}))


@pytest.mark.one_websocket_path
@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code"),
    [
        ("/api/publish", {}, b'{"channel":"news","data":1}', 401, 101),
        ("/api/publish", {"X-API-Key": API_KEY}, b"{not json", 400, 107),
        ("/api/publish", {"X-API-Key": API_KEY}, b"[1, 2]", 400, 107),
        ("/api/frobnicate", {"X-API-Key": API_KEY}, b"{}", 404, 104),
        ("/api/publish", {"X-API-Key": API_KEY}, b'{"channel": 5, "data": 1}', 400, 107),
        ("/api/publish", {"X-API-Key": API_KEY}, b'{"channel": "news"}', 400, 107),
        (
            "/api/publish",
            {"Authorization": f"apikey {API_KEY}"},
            b'{"channel":"news","data":1}',
            200,
            0,
        ),
    ],
)
async def test_http_errors_have_json_bodies(
    server: Running, path: str, headers: dict[str, str], body: bytes, status: int, code: int
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post(path, content=body, headers=headers)
    assert response.status_code == status
    payload = response.json()
    if code:
        assert payload["error"]["code"] == code
    else:
        assert "result" in payload


@pytest.mark.one_websocket_path
async def test_health_and_readiness(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        await server.tidings.close_connections()  # what SIGTERM does first
        assert (await http.get("/readyz")).status_code == 503


@pytest.mark.one_websocket_path
async def test_echo_endpoint(server: Running) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://{server.host}:{server.port}/ws") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
