"""Browser safety: the WebSocket handshake checks Origin against an exact allowlist."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.conftest import Running, running_server, test_settings


async def handshake_status(server: Running, origin: str | None, path: str) -> int:
    url = f"ws://{server.host}:{server.port}{path}"
    try:
        async with connect(url, origin=Origin(origin) if origin else None):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


@pytest.mark.parametrize("path", ["/connection/websocket", "/ws"])
async def test_same_origin_only_by_default(server: Running, path: str) -> None:
    own = f"http://{server.host}:{server.port}"
    assert await handshake_status(server, own, path) == 101
    assert await handshake_status(server, None, path) == 101  # not a browser
    assert await handshake_status(server, "http://evil.example", path) == 403
    assert await handshake_status(server, "null", path) == 403
    assert await handshake_status(server, f"ftp://{server.host}:{server.port}", path) == 403


async def test_allowlist_is_exact(tmp_path: Path) -> None:
    settings = test_settings(tmp_path, allowed_origins=["https://app.example.com"])
    async with running_server(settings) as server:
        path = "/connection/websocket"
        assert await handshake_status(server, "https://app.example.com", path) == 101
        for origin in (
            "https://app.example.com.evil.com",  # suffix trick
            "http://app.example.com",  # scheme mismatch
            "https://app.example.com:8443",  # port mismatch
            "https://evil.com",
            "null",
        ):
            assert await handshake_status(server, origin, path) == 403, origin
