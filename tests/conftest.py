"""Shared test fixtures: real servers on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.postgres import database_url, postgres_database, postgres_server  # noqa: F401
from tests.redis_server import RedisServer, redis_factory, redis_server  # noqa: F401
from tidings import Settings, Tidings
from tidings.auth import make_connection_token
from tidings.server import build_server

SECRET = "test-secret-0123456789abcdef0123456789"
API_KEY = "test-api-key"

T = TypeVar("T")

# The WebSocket path (Settings.websocket_direct) of the servers a test starts
# without choosing one: test_settings and the CLI's environment (cli_env) apply
# it. None: Settings' own default. tests/integration/conftest.py sets it to each
# path in turn.
websocket_direct: ContextVar[bool | None] = ContextVar("websocket_direct", default=None)


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class Running:
    tidings: Tidings
    host: str
    port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/connection/websocket"

    @property
    def settings(self) -> Settings:
        return self.tidings.settings

    def token(self, user: str, **kwargs: Any) -> str:
        assert self.settings.secret
        return make_connection_token(self.settings.secret, user, **kwargs)


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "secret": SECRET,
        "api_key": API_KEY,
        "data_dir": tmp_path,
        "log_level": "warning",
    }
    direct = websocket_direct.get()
    if direct is not None:
        values["websocket_direct"] = direct
    values.update(overrides)  # a test that sets websocket_direct keeps its choice
    return Settings.load(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@asynccontextmanager
async def running_server(
    settings: Settings, tidings: Tidings | None = None
) -> AsyncIterator[Running]:
    """Run the real uvicorn server, as `tidings serve` does, on a free loopback port."""
    hub = tidings or Tidings(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(hub.settings, host="127.0.0.1", port=port, tidings=hub)
    server.config.loop = "none"  # share the test's event loop
    with sock:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await wait_for(lambda: server.started or task.done(), timeout=10)
            if task.done():
                task.result()
            yield Running(hub, "127.0.0.1", port)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=15)


@pytest.fixture(params=["memory", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Tests that run a server run on each broker; on Redis with keys of their own."""
    if request.param == "memory":
        return "memory://"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.unique_url()


@pytest.fixture
def settings(tmp_path: Path, broker_url: str) -> Settings:
    return test_settings(tmp_path, broker_url=broker_url)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    async with running_server(settings) as running:
        yield running
