"""Conformance: the real centrifuge-python SDK against a real Tidings server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    DisconnectedContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerPublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)
from centrifuge.exceptions import ReplyError

from tests.conftest import Running, running_server, test_settings, wait_for
from tidings import NamespaceOptions
from tidings.auth import make_subscription_token

# The wire format of the clients in the running test: every test here runs in both.
WIRE = {"protobuf": False}


@pytest.fixture(autouse=True, params=["json", "protobuf"])
def wire_format(request: pytest.FixtureRequest) -> str:
    WIRE["protobuf"] = request.param == "protobuf"
    return str(request.param)


def payload(data: Any) -> Any:
    """What the SDK takes to publish ``data``: bytes in the Protobuf format."""
    return json.dumps(data).encode() if WIRE["protobuf"] else data


def value(data: Any) -> Any:
    """What a publication carried, whatever the format."""
    return json.loads(data) if isinstance(data, bytes) else data


class Recorder(SubscriptionEventHandler):
    """Remembers everything a subscription saw."""

    def __init__(self) -> None:
        self.publications: list[PublicationContext] = []
        self.subscribed: list[SubscribedContext] = []
        self.joins: list[JoinContext] = []
        self.leaves: list[LeaveContext] = []

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.publications.append(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx)

    @property
    def data(self) -> list[Any]:
        return [value(p.pub.data) for p in self.publications]


class ClientRecorder(ClientEventHandler):
    def __init__(self) -> None:
        self.connected: list[ConnectedContext] = []
        self.disconnected: list[DisconnectedContext] = []
        self.server_publications: list[ServerPublicationContext] = []

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.server_publications.append(ctx)


@asynccontextmanager
async def connected(
    server: Running, user: str, events: ClientEventHandler | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    kwargs.setdefault("use_protobuf", WIRE["protobuf"])
    client = Client(server.ws_url, token=server.token(user), events=events, **kwargs)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def test_publish_reaches_subscribers_with_offset_and_publisher(server: Running) -> None:
    events = ClientRecorder()
    async with connected(server, "alice", events) as alice, connected(server, "bob") as bob:
        assert events.connected and events.connected[0].client
        mine, theirs = Recorder(), Recorder()
        sub_a = alice.new_subscription("chat:lobby", mine)
        sub_b = bob.new_subscription("chat:lobby", theirs)
        await sub_a.subscribe()
        await sub_b.subscribe()
        await sub_a.ready(timeout=5)
        await sub_b.ready(timeout=5)
        await sub_a.publish(payload({"text": "hi"}))
        await sub_a.publish(payload({"text": "again"}))
        await wait_for(lambda: len(theirs.publications) == 2 and len(mine.publications) == 2)
        assert theirs.data == [{"text": "hi"}, {"text": "again"}]
        assert mine.data == theirs.data  # a subscribed publisher gets its own publication
        first, second = theirs.publications
        assert second.pub.offset == first.pub.offset + 1
        assert first.pub.info is not None and first.pub.info.user == "alice"


async def test_presence_stats_and_join_leave(server: Running) -> None:
    async with connected(server, "alice") as alice, connected(server, "bob") as bob:
        seen_by_alice = Recorder()
        sub_a = alice.new_subscription("chat:room", seen_by_alice)
        await sub_a.subscribe()
        await sub_a.ready(timeout=5)
        sub_b = bob.new_subscription("chat:room", Recorder())
        await sub_b.subscribe()
        await sub_b.ready(timeout=5)
        await wait_for(lambda: any(j.info.user == "bob" for j in seen_by_alice.joins))

        presence = await sub_a.presence()
        users = sorted(info.user for info in presence.clients.values())
        assert users == ["alice", "bob"]
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (2, 2)

        await sub_b.unsubscribe()
        await wait_for(lambda: any(le.info.user == "bob" for le in seen_by_alice.leaves))
        stats = await sub_a.presence_stats()
        assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_history_in_order_with_limits(server: Running) -> None:
    for n in range(5):
        await server.tidings.publish("chat:archive", {"n": n})
    async with connected(server, "alice") as alice:
        sub = alice.new_subscription("chat:archive", Recorder())
        await sub.subscribe()
        await sub.ready(timeout=5)
        everything = await sub.history(limit=-1)
        assert [value(p.data)["n"] for p in everything.publications] == [0, 1, 2, 3, 4]
        offsets = [p.offset for p in everything.publications]
        assert offsets == sorted(offsets) and everything.offset == offsets[-1]
        latest_two = await sub.history(limit=2, reverse=True)
        assert [value(p.data)["n"] for p in latest_two.publications] == [4, 3]


async def test_recovers_missed_publications_after_reconnect(server: Running) -> None:
    seen = Recorder()
    async with connected(server, "alice") as alice:
        sub = alice.new_subscription("chat:recover", seen)
        await sub.subscribe()
        await sub.ready(timeout=5)
        await server.tidings.publish("chat:recover", {"n": 0})
        await wait_for(lambda: seen.data == [{"n": 0}])

        # Drop the connection with a code that tells the SDK to reconnect, and
        # publish while it is away: those it must get back by recovery.
        assert await server.tidings.disconnect("alice", code=3011) == 1
        for n in range(1, 6):
            await server.tidings.publish("chat:recover", {"n": n})

        await wait_for(lambda: len(seen.subscribed) == 2, timeout=10)
        resubscribed = seen.subscribed[-1]
        assert resubscribed.was_recovering and resubscribed.recovered
        await wait_for(lambda: len(seen.publications) >= 6)
        assert seen.data == [{"n": n} for n in range(6)]  # in order, no gap, no duplicate
        await server.tidings.publish("chat:recover", {"n": 6})
        await wait_for(lambda: len(seen.publications) == 7)


async def test_recovery_says_so_when_history_no_longer_has_the_gap(
    tmp_path: Path, broker_url: str
) -> None:
    settings = test_settings(
        tmp_path,
        broker_url=broker_url,
        namespaces={
            "tiny": NamespaceOptions(
                history_size=2,
                history_ttl=60,
                force_recovery=True,
                allow_history_for_subscriber=True,
            )
        },
    )
    async with running_server(settings) as server:
        seen = Recorder()
        async with connected(server, "alice") as alice:
            sub = alice.new_subscription("tiny:x", seen)
            await sub.subscribe()
            await sub.ready(timeout=5)
            await server.tidings.disconnect("alice", code=3011)
            for n in range(5):  # more than the history keeps
                await server.tidings.publish("tiny:x", {"n": n})
            await wait_for(lambda: len(seen.subscribed) == 2, timeout=10)
            assert seen.subscribed[-1].was_recovering
            assert not seen.subscribed[-1].recovered
            assert seen.publications == []  # nothing partial passed off as complete


async def test_rpc_and_handlers_change_requests(tmp_path: Path, broker_url: str) -> None:
    async with running_server(test_settings(tmp_path, broker_url=broker_url)) as server:
        tidings = server.tidings

        @tidings.rpc("add")
        async def add(event: Any) -> Any:
            return {"sum": event.data["a"] + event.data["b"], "user": event.user}

        @tidings.on_publish
        async def shout(event: Any) -> None:
            event.data = {"text": str(event.data["text"]).upper()}

        @tidings.on_connect
        async def personal_channel(event: Any) -> None:
            event.channels.append(f"chat:user-{event.user}")
            event.info = {"display": event.user.title()}

        events = ClientRecorder()
        async with connected(server, "carol", events) as carol:
            result = await carol.rpc("add", payload({"a": 2, "b": 3}))
            assert value(result.data) == {"sum": 5, "user": "carol"}
            with pytest.raises(ReplyError) as missing:
                await carol.rpc("nope", payload({}))
            assert missing.value.code == 104

            seen = Recorder()
            sub = carol.new_subscription("chat:shout", seen)
            await sub.subscribe()
            await sub.ready(timeout=5)
            await sub.publish(payload({"text": "quiet"}))
            await wait_for(lambda: seen.data == [{"text": "QUIET"}])
            info = seen.publications[0].pub.info
            assert info is not None and value(info.conn_info) == {"display": "Carol"}

            # The server-side subscription from on_connect delivers without a subscribe call.
            await tidings.publish("chat:user-carol", {"hello": "carol"})
            await wait_for(lambda: events.server_publications)
            assert value(events.server_publications[0].pub.data) == {"hello": "carol"}


async def test_permissions_for_publish_and_unknown_namespace(server: Running) -> None:
    async with connected(server, "mallory") as mallory:
        with pytest.raises(ReplyError) as denied:
            await mallory.publish("announcements", payload({"fake": True}))
        assert denied.value.code == 103

        unknown = Recorder()
        errors: list[Any] = []

        class Errors(SubscriptionEventHandler):
            async def on_error(self, ctx: Any) -> None:
                errors.append(ctx)

            async def on_unsubscribed(self, ctx: Any) -> None:
                errors.append(ctx)

        sub = mallory.new_subscription("nope:room", Errors())
        await sub.subscribe()
        await wait_for(lambda: errors)
        assert unknown.subscribed == []
        assert any(getattr(e, "code", None) == 102 for e in errors)


async def test_notifications_reach_only_their_user(server: Running) -> None:
    async with connected(server, "alice") as alice, connected(server, "bob") as bob:
        mine = Recorder()
        sub = alice.new_subscription("notifications#alice", mine)
        await sub.subscribe()
        await sub.ready(timeout=5)

        refused: list[Any] = []

        class Refused(SubscriptionEventHandler):
            async def on_unsubscribed(self, ctx: Any) -> None:
                refused.append(ctx)

            async def on_error(self, ctx: Any) -> None:
                refused.append(ctx)

        snoop = bob.new_subscription("notifications#alice", Refused())
        await snoop.subscribe()
        await wait_for(lambda: refused)
        assert any(getattr(e, "code", None) == 103 for e in refused)

        await server.tidings.send_notification("alice", {"title": "You have mail"})
        await wait_for(lambda: mine.data == [{"title": "You have mail"}])


async def test_private_channel_needs_a_subscription_token_for_that_user(server: Running) -> None:
    assert server.settings.secret
    async with connected(server, "alice") as alice:
        good = Recorder()
        token = make_subscription_token(server.settings.secret, "alice", "$chat:secret")
        sub = alice.new_subscription("$chat:secret", good, token=token)
        await sub.subscribe()
        await sub.ready(timeout=5)
        await sub.publish(payload({"psst": 1}))
        await wait_for(lambda: good.data == [{"psst": 1}])

    async with connected(server, "bob") as bob:
        denied: list[Any] = []

        class Denied(SubscriptionEventHandler):
            async def on_unsubscribed(self, ctx: Any) -> None:
                denied.append(ctx)

            async def on_error(self, ctx: Any) -> None:
                denied.append(ctx)

        # Alice's token does not let Bob in.
        stolen = bob.new_subscription("$chat:secret", Denied(), token=token)
        await stolen.subscribe()
        await wait_for(lambda: denied)
        assert any(getattr(e, "code", None) == 103 for e in denied)


async def test_server_side_unsubscribe(server: Running) -> None:
    async with connected(server, "dave") as dave:
        gone: list[Any] = []

        class Gone(SubscriptionEventHandler):
            async def on_unsubscribed(self, ctx: Any) -> None:
                gone.append(ctx)

        sub = dave.new_subscription("chat:kick", Gone())
        await sub.subscribe()
        await sub.ready(timeout=5)
        await server.tidings.hub.unsubscribe_user("dave", "chat:kick")
        await wait_for(lambda: gone)
        assert gone[0].code == 2000


async def test_token_refresh_keeps_the_connection(tmp_path: Path, broker_url: str) -> None:
    settings = test_settings(tmp_path, token_expiry_grace=0.5, broker_url=broker_url)
    async with running_server(settings) as server:
        tokens: list[str] = []

        async def get_token() -> str:
            tokens.append(server.token("erin", ttl=60))
            return tokens[-1]

        events = ClientRecorder()
        client = Client(
            server.ws_url,
            token=server.token("erin", ttl=2),
            get_token=get_token,
            events=events,
            use_protobuf=WIRE["protobuf"],
        )
        await client.connect()
        try:
            seen = Recorder()
            sub = client.new_subscription("chat:refresh", seen)
            await sub.subscribe()
            await sub.ready(timeout=5)
            await wait_for(lambda: tokens, timeout=10)  # the SDK refreshed before expiry
            session = next(iter(server.tidings.hub.sessions.values()))
            await wait_for(lambda: (session.expires_at or 0) > time.time() + 30)
            await server.tidings.publish("chat:refresh", {"still": "here"})
            await wait_for(lambda: seen.data == [{"still": "here"}])
            assert events.disconnected == [] and len(events.connected) == 1
        finally:
            await client.disconnect()
