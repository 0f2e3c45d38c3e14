"""Join and leave pushes in a storm: everyone hears of everyone, in few frames, in order."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tidings.hub.hub import _joined
from tidings.hub.session import MAX_COALESCED_FRAME
from tidings.protocol.formats import JSON

from ..conftest import Running
from .wsclient import ws_client


def pushes(frame: str | bytes) -> list[dict[str, Any]]:
    assert isinstance(frame, str)
    return [json.loads(line)["push"] for line in frame.split("\n") if line.strip()]


def pushes_in(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["push"] for m in messages if "push" in m]


async def test_a_join_storm_reaches_everyone_in_fewer_frames(server: Running) -> None:
    channel = "chat:storm"  # chat: join/leave pushed to every subscriber
    others = 19
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(ws_client(server.ws_url))
        await first.connect(server.token("first"))
        await first.subscribe(channel)
        clients = [await stack.enter_async_context(ws_client(server.ws_url)) for _ in range(others)]
        await asyncio.gather(*(c.connect(server.token(f"u{i}")) for i, c in enumerate(clients)))
        await asyncio.gather(*(c.subscribe(channel) for c in clients))
        # The first subscriber hears every join (its own included), each once. Its
        # own may have come in the frame of its subscribe reply (the ASGI path
        # sends them together), read already: that frame counts too.
        joined = [p["join"]["info"]["user"] for p in pushes_in(first.take_read()) if "join" in p]
        frames = 1 if joined else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(joined) < others + 1:
            frame = await asyncio.wait_for(first.ws.recv(), deadline - loop.time())
            batch = [p["join"]["info"]["user"] for p in pushes(frame) if "join" in p]
            if batch:
                frames += 1
                joined += batch
        assert sorted(joined) == sorted(["first"] + [f"u{i}" for i in range(others)])
        # One frame per join before; now the joins of a storm travel together.
        assert frames <= (others + 1) // 2, f"{others + 1} joins came in {frames} frames"


async def test_a_join_comes_before_the_joiners_first_message(server: Running) -> None:
    channel = "chat:order"
    async with (
        ws_client(server.ws_url) as alice,
        ws_client(server.ws_url) as bob,
        ws_client(server.ws_url) as carol,
    ):
        await alice.connect(server.token("alice"))
        await bob.connect(server.token("bob"))
        await carol.connect(server.token("carol"))
        await alice.subscribe(channel)
        # Right after alice's join, so that carol's and bob's wait for the end of its window.
        await carol.subscribe(channel)
        await bob.subscribe(channel)
        await bob.ok("publish", {"channel": channel, "data": {"text": "hi, I'm bob"}})
        seen: list[str] = []
        while "message" not in seen:
            push = (await alice.wait(lambda m: "push" in m))["push"]
            if push.get("join", {}).get("info", {}).get("user") == "bob":
                seen.append("join")
            elif push.get("pub", {}).get("data") == {"text": "hi, I'm bob"}:
                seen.append("message")
        assert seen == ["join", "message"]


@pytest.mark.one_websocket_path
def test_a_big_storm_is_split_into_frames_under_the_coalescing_limit() -> None:
    messages = [b'{"push":{"join":%d}}' % i + b"x" * 1000 for i in range(200)]
    frames = _joined(JSON, messages)
    assert len(frames) > 1
    assert all(len(f) <= MAX_COALESCED_FRAME for f in frames)
    assert b"\n".join(frames).split(b"\n") == messages  # all of them, in order
