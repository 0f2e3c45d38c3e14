"""Chat messages against a real server: stored, then published; paged; failures visible.

HTTP through httpx, the protocol through the real centrifuge-python SDK. The
tests that keep messages run on the embedded SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from centrifuge import Client

from tests.conftest import Running, running_server, test_settings, wait_for
from tests.integration.test_accounts import PASSWORD, add_user, connect, login
from tests.integration.test_rooms import Member, Recorder, refusal, subscribe
from tidings import web
from tidings.config import DEFAULT_NAMESPACES

# Payloads that must come back exactly as sent: markup, quotes, control
# characters, bidi overrides, astral characters, whitespace, the longest text.
PAYLOADS = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 1">',
    "\"quotes\" & 'apostrophes' &amp; &lt;b&gt;",
    "bell\x07 escape\x1b[31mred\x1b[0m backspace\x08 del\x7f c1\x85",
    "\u202eevil override\u202c and \u2066isolate\u2069",
    "emoji 🎉 and \U0001d518 (astral), CJK 漢字",
    "  leading and trailing spaces  \nline two\r\nline three\ttab",
    "x" * 4000,
]


@pytest.fixture
async def server(tmp_path: Path, database_url: str | None) -> AsyncIterator[Running]:
    settings = test_settings(tmp_path, database_url=database_url)
    async with running_server(settings) as running:
        yield running


async def member(server: Running, name: str, **kw: Any) -> Member:
    await add_user(server, name, **kw)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as anonymous:
        token = (await login(anonymous, name, PASSWORD))["access_token"]
    http = httpx.AsyncClient(
        base_url=server.http_url, timeout=10, headers={"Authorization": f"Bearer {token}"}
    )
    return Member(name, token, http)


@pytest.fixture
async def users(server: Running) -> AsyncIterator[dict[str, Member]]:
    """alice and bob (members of the room "Lobby" once the test makes it), carol, and
    admin (an operator)."""
    members = {name: await member(server, name) for name in ("alice", "bob", "carol")}
    members["admin"] = await member(server, "admin", is_admin=True)
    try:
        yield members
    finally:
        for m in members.values():
            await m.http.aclose()


async def lobby(alice: Member, *others: Member) -> dict[str, Any]:
    room = await alice.create("Lobby")
    for other in others:
        assert (await other.http.post(f"/rooms/{room['id']}/join")).status_code == 200
    return room


async def post(m: Member, room: dict[str, Any], text: str) -> httpx.Response:
    return await m.http.post(f"/rooms/{room['id']}/messages", json={"text": text})


async def page(m: Member, room: dict[str, Any], **query: Any) -> dict[str, Any]:
    response = await m.http.get(f"/rooms/{room['id']}/messages", params=query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def texts(body: dict[str, Any]) -> list[str]:
    return [m["text"] for m in body["messages"]]


async def test_a_message_is_stored_published_with_its_id_and_outlives_a_restart(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = test_settings(tmp_path, database_url=database_url)
    async with running_server(settings) as server:
        alice, bob = await member(server, "alice"), await member(server, "bob")
        room = await lobby(alice, bob)
        bob_client = await connect(server, bob.token)
        try:
            heard = await subscribe(bob_client, room["channel"])
            response = await post(alice, room, "hello, bob")
            assert response.status_code == 201, response.text
            body = response.json()
            message = body["message"]
            assert body["delivered"] is True
            assert message["type"] == "message" and message["room"] == room["id"]
            assert message["user"] == "alice" and message["text"] == "hello, bob"
            assert isinstance(message["id"], int) and message["id"] > 0
            assert datetime.fromisoformat(message["ts"]).tzinfo is not None
            # The publication carries the stored message, id included, with an offset
            # in the channel's history (so clients that were away recover it).
            await wait_for(lambda: heard.publications)
            publication = heard.publications[0].pub
            assert publication.data == message
            assert publication.offset > 0
            second = (await post(bob, room, "hi alice")).json()["message"]
            assert second["id"] > message["id"]
        finally:
            await bob_client.disconnect()
            await alice.http.aclose()
            await bob.http.aclose()

    async with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as anonymous:
            token = (await login(anonymous, "bob", PASSWORD))["access_token"]
        bob = Member("bob", token, httpx.AsyncClient(base_url=server.http_url, timeout=10))
        bob.http.headers["Authorization"] = f"Bearer {token}"
        try:
            body = await page(bob, room)
            assert body["messages"] == [message, second]
            assert body["has_more"] is False
        finally:
            await bob.http.aclose()


@pytest.mark.one_websocket_path
async def test_pages_of_older_and_newer_messages_meet_without_gaps_or_duplicates(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob = users["alice"], users["bob"]
    room = await lobby(alice, bob)
    sent = []
    for i in range(25):
        response = await post(alice if i % 2 else bob, room, f"message {i}")
        assert response.status_code == 201
        sent.append(response.json()["message"])
    ids = [m["id"] for m in sent]

    newest = await page(bob, room, limit=10)
    assert [m["id"] for m in newest["messages"]] == ids[15:]
    assert newest["has_more"] is True
    earlier = await page(bob, room, before=ids[15], limit=10)
    assert [m["id"] for m in earlier["messages"]] == ids[5:15]
    assert earlier["has_more"] is True
    first = await page(bob, room, before=ids[5], limit=10)
    assert texts(first) == [f"message {i}" for i in range(5)]
    assert first["has_more"] is False
    # Walking back page by page gives every message once, in order.
    assert first["messages"] + earlier["messages"] + newest["messages"] == sent

    # Catching up after a message id: oldest first, "more" means newer ones remain.
    after = await page(bob, room, after=ids[19], limit=3)
    assert [m["id"] for m in after["messages"]] == ids[20:23]
    assert after["has_more"] is True
    rest = await page(bob, room, after=ids[22], limit=3)
    assert [m["id"] for m in rest["messages"]] == ids[23:]
    assert rest["has_more"] is False
    assert (await page(bob, room, after=ids[-1]))["messages"] == []
    assert len((await page(bob, room))["messages"]) == 25  # default limit 50

    base = f"/rooms/{room['id']}/messages"
    both = await bob.http.get(base, params={"before": ids[3], "after": ids[1]})
    assert both.status_code == 400
    for bad in ({"limit": 0}, {"limit": 201}, {"before": 0}, {"after": -1}, {"limit": "x"}):
        assert (await bob.http.get(base, params=bad)).status_code == 422, bad


async def test_any_text_round_trips_exactly_over_http_and_live(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob = users["alice"], users["bob"]
    room = await lobby(alice, bob)
    bob_client = await connect(server, bob.token)
    try:
        heard = await subscribe(bob_client, room["channel"])
        for text in PAYLOADS:
            response = await post(alice, room, text)
            assert response.status_code == 201, (text, response.text)
            assert response.json()["message"]["text"] == text
        await wait_for(lambda: len(heard.publications) == len(PAYLOADS))
        assert [p.pub.data["text"] for p in heard.publications] == PAYLOADS
        assert texts(await page(bob, room)) == PAYLOADS
    finally:
        await bob_client.disconnect()

    # Refused, with a reason, and never stored.
    for text, reason in [
        ("", "at least 1 character"),
        (" \n\t ", "needs some text"),
        ("nul \x00 byte", "NUL"),
        ("x" * 4001, "at most 4000 characters"),
    ]:
        response = await post(alice, room, text)
        assert response.status_code == 422, text
        assert reason in response.text
    assert (await alice.http.post(f"/rooms/{room['id']}/messages", json={})).status_code == 422
    assert len((await page(bob, room))["messages"]) == len(PAYLOADS)


async def test_a_failed_store_is_an_error_and_nothing_is_published(tmp_path: Path) -> None:
    settings = test_settings(tmp_path)
    async with running_server(settings) as server:
        alice, bob = await member(server, "alice"), await member(server, "bob")
        room = await lobby(alice, bob)
        bob_client = await connect(server, bob.token)
        db = sqlite3.connect(tmp_path / "tidings.db")
        try:
            heard = await subscribe(bob_client, room["channel"])
            # The database refuses every new message (as a full disk or a lost server would).
            db.execute(
                "CREATE TRIGGER no_room BEFORE INSERT ON messages "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
            db.commit()
            failed = await post(alice, room, "this one is lost")
            assert failed.status_code == 503
            assert failed.json() == {
                "detail": "the message was not stored (database error): nothing was sent"
            }
            db.execute("DROP TRIGGER no_room")
            db.commit()
            ok = await post(alice, room, "this one is kept")
            assert ok.status_code == 201
            # Publications arrive in order: the first one bob hears is the kept one.
            await wait_for(lambda: heard.publications)
            assert [p.pub.data["text"] for p in heard.publications] == ["this one is kept"]
            assert texts(await page(bob, room)) == ["this one is kept"]
        finally:
            db.close()
            await bob_client.disconnect()
            await alice.http.aclose()
            await bob.http.aclose()


@pytest.mark.one_websocket_path
async def test_only_members_post_and_read(server: Running, users: dict[str, Member]) -> None:
    alice, carol, admin = users["alice"], users["carol"], users["admin"]
    room = await lobby(alice)
    assert (await post(alice, room, "members only")).status_code == 201
    base = f"/rooms/{room['id']}/messages"
    missing = "/rooms/doesnotexist/messages"
    for path in (base, missing):
        # A room one is not in looks like a room that does not exist.
        for response in (
            await carol.http.post(path, json={"text": "let me in"}),
            await carol.http.get(path),
        ):
            assert response.status_code == 404
            assert response.json() == {"detail": "room not found"}
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as anonymous:
        assert (await anonymous.get(base)).status_code == 401
        assert (await anonymous.post(base, json={"text": "hi"})).status_code == 401
    # Admins read every room (for moderation), but post only where they are members.
    assert texts(await page(admin, room)) == ["members only"]
    assert (await post(admin, room, "hello")).status_code == 404
    # Leaving ends both.
    assert (await alice.http.post(f"/rooms/{room['id']}/leave")).status_code == 204
    assert (await post(alice, room, "still here?")).status_code == 404


async def test_typing_events_reach_subscribers_and_are_never_stored(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    room = await lobby(alice, bob)
    channel = room["channel"]
    clients: list[Client] = []
    try:
        alice_client, bob_client, carol_client = [
            await connect(server, m.token) for m in (alice, bob, carol)
        ]
        clients += [alice_client, bob_client, carol_client]
        heard_by_bob: Recorder = await subscribe(bob_client, channel)
        await subscribe(alice_client, channel)
        await alice_client.rpc("tidings.typing", {"room": room["id"]})
        await wait_for(lambda: heard_by_bob.publications)
        typing = heard_by_bob.publications[0].pub
        assert typing.data == {"type": "typing", "room": room["id"], "user": "alice"}
        assert not typing.offset  # no history: nothing to recover, nothing kept
        assert typing.info is not None and typing.info.user == "alice"
        history = await bob_client.history(channel, limit=10)
        assert history.publications == []
        assert (await page(bob, room))["messages"] == []

        # Only subscribers of the room may say they type there.
        assert await refusal(lambda: carol_client.rpc("tidings.typing", {"room": room["id"]})) == (
            103,
            "permission denied",
        )
        for bad in (None, {}, {"room": 7}, "room"):
            code, _ = await refusal(lambda b=bad: alice_client.rpc("tidings.typing", b))
            assert code == 107
    finally:
        for c in clients:
            await c.disconnect()


async def test_the_operator_api_shows_the_node_and_sends_notifications(
    server: Running, users: dict[str, Member]
) -> None:
    alice, bob, admin = users["alice"], users["bob"], users["admin"]
    room = await lobby(alice, bob)
    assert (await alice.http.get("/admin/api/stats")).status_code == 403
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as anonymous:
        assert (await anonymous.get("/admin/api/stats")).status_code == 401
    bob_client = await connect(server, bob.token)
    try:
        in_room = await subscribe(bob_client, room["channel"])
        notes = await subscribe(bob_client, "notifications#bob")
        assert in_room.subscribed and notes.subscribed
        for i in range(3):
            await post(alice, room, f"m{i}")
        await wait_for(lambda: len(in_room.publications) == 3)

        stats = (await admin.http.get("/admin/api/stats")).json()
        assert stats["node"]["num_clients"] == 1
        [client] = stats["clients"]
        assert client["user"] == "bob"
        assert client["channels"] == sorted([room["channel"], "notifications#bob"])
        channels = {c["channel"]: c["subscribers"] for c in stats["channels"]}
        assert channels == {room["channel"]: 1, "notifications#bob": 1}
        assert stats["totals"]["publications_in"] >= 3
        assert set(stats["rates"]) == {
            "messages_in",
            "messages_out",
            "publications_in",
            "publications_out",
            "window",
        }
        # From the hub's counters: the first read averages since the node started.
        assert stats["rates"]["publications_in"] > 0 and stats["rates"]["window"] > 0

        sent = await admin.http.post(
            "/admin/api/notify", json={"user": "bob", "data": {"title": "Hi", "text": "<b>x</b>"}}
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["channel"] == "notifications#bob"
        await wait_for(lambda: notes.publications)
        assert notes.publications[0].pub.data == {"title": "Hi", "text": "<b>x</b>"}
        unknown = await admin.http.post("/admin/api/notify", json={"user": "nobody", "data": 1})
        assert unknown.status_code == 404
        assert (
            await alice.http.post("/admin/api/notify", json={"user": "bob", "data": 1})
        ).status_code == 403

        cast = await admin.http.post(
            "/admin/api/broadcast",
            json={"channels": [room["channel"]], "data": {"text": "maintenance"}},
        )
        assert cast.status_code == 200, cast.text
        await wait_for(lambda: len(in_room.publications) == 4)
        assert in_room.publications[-1].pub.data == {"text": "maintenance"}
        bad = await admin.http.post(
            "/admin/api/broadcast", json={"channels": ["bad channel"], "data": 1}
        )
        assert bad.status_code == 400
        assert (
            await admin.http.post("/admin/api/broadcast", json={"channels": ["x"]})
        ).status_code == 422
    finally:
        await bob_client.disconnect()


@pytest.mark.one_websocket_path
async def test_the_pages_are_served_with_a_strict_policy_or_say_how_to_build_them(
    server: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        if web.bundle_built():
            for path in ("/", "/admin"):
                response = await http.get(path)
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/html")
                policy = response.headers["content-security-policy"]
                assert "script-src 'self'" in policy and "unsafe-inline" not in policy
                assert response.headers["x-content-type-options"] == "nosniff"
            script = await http.get("/assets/app.js")
            assert script.status_code == 200
            assert "javascript" in script.headers["content-type"]
        monkeypatch.setattr(web, "DIST", tmp_path / "nothing-here")
        for path in ("/", "/admin"):
            missing = await http.get(path)
            assert missing.status_code == 503
            assert "npm run build" in missing.text
        # The API does not depend on the bundle.
        assert (await http.get("/healthz")).status_code == 200


async def test_rooms_can_be_closed_to_client_publishing_and_the_chat_still_works(
    tmp_path: Path,
) -> None:
    """The hardening docs/chat.md suggests: only the server publishes in rooms."""
    options = dict(DEFAULT_NAMESPACES["room"].model_dump(), allow_publish_for_subscriber=False)
    settings = test_settings(tmp_path, namespaces={"room": options})
    async with running_server(settings) as server:
        alice, bob = await member(server, "alice"), await member(server, "bob")
        room = await lobby(alice, bob)
        clients = [await connect(server, m.token) for m in (alice, bob)]
        try:
            heard = await subscribe(clients[1], room["channel"])
            assert (await subscribe(clients[0], room["channel"])).subscribed
            assert await refusal(lambda: clients[0].publish(room["channel"], {"text": "raw"})) == (
                103,
                "permission denied",
            )
            await clients[0].rpc("tidings.typing", {"room": room["id"]})
            assert (await post(alice, room, "stored")).status_code == 201
            await wait_for(lambda: len(heard.publications) == 2)
            assert [p.pub.data["type"] for p in heard.publications] == ["typing", "message"]
        finally:
            for c in clients:
                await c.disconnect()
            await alice.http.aclose()
            await bob.http.aclose()
