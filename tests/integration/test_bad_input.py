"""Bad input from one client, against a real server.

Each test checks the documented outcome for the bad client (an error reply
with the connection left open, or a close code), and that a well-behaved
bystander subscribed on the same server receives publications before and
after: one client's garbage never disturbs the others.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tests.conftest import Running, wait_for
from tests.integration.wsclient import OP_BINARY, OP_TEXT, RawWebSocket, WSClient, ws_client

LIMIT = 64 * 1024  # the default max_message_size


async def delivered(server: Running, client: WSClient, data: Any) -> None:
    """Publish to the bystander's channel through the Python API; it must arrive."""
    await server.tidings.publish("news", data)
    pub = await client.publication("news", data)
    assert pub["data"] == data


@asynccontextmanager
async def bystander(server: Running) -> AsyncIterator[WSClient]:
    async with ws_client(server.ws_url) as good:
        await good.connect(server.token("bystander"))
        await good.subscribe("news")
        await delivered(server, good, {"n": "before"})
        yield good
        await delivered(server, good, {"n": "after"})
        assert await good.ok("ping") == {}
        # The bad connection is gone from the hub; only the bystander is left.
        hub = server.tidings.hub
        await wait_for(lambda: len(hub._open) == 1 and set(hub.users) == {"bystander"})
        assert set(hub.channels) == {"news"}


async def closed_with(client: WSClient, code: int, *, in_band: bool = True) -> None:
    assert await client.closed() == code
    if in_band:  # the disconnect push precedes the close frame
        push = client.disconnect_push()
        assert push is not None and push["code"] == code


async def still_open(client: WSClient) -> None:
    assert await client.ok("ping") == {}
    assert client.is_open


async def connected(server: Running, bad: WSClient) -> None:
    result = await bad.connect(server.token("bad"))
    assert result["client"]


# --- error replies: the connection stays open -------------------------------


async def test_unknown_command(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.send({"id": 5, "frobnicate": {}})
        assert await bad.reply(5) == {
            "id": 5,
            "error": {"code": 104, "message": "unknown method 'frobnicate'"},
        }
        await still_open(bad)


async def test_wrong_types(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.send({"id": 7, "subscribe": {"channel": 5}})
        reply = await bad.reply(7)
        assert reply["error"]["code"] == 107
        await still_open(bad)
        await bad.send({"id": 8, "subscribe": "news"})
        assert (await bad.reply(8))["error"]["code"] == 107
        await bad.send({"id": 9, "publish": {"channel": "chat:x"}})  # no data
        assert (await bad.reply(9))["error"]["code"] == 107
        await still_open(bad)


async def test_offset_with_unicode_digits(server: Running) -> None:
    # "²".isdigit() is true but int("²") fails: this used to escape the decoder
    # as ValueError and drop the connection without a close code.
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        for i, offset in enumerate(["²", "٣", "-1", "18446744073709551616"], start=10):
            await bad.send({"id": i, "subscribe": {"channel": "news", "offset": offset}})
            assert (await bad.reply(i))["error"]["code"] == 107
        await still_open(bad)


async def test_payload_nested_past_what_the_encoder_writes(server: Running) -> None:
    # 300 levels parse (orjson reads 1024) but do not re-encode (254): this used
    # to escape the decoder as TypeError and drop the connection.
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        data = "[" * 300 + "]" * 300
        await bad.send_raw('{"id":3,"publish":{"channel":"chat:x","data":' + data + "}}")
        assert (await bad.reply(3))["error"] == {
            "code": 107,
            "message": "wrong type of field 'data'",
        }
        await still_open(bad)


async def test_publish_without_permission(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        # Channels without a namespace take publications from the server API only,
        # even from their subscribers.
        reply = await bad.call("publish", {"channel": "news", "data": {"spoof": True}})
        assert reply["error"] == {"code": 103, "message": "permission denied"}
        await bad.subscribe("news")
        reply = await bad.call("publish", {"channel": "news", "data": {"spoof": True}})
        assert reply["error"]["code"] == 103
        await still_open(bad)
        # Nothing reached the channel.
        assert not [m for m in bad.unclaimed if "pub" in m.get("push", {})]


async def test_unknown_namespace(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        reply = await bad.call("subscribe", {"channel": "nope:x"})
        assert reply["error"] == {"code": 102, "message": "unknown channel"}
        await still_open(bad)
        assert "nope:x" not in server.tidings.hub.channels


async def test_expired_token(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        reply = await bad.call("connect", {"token": server.token("bad", ttl=-60)})
        assert reply["error"] == {"code": 109, "message": "token expired"}
        # Still open: the client may connect again with a fresh token.
        await connected(server, bad)
        await still_open(bad)


# --- disconnects -------------------------------------------------------------


async def test_malformed_json(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.send_raw('{"id":2,"ping":{}')
        await closed_with(bad, 3501)


async def test_non_object_json(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.send_raw('[{"id":2,"ping":{}}]')
        await closed_with(bad, 3501)


async def test_command_before_connect(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await bad.send({"id": 1, "subscribe": {"channel": "news"}})
        await closed_with(bad, 3501)
        assert not [m for m in bad.unclaimed if m.get("id") == 1]


async def test_invalid_token(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await bad.send({"id": 1, "connect": {"token": "not.a.jwt"}})
        await closed_with(bad, 3500)


async def test_token_signed_with_another_key(server: Running) -> None:
    from tidings.auth import make_connection_token

    async with bystander(server), ws_client(server.ws_url) as bad:
        token = make_connection_token("another-secret-0123456789abcdef0123", "bad")
        await bad.send({"id": 1, "connect": {"token": token}})
        await closed_with(bad, 3500)


async def test_binary_frame(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.send_raw(b'{"id":2,"ping":{}}')
        await closed_with(bad, 3501)


async def test_oversized_frame(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        data = "x" * LIMIT
        await bad.send_raw(json.dumps({"id": 2, "publish": {"channel": "chat:x", "data": data}}))
        # Refused by the WebSocket layer: no in-band push.
        await closed_with(bad, 1009, in_band=False)


async def test_frame_at_the_size_limit(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        await bad.subscribe("chat:x")
        head, tail = '{"id":9,"publish":{"channel":"chat:x","data":"', '"}}'
        frame = head + "x" * (LIMIT - len(head) - len(tail)) + tail
        assert len(frame.encode()) == LIMIT
        await bad.send_raw(frame)
        assert await bad.reply(9) == {"id": 9, "publish": {}}
        # One byte over, counted in UTF-8 bytes, not characters.
        fill = LIMIT + 1 - len(head) - len(tail)
        too_big = head + "é" * (fill // 2) + "x" * (fill % 2) + tail
        assert len(too_big.encode()) == LIMIT + 1
        await bad.send_raw(too_big)
        await closed_with(bad, 1009, in_band=False)


async def test_nested_100k_levels(server: Running) -> None:
    async with bystander(server), ws_client(server.ws_url) as bad:
        await connected(server, bad)
        depth = 100_000
        await bad.send_raw("[" * depth + "]" * depth)  # 200 KB: over the size limit
        await closed_with(bad, 1009, in_band=False)


async def test_deepest_nesting_under_the_size_limit(server: Running) -> None:
    depth = (LIMIT - 64) // 2
    frames = [
        "[" * depth + "]" * depth,
        '{"id":2,"publish":{"channel":"chat:x","data":'
        + "[" * (depth - 30)
        + "]" * (depth - 30)
        + "}}",
        '{"id":2,"ping":{}}' + "\n" + '{"a":' * (depth // 3) + "1" + "}" * (depth // 3),
    ]
    async with bystander(server):
        for frame in frames:
            assert len(frame.encode()) <= LIMIT
            async with ws_client(server.ws_url) as bad:
                await connected(server, bad)
                await bad.send_raw(frame)
                # Past the parser's depth limit: refused, never a crash.
                await closed_with(bad, 3501)
        # The server keeps serving: a new client connects and works.
        async with ws_client(server.ws_url) as fresh:
            await connected(server, fresh)
            await still_open(fresh)


async def test_invalid_utf8_text_frame(server: Running) -> None:
    async with bystander(server):
        raw = await RawWebSocket.open(server.host, server.port)
        try:
            await raw.send({"id": 1, "connect": {"token": server.token("bad")}})
            assert "connect" in await raw.reply(1)
            await raw.send_frame(OP_TEXT, b'{"id":2,"ping":{}}\xff\xfe')
            assert await raw.close_code() == 1007
        finally:
            raw.close()


async def test_invalid_utf8_split_across_fragments(server: Running) -> None:
    async with bystander(server):
        raw = await RawWebSocket.open(server.host, server.port)
        try:
            await raw.send({"id": 1, "connect": {"token": server.token("bad")}})
            assert "connect" in await raw.reply(1)
            # "é" is C3 A9: the first half ends one fragment, a wrong byte starts the next.
            await raw.send_frame(OP_TEXT, b'{"id":2,"ping":{"x":"\xc3', fin=False)
            await raw.send_frame(0x0, b'("}}', fin=True)
            assert await raw.close_code() == 1007
        finally:
            raw.close()


async def test_raw_binary_frame_before_connect(server: Running) -> None:
    async with bystander(server):
        raw = await RawWebSocket.open(server.host, server.port)
        try:
            await raw.send_frame(OP_BINARY, b"\x00\x01garbage")
            assert await raw.close_code() == 3501
        finally:
            raw.close()
