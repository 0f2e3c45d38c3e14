"""Limits and timers against a real server, with short settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running, running_server, wait_for
from tests.conftest import test_settings as make_settings
from tests.integration.wsclient import ABNORMAL_CLOSURE, RawWebSocket, WSClient, ws_client
from tidings.auth import make_connection_token
from tidings.hub import session as session_module
from tidings.hub.session import Session, State


async def closed_with(client: WSClient, code: int, timeout: float = 5.0) -> None:
    assert await client.closed(timeout) == code
    push = client.disconnect_push()
    assert push is not None and push["code"] == code


async def test_auth_timeout(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path, auth_timeout=0.3)) as server:
        async with ws_client(server.ws_url) as idle, ws_client(server.ws_url) as prompt:
            await prompt.connect(server.token("prompt"))
            await closed_with(idle, 3502)
            # The timer ended with connect for the client that sent it in time.
            assert await prompt.ok("ping") == {}
            assert prompt.is_open


async def test_pings_answered_or_3012(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ping_interval=0.3, pong_timeout=0.3)
    async with running_server(settings) as server:
        async with (
            ws_client(server.ws_url) as good,
            ws_client(server.ws_url, answer_pings=False) as mute,
        ):
            await good.connect(server.token("good"))
            await mute.connect(server.token("mute"))

            async def mute_closed() -> int:
                return await mute.closed(timeout=5)

            closing = asyncio.create_task(mute_closed())
            # Several intervals go by for the client that answers.
            await good.wait_pings(5, timeout=5)
            assert await closing == 3012
            assert mute.pings >= 1
            push = mute.disconnect_push()
            assert push == {"code": 3012, "reason": "no pong"}
            assert await good.ok("ping") == {}
            assert good.is_open
            assert set(server.tidings.hub.users) == {"good"}


async def test_no_pong_with_timeout_longer_than_interval(tmp_path: Path) -> None:
    # Each ping used to push the pong deadline back: with pong_timeout >=
    # ping_interval a client that never answered was never closed.
    settings = make_settings(tmp_path, ping_interval=0.2, pong_timeout=0.5)
    async with running_server(settings) as server:
        async with ws_client(server.ws_url, answer_pings=False) as mute:
            await mute.connect(server.token("mute"))
            assert await mute.closed(timeout=3) == 3012
            assert mute.pings >= 2


async def test_command_rate_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, command_rate=2.0, command_burst=3)
    async with running_server(settings) as server, ws_client(server.ws_url) as client:
        await client.connect(server.token("alice"))  # one token of three
        ids = [client.new_id() for _ in range(6)]
        await client.send(*({"id": i, "ping": {}} for i in ids))
        replies = [await client.reply(i) for i in ids]
        assert replies[:2] == [{"id": ids[0], "ping": {}}, {"id": ids[1], "ping": {}}]
        for reply in replies[2:]:
            assert reply["error"] == {
                "code": 111,
                "message": "too many requests",
                "temporary": True,
            }
        # Pongs are never limited, and the connection stays open: once the
        # bucket refills, commands work again.
        await client.send_raw("{}")

        async def ping_works() -> bool:
            return "ping" in await client.call("ping")

        await wait_for(ping_works, timeout=5, interval=0.05)
        assert client.is_open
        assert server.tidings.hub.metrics.rate_limited >= 4


async def test_channel_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_channels_per_connection=2)
    async with running_server(settings) as server, ws_client(server.ws_url) as client:
        await client.connect(server.token("alice"))
        await client.subscribe("chat:a")
        await client.subscribe("chat:b")
        reply = await client.call("subscribe", {"channel": "chat:c"})
        assert reply["error"] == {"code": 106, "message": "too many channels"}
        assert "chat:c" not in server.tidings.hub.channels
        # Still open; a freed slot can be used again.
        assert await client.ok("unsubscribe", {"channel": "chat:a"}) == {}
        await client.subscribe("chat:c")
        assert (await client.call("subscribe", {"channel": "chat:d"}))["error"]["code"] == 106


async def test_token_expiry_without_refresh(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, token_expiry_grace=0.5)
    async with running_server(settings) as server:
        # exp has a one-second resolution: ttl=2 leaves at least one second to connect.
        token = make_connection_token(server.settings.secret or "", "alice", ttl=2)
        async with ws_client(server.ws_url) as stale, ws_client(server.ws_url) as fresh:
            result = await stale.connect(token)
            assert result["expires"] is True and 0 <= result["ttl"] <= 2
            await fresh.connect(token)
            refreshed = await fresh.ok("refresh", {"token": server.token("alice", ttl=3600)})
            assert refreshed["expires"] is True and refreshed["ttl"] > 3000
            await closed_with(stale, 3005, timeout=5)
            # The client that refreshed is past the same deadline and still open.
            assert await fresh.ok("ping") == {}
            assert fresh.is_open


SLOW_LIMIT = 64 * 1024
PAD = "x" * 16_000


async def slow_subscriber(server: Running) -> tuple[RawWebSocket, Session]:
    """A client that subscribes to news, then never reads again: a tiny receive
    buffer in the kernel and in the stream, so the server's writes back up."""
    slow = await RawWebSocket.open(server.host, server.port, rcvbuf=4096, stream_limit=4096)
    try:
        await slow.send({"id": 1, "connect": {"token": server.token("slow")}})
        assert "connect" in await slow.reply(1)
        await slow.send({"id": 2, "subscribe": {"channel": "news"}})
        assert "subscribe" in await slow.reply(2)
    except BaseException:
        slow.close()
        raise
    [session] = server.tidings.hub.users["slow"]
    return slow, session


class Publisher:
    """Publishes numbered publications; the good client reads each batch at once."""

    def __init__(self, server: Running, good: WSClient, slow: Session) -> None:
        self.server = server
        self.good = good
        self.slow = slow
        self.published = 0
        self.received: list[Any] = []

    async def batch(self, n: int = 2) -> None:
        for _ in range(n):
            await self.server.tidings.publish("news", {"i": self.published, "pad": PAD})
            self.published += 1
            # Bounded: the slow client's queue never holds more than the limit.
            assert self.slow._queued_bytes <= SLOW_LIMIT
        # Two at a time (32 KB), read at once: the good client is never slow.
        self.received.extend(await self.good.publications("news", n))

    async def until_slow_dropped(self) -> None:
        for _ in range(1000):  # ~16 MB at most; the slow client goes long before
            await self.batch()
            if self.slow.state is State.CLOSED:
                break
        assert self.slow.state is State.CLOSED
        assert self.slow._queued_bytes == 0 and not self.slow._queue


async def test_slow_client_is_dropped_and_others_lose_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, write_queue_max_bytes=SLOW_LIMIT)
    async with running_server(settings) as server, ws_client(server.ws_url) as good:
        hub = server.tidings.hub
        await good.connect(server.token("good"))
        await good.subscribe("news")
        slow, session = await slow_subscriber(server)
        try:
            publisher = Publisher(server, good, session)
            await publisher.until_slow_dropped()
            assert hub.metrics.slow_disconnects == 1
            for _ in range(10):
                await publisher.batch()
            # None lost, none duplicated, in order.
            assert [r["i"] for r in publisher.received] == list(range(publisher.published))
            await wait_for(lambda: session not in hub._open and "slow" not in hub.users)
            assert hub.channels["news"] == hub.users["good"]
            # Reading again, the slow client finds the close code after what was buffered.
            assert await slow.close_code(timeout=10) == 3008
        finally:
            slow.close()
        assert await good.ok("ping") == {}


async def test_slow_client_that_never_reads_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "CLOSE_TIMEOUT", 0.3)
    settings = make_settings(tmp_path, write_queue_max_bytes=SLOW_LIMIT)
    async with running_server(settings) as server, ws_client(server.ws_url) as good:
        await good.connect(server.token("good"))
        await good.subscribe("news")
        slow, session = await slow_subscriber(server)
        try:
            publisher = Publisher(server, good, session)
            await publisher.until_slow_dropped()
            # Its close frame cannot go out; after CLOSE_TIMEOUT the connection is
            # dropped, buffers and all, instead of lingering.
            await asyncio.wait_for(session.closed(), timeout=5)
            assert await slow.close_code(timeout=5) == ABNORMAL_CLOSURE
        finally:
            slow.close()
        await publisher.batch()
        assert [r["i"] for r in publisher.received] == list(range(publisher.published))
