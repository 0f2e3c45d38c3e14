"""permessage-deflate: the size limit applies after decompression."""

from __future__ import annotations

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.conftest import Running


async def test_deflate_is_negotiated_and_a_bomb_is_closed_not_truncated(server: Running) -> None:
    limit = server.settings.max_message_size
    async with connect(
        server.ws_url,
        extensions=[ClientPerMessageDeflateFactory()],
        max_size=None,
    ) as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        token = server.token("alice")
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token}}).decode())
        assert "connect" in orjson.loads(await ws.recv())

        # Under the limit once inflated: accepted, answered.
        under = {"id": 2, "rpc": {"method": "none", "data": "x" * (limit // 2)}}
        await ws.send(orjson.dumps(under).decode())
        assert orjson.loads(await ws.recv())["error"]["code"] == 104

        # A few KiB on the wire that inflate to 4 MiB: closed with 1009, never cut short.
        bomb = '{"id":3,"rpc":{"method":"none","data":"' + "0" * (4 << 20) + '"}}'
        await ws.send(bomb)
        try:
            reply = await ws.recv()
        except ConnectionClosed:
            reply = None
        assert reply is None
        assert ws.close_code == 1009
