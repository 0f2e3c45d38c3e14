"""Replies: large ones are not mistaken for a slow client, queued ones survive a close."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, Running, running_server, test_settings
from tests.integration.wsclient import ws_client
from tidings import ProtocolError


async def test_a_history_reply_larger_than_the_queue_limit_is_delivered(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, write_queue_max_bytes=64 * 1024)
    async with running_server(settings) as server:
        for n in range(20):  # ~200 KB of history: three times the queue limit
            await server.tidings.publish("chat:big", {"n": n, "pad": "x" * 10_000})
        async with ws_client(server.ws_url) as client:
            await client.connect(server.token("alice"))
            await client.subscribe("chat:big")
            history = await client.ok("history", {"channel": "chat:big", "limit": -1})
            assert [p["data"]["n"] for p in history["publications"]] == list(range(20))
            assert client.is_open
            # And the connection still works afterwards.
            await server.tidings.publish("chat:big", {"n": 20})
            await client.publication("chat:big", {"n": 20})


async def test_replies_queued_before_a_close_are_delivered_first(server: Running) -> None:
    async with ws_client(server.ws_url) as client:
        token = server.token("alice")
        # connect, then a line that closes the connection, in one frame.
        await client.send_raw('{"id":1,"connect":{"token":"' + token + '"}}\n{"id":2,"connect":{}}')
        reply = await client.reply(1)
        assert reply["connect"]["client"]
        assert await client.closed() == 3501


@pytest.mark.one_websocket_path
@pytest.mark.parametrize(
    ("user", "status"),
    [("alice", 200), ("x#bob", 400), ("a,b", 400), ("", 400)],
)
async def test_notifications_refuse_user_names_that_move_the_boundary(
    server: Running, user: str, status: int
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post(
            "/api/send_notification",
            json={"user": user, "data": {"hi": 1}},
            headers={"X-API-Key": API_KEY},
        )
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["code"] == 107
        with pytest.raises(ProtocolError):
            await server.tidings.send_notification(user, {"hi": 1})


@pytest.mark.one_websocket_path
async def test_disconnect_code_3000_is_refused(server: Running) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post(
            "/api/disconnect",
            json={"user": "alice", "disconnect": {"code": 3000, "reason": "x"}},
            headers={"X-API-Key": API_KEY},
        )
    assert response.status_code == 400
    with pytest.raises(ValueError, match="3001-4999"):
        await server.tidings.disconnect("alice", code=3000)
