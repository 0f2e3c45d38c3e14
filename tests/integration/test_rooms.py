"""Chat rooms against a real server: the HTTP API, and membership on the protocol side.

Runs on the embedded SQLite and on a real PostgreSQL. A room one is not a member
of must look exactly like a room that does not exist, over HTTP and over the
protocol (103 "permission denied" for both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import (
    Client,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from centrifuge.exceptions import ReplyError

from tests.conftest import Running, running_server, test_settings, wait_for
from tests.integration.test_accounts import PASSWORD, add_user, connect, login

MISSING = "room:doesnotexist"


@dataclass
class Member:
    name: str
    token: str
    http: httpx.AsyncClient

    async def create(self, name: str, private: bool = False) -> dict[str, Any]:
        response = await self.http.post("/rooms", json={"name": name, "private": private})
        assert response.status_code == 201, response.text
        room: dict[str, Any] = response.json()
        return room


class Recorder(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.subscribed: list[SubscribedContext] = []
        self.unsubscribed: list[UnsubscribedContext] = []
        self.publications: list[PublicationContext] = []

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append(ctx)


@pytest.fixture
async def server(tmp_path: Path, database_url: str | None) -> AsyncIterator[Running]:
    settings = test_settings(tmp_path, database_url=database_url)
    async with running_server(settings) as running:
        yield running


@pytest.fixture
async def users(server: Running) -> AsyncIterator[dict[str, Member]]:
    """alice, bob and carol, logged in, each with an HTTP client sending their bearer token."""
    members: dict[str, Member] = {}
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as anonymous:
        for name in ("alice", "bob", "carol"):
            await add_user(server, name)
            token = (await login(anonymous, name, PASSWORD))["access_token"]
            members[name] = Member(
                name,
                token,
                httpx.AsyncClient(
                    base_url=server.http_url,
                    timeout=10,
                    headers={"Authorization": f"Bearer {token}"},
                ),
            )
    try:
        yield members
    finally:
        for member in members.values():
            await member.http.aclose()


async def subscribe(client: Client, channel: str) -> Recorder:
    """Subscribe and wait until the server answered: subscribed, or refused."""
    recorder = Recorder()
    old = client.get_subscription(channel)
    if old is not None:
        client.remove_subscription(old)
    sub = client.new_subscription(channel, recorder)
    await sub.subscribe()
    await wait_for(lambda: recorder.subscribed or recorder.unsubscribed)
    return recorder


async def refusal(call: Callable[[], Awaitable[Any]]) -> tuple[int, str]:
    with pytest.raises(ReplyError) as caught:
        await call()
    return caught.value.code, caught.value.message


@pytest.mark.one_websocket_path
async def test_rooms_over_http(server: Running, users: dict[str, Member]) -> None:
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    lobby = await alice.create("Lobby")
    assert lobby["channel"] == f"room:{lobby['id']}"
    assert lobby["member"] is True and lobby["private"] is False
    secret = await alice.create("Secret", private=True)

    # bob sees the public room (not a member yet), not the private one.
    listed = (await bob.http.get("/rooms")).json()["rooms"]
    assert [(r["name"], r["member"]) for r in listed] == [("Lobby", False)]
    joined = await bob.http.post(f"/rooms/{lobby['id']}/join")
    assert joined.status_code == 200 and joined.json()["member"] is True
    members = (await alice.http.get(f"/rooms/{lobby['id']}/members")).json()["members"]
    assert sorted(m["name"] for m in members) == ["alice", "bob"]

    # A room one may not see answers exactly as one that does not exist.
    for path in ("", "/members", "/join"):
        method = bob.http.post if path == "/join" else bob.http.get
        hidden = await method(f"/rooms/{secret['id']}{path}")
        missing = await method(f"/rooms/doesnotexist{path}")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json() == {"detail": "room not found"}
    not_member = await carol.http.get(f"/rooms/{lobby['id']}/members")
    assert not_member.status_code == 404
    assert not_member.json() == {"detail": "room not found"}

    # Members add people to a private room.
    added = await alice.http.post(f"/rooms/{secret['id']}/members", json={"user": "bob"})
    assert added.status_code == 201
    listed = (await bob.http.get("/rooms")).json()["rooms"]
    assert {r["name"] for r in listed} == {"Lobby", "Secret"}
    nobody = await alice.http.post(f"/rooms/{secret['id']}/members", json={"user": "nobody"})
    assert nobody.status_code == 404

    assert (await bob.http.post(f"/rooms/{lobby['id']}/leave")).status_code == 204
    assert (await bob.http.post(f"/rooms/{lobby['id']}/leave")).status_code == 404

    async with httpx.AsyncClient(base_url=server.http_url) as anonymous:
        refused = await anonymous.get("/rooms")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        bad = await anonymous.get("/rooms", headers={"Authorization": "Bearer nonsense"})
        assert bad.status_code == 401


async def test_a_room_one_is_not_in_looks_like_no_room(
    server: Running, users: dict[str, Member]
) -> None:
    alice, carol = users["alice"], users["carol"]
    room = (await alice.create("Lobby"))["channel"]
    alice_client = await connect(server, alice.token)
    carol_client = await connect(server, carol.token)
    try:
        seen = await subscribe(alice_client, room)
        assert seen.subscribed
        await alice_client.publish(room, {"text": "members only"})
        await wait_for(lambda: seen.publications)

        # Subscribe: refused the same way, whether the room exists or not.
        refused, missing = (
            await subscribe(carol_client, room),
            await subscribe(carol_client, MISSING),
        )
        assert not refused.subscribed and not missing.subscribed
        assert (refused.unsubscribed[0].code, refused.unsubscribed[0].reason) == (
            missing.unsubscribed[0].code,
            missing.unsubscribed[0].reason,
        )
        assert refused.unsubscribed[0].code == 103

        # Publish, presence, presence stats and history: the same again.
        calls: list[Callable[[str], Callable[[], Awaitable[Any]]]] = [
            lambda ch: lambda: carol_client.publish(ch, {"text": "let me in"}),
            lambda ch: lambda: carol_client.presence(ch),
            lambda ch: lambda: carol_client.presence_stats(ch),
            lambda ch: lambda: carol_client.history(ch, limit=10),
        ]
        for call in calls:
            assert (
                await refusal(call(room))
                == await refusal(call(MISSING))
                == (
                    103,
                    "permission denied",
                )
            )
        # Nothing carol tried reached the room.
        history = await alice_client.history(room, limit=10)
        assert [p.data for p in history.publications] == [{"text": "members only"}]
    finally:
        await alice_client.disconnect()
        await carol_client.disconnect()


async def test_members_chat_and_the_server_stamps_the_sender(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob = users["alice"], users["bob"]
    room = await alice.create("Lobby")
    assert (await bob.http.post(f"/rooms/{room['id']}/join")).status_code == 200
    channel = room["channel"]

    checks: list[tuple[str, str]] = []
    check = server.tidings.hub.room_membership
    assert check is not None

    async def counting(user: str, room_id: str) -> bool:
        checks.append((user, room_id))
        return await check(user, room_id)

    server.tidings.hub.room_membership = counting
    alice_client = await connect(server, alice.token)
    bob_client = await connect(server, bob.token)
    try:
        heard_by_alice = await subscribe(alice_client, channel)
        heard_by_bob = await subscribe(bob_client, channel)
        assert heard_by_alice.subscribed and heard_by_bob.subscribed
        assert len(checks) == 2  # one per subscribe
        for i in range(20):
            await bob_client.publish(channel, {"n": i})
        await wait_for(lambda: len(heard_by_alice.publications) == 20)
        assert [p.pub.data["n"] for p in heard_by_alice.publications] == list(range(20))
        assert {p.pub.info.user for p in heard_by_alice.publications if p.pub.info} == {"bob"}
        presence = await bob_client.presence(channel)
        assert sorted(c.user for c in presence.clients.values()) == ["alice", "bob"]
        assert len((await bob_client.history(channel, limit=50)).publications) == 20
        # Subscribed members publish, read presence and history without a query each.
        assert len(checks) == 2
    finally:
        await alice_client.disconnect()
        await bob_client.disconnect()


async def test_leaving_a_room_unsubscribes_live_connections(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob = users["alice"], users["bob"]
    room = await alice.create("Lobby")
    assert (await bob.http.post(f"/rooms/{room['id']}/join")).status_code == 200
    channel = room["channel"]
    alice_client = await connect(server, alice.token)
    bob_laptop = await connect(server, bob.token)
    bob_phone = await connect(server, bob.token)
    try:
        heard_by_alice = await subscribe(alice_client, channel)
        on_laptop = await subscribe(bob_laptop, channel)
        on_phone = await subscribe(bob_phone, channel)
        assert on_laptop.subscribed and on_phone.subscribed

        assert (await bob.http.post(f"/rooms/{room['id']}/leave")).status_code == 204
        await wait_for(lambda: on_laptop.unsubscribed and on_phone.unsubscribed)
        for seen in (on_laptop, on_phone):
            assert seen.unsubscribed[0].code == 2000  # server unsubscribe: no retry
        presence = await alice_client.presence(channel)
        assert [c.user for c in presence.clients.values()] == ["alice"]

        await alice_client.publish(channel, {"text": "bob is gone"})
        await wait_for(lambda: heard_by_alice.publications)
        assert not on_laptop.publications and not on_phone.publications
        assert await refusal(lambda: bob_laptop.publish(channel, {"text": "hi"})) == (
            103,
            "permission denied",
        )
        again = await subscribe(bob_laptop, channel)
        assert not again.subscribed and again.unsubscribed[0].code == 103
    finally:
        for client in (alice_client, bob_laptop, bob_phone):
            await client.disconnect()


@pytest.mark.one_websocket_path
async def test_leaving_a_room_while_redis_is_down_fails_visibly(
    tmp_path: Path, redis_factory: Callable[..., Any]
) -> None:
    redis = redis_factory()
    settings = test_settings(tmp_path, broker_url=redis.unique_url())
    async with running_server(settings) as server:
        await add_user(server, "alice")
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            token = (await login(http, "alice", PASSWORD))["access_token"]
            http.headers["Authorization"] = f"Bearer {token}"
            room = (await http.post("/rooms", json={"name": "Ops"})).json()
            redis.stop()
            await wait_for(lambda: not server.tidings.hub.broker.ready, timeout=10)
            # Other nodes cannot be told to unsubscribe her: a 503 to retry,
            # never a 500 and never a silent success.
            left = await http.post(f"/rooms/{room['id']}/leave")
            assert left.status_code == 503
            assert left.json()["temporary"] is True
