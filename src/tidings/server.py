"""Running a Tidings app under uvicorn, with a graceful SIGTERM.

uvicorn's own shutdown closes WebSockets with 1012; Tidings closes them first
with its documented 3001 (shutdown: reconnect), after it stops listening and
before uvicorn waits for in-flight HTTP requests (server API calls) to finish.
"""

from __future__ import annotations

import gc
import math
import socket
from collections.abc import MutableMapping
from typing import Any

import uvicorn

from .app import Tidings, create_app
from .config import Settings
from .logs import log_config
from .transport.asgi_websocket import asgi_websocket_protocol
from .transport.direct import direct_protocol_factory
from .transport.http import limited_http_protocol


class TidingsServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, tidings: Tidings) -> None:
        super().__init__(config)
        self.tidings = tidings
        tidings.hub.abort_hook = self.abort_connection

    def abort_connection(self, scope: MutableMapping[str, Any]) -> bool:
        """Drop the connection serving ``scope`` (a client that stopped reading)."""
        for connection in self.server_state.connections:
            if getattr(connection, "scope", None) is scope:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
                    return True
        return False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's way, so full collections (pauses felt as latency by
        # every client) only walk what connections allocate.
        gc.collect()
        gc.freeze()
        # A young generation of 10,000 objects instead of 700: publications,
        # frames and replies mostly die within a few loop turns, so they are no
        # longer promoted by collections that come too soon, and full
        # collections (~200 ms at 10,000 connections) come about 10x less often.
        # The benchmark records the collections (server_gc): none in (a).
        gc.set_threshold(10_000, 10, 10)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting before clients are told to reconnect
        await self.tidings.close_connections()
        await super().shutdown(sockets)


def _websocket_protocol(tidings: Tidings) -> Any:
    """The direct protocol for /connection/websocket, the ASGI one for other paths.

    Both are held to the same limits (tidings.transport.asgi_websocket).
    """
    asgi = asgi_websocket_protocol(tidings.settings)
    if not tidings.settings.websocket_direct:
        return asgi
    return direct_protocol_factory(tidings.hub, asgi)


def build_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tidings: Tidings | None = None,
    log_level: str | None = None,
    server_class: type[TidingsServer] = TidingsServer,
) -> TidingsServer:
    """The uvicorn server ``tidings serve`` runs: uvloop, httptools, and our limits."""
    hub = tidings or Tidings(settings)
    app = create_app(tidings=hub)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with limits on the size of request heads and the time they take.
        http=limited_http_protocol(hub.settings),
        ws=_websocket_protocol(hub),
        # The WebSocket layer refuses bigger messages (after decompression) with 1009.
        ws_max_size=hub.settings.max_message_size,
        # Tidings sends its own pings; the protocol's pong detects dead clients.
        ws_ping_interval=None,
        lifespan="on",
        log_level=log_level or hub.settings.log_level,
        log_config=log_config(log_level or hub.settings.log_level, hub.settings.log_format),
        timeout_graceful_shutdown=math.ceil(hub.settings.shutdown_timeout),
        proxy_headers=True,
    )
    return server_class(config, hub)
