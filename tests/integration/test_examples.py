"""The examples work: served by a real uvicorn, used by a real SDK."""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from centrifuge import Client, PublicationContext, SubscriptionEventHandler

from tests.conftest import API_KEY, SECRET, wait_for
from tidings.auth import make_connection_token

EXAMPLE = "examples.mount_in_fastapi"


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[int]:
    """Serve any ASGI app with uvicorn on a free loopback port; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="none",  # share the test's event loop
        ws="websockets-sansio",
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    with sock:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await wait_for(lambda: server.started or task.done(), timeout=10)
            if task.done():
                task.result()
            yield port
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=15)


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh import of the example, with its settings from the environment."""
    monkeypatch.setenv("TIDINGS_SECRET", SECRET)
    monkeypatch.setenv("TIDINGS_API_KEY", API_KEY)
    monkeypatch.setenv("TIDINGS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TIDINGS_LOG_LEVEL", "warning")
    sys.modules.pop(EXAMPLE, None)
    try:
        yield importlib.import_module(EXAMPLE)
    finally:
        sys.modules.pop(EXAMPLE, None)


# Mounted in a plain uvicorn: always the ASGI path, whatever websocket_direct says.
@pytest.mark.one_websocket_path
async def test_mount_in_fastapi_route_publishes_to_sdk_subscriber(example: ModuleType) -> None:
    async with serve_app(example.app) as port:
        client = Client(
            f"ws://127.0.0.1:{port}/connection/websocket",
            token=make_connection_token(SECRET, "alice"),
        )
        got: list[Any] = []

        class Handler(SubscriptionEventHandler):  # type: ignore[misc]
            async def on_publication(self, ctx: PublicationContext) -> None:
                got.append(ctx.pub.data)

        sub = client.new_subscription("news", Handler())
        try:
            await client.connect()
            await sub.subscribe()
            await sub.ready(timeout=10)

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                response = await http.post("/news", json={"title": "hello"})
            assert response.status_code == 200, response.text
            assert response.json() == {"offset": 1}

            await wait_for(lambda: got, timeout=10)
            assert got == [{"title": "hello"}]
        finally:
            await client.disconnect()
