"""``Tidings``: the hub as a FastAPI router plus a lifespan, and the Python API.

Mount it in any FastAPI app::

    tidings = Tidings()
    app = FastAPI(lifespan=tidings.lifespan)
    app.include_router(tidings.router)

    await tidings.publish("news", {"title": "hello"})
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .api.accounts import build_router as build_accounts_router
from .api.chat import build_chat_router
from .api.metrics import build_registry
from .api.server_api import handle_api_request
from .auth.accounts import Accounts
from .auth.tokens import ApiKeyring
from .brokers import Broker, BrokerUnavailable, create_broker
from .config import Settings
from .hub import Hub, personal_channel
from .hub.events import (
    ConnectHandler,
    Handlers,
    MessageHandler,
    PublishHandler,
    RPCHandler,
    SubscribeHandler,
)
from .protocol import ClientInfo, Disconnect, DisconnectCode, Publication, StreamPosition
from .store import Store
from .transport.websocket import echo_endpoint, hide_secrets_from_logs, protocol_endpoint
from .web import install_web_app

log = logging.getLogger("tidings")

H = TypeVar("H")


class Tidings:
    """A real-time hub for one FastAPI app: endpoints, lifecycle and the Python API."""

    def __init__(self, settings: Settings | None = None, *, broker: Broker | None = None) -> None:
        loaded = (settings if settings is not None else Settings.load()).with_generated_keys()
        # The server API keys are kept as digests only: the settings drop them.
        api_keys = ApiKeyring.from_settings(loaded)
        self.settings = loaded.model_copy(update={"api_key": None, "api_keys": []})
        hide_secrets_from_logs()  # uvicorn's debug log would show frames, tokens included
        self.handlers = Handlers()
        self.hub = Hub(
            self.settings,
            broker or create_broker(self.settings.broker_url),
            self.handlers,
            api_keys=api_keys,
        )
        self.router = self._build_router()
        # Users, refresh tokens and rooms: /token, /logout, /register, /rooms.
        self.store = Store(self.settings.effective_database_url)
        self.accounts = Accounts(self.settings, self.store, self.hub)
        self.router.include_router(build_accounts_router(self.accounts))
        # Chat messages: /rooms/<id>/messages, and the typing RPC.
        self.router.include_router(build_chat_router(self.accounts, self.handlers))

    # --- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Tidings:
        # Opens the database first; migrates the embedded SQLite on a fresh data dir.
        await self.accounts.start()
        try:
            await self.hub.start()
        except BaseException:
            await self.accounts.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.hub.stop()
        finally:
            await self.accounts.close()

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Pass as ``FastAPI(lifespan=tidings.lifespan)``, or enter ``async with tidings``."""
        async with self:
            yield

    async def close_connections(self) -> None:
        """Close every client connection with 3001 (reconnect) and refuse new ones.

        The server API keeps working, so in-flight calls finish; the lifespan's
        exit closes the broker afterwards.
        """
        await self.hub.close_sessions()

    # --- routes -----------------------------------------------------------

    def _build_router(self) -> APIRouter:
        router = APIRouter()
        hub = self.hub

        @router.websocket("/connection/websocket")
        async def connection_websocket(websocket: WebSocket) -> None:
            await protocol_endpoint(websocket, hub)

        @router.websocket("/ws")
        async def echo(websocket: WebSocket) -> None:
            await echo_endpoint(websocket, hub)

        @router.post("/api/{method}")
        async def server_api(method: str, request: Request) -> Response:
            return await handle_api_request(hub, method, request)

        registry = build_registry(hub)

        @router.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        @router.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @router.get("/readyz")
        async def readyz() -> Response:
            if hub.ready:
                return JSONResponse({"status": "ready"})
            return JSONResponse({"status": "not ready"}, status_code=503)

        return router

    # --- handlers ---------------------------------------------------------

    def on_connect(self, handler: ConnectHandler) -> ConnectHandler:
        """Decorate ``async def f(event: ConnectEvent)``: runs before a client connects."""
        self.handlers.connect = handler
        return handler

    def on_subscribe(self, handler: SubscribeHandler) -> SubscribeHandler:
        self.handlers.subscribe = handler
        return handler

    def on_publish(self, handler: PublishHandler) -> PublishHandler:
        """Runs before a client's publication; may change ``event.data`` or raise to reject."""
        self.handlers.publish = handler
        return handler

    def on_message(self, handler: MessageHandler) -> MessageHandler:
        self.handlers.message = handler
        return handler

    def rpc(self, method: str) -> Any:
        """Decorate ``async def f(event: RPCEvent) -> Any`` to answer the client RPC ``method``."""

        def register(handler: RPCHandler) -> RPCHandler:
            self.handlers.rpc[method] = handler
            return handler

        return register

    # --- the Python API ---------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, tags: dict[str, str] | None = None
    ) -> StreamPosition:
        """Publish ``data`` (anything JSON-serialisable) to ``channel``'s subscribers."""
        return await self.hub.publish(self.hub.channel(channel), orjson.dumps(data), tags=tags)

    async def broadcast(self, channels: Iterable[str], data: Any) -> list[StreamPosition]:
        """Publish the same data to several channels; it is serialised once."""
        encoded = orjson.dumps(data)
        return [await self.hub.publish(self.hub.channel(c), encoded) for c in channels]

    async def send_notification(self, user: str, data: Any) -> StreamPosition:
        """Publish to ``user``'s personal channel ``notifications#<user>``."""
        return await self.publish(personal_channel(user), data)

    async def send_message(self, user: str, data: Any) -> int:
        """Push an asynchronous message to every connection of ``user``, on every node.

        Returns how many connections were on this node. Raises
        ``BrokerUnavailable`` (after acting here) when the other nodes cannot be told.
        """
        return await self.hub.asend_message(user, orjson.dumps(data))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.hub.presence(self.hub.channel(channel))

    async def history(
        self,
        channel: str,
        *,
        limit: int = -1,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> tuple[list[Publication], StreamPosition]:
        result = await self.hub.history(
            self.hub.channel(channel), limit=limit, since=since, reverse=reverse
        )
        return list(result.publications), StreamPosition(result.offset, result.epoch)

    async def disconnect(
        self, user: str, *, code: int = int(DisconnectCode.FORCE_NO_RECONNECT), reason: str = ""
    ) -> int:
        """Close every connection of ``user``, on every node; returns how many were here.

        ``code`` is a close code in 3001-4999: below 3500 (or 4000-4499) the
        SDKs reconnect, above they do not. Raises ``BrokerUnavailable`` (after
        acting here) when the other nodes cannot be told.
        """
        if not 3001 <= code <= 4999:
            raise ValueError("disconnect code must be in 3001-4999")
        default = "force reconnect" if Disconnect(code, "").reconnect else "force disconnect"
        return await self.hub.adisconnect_user(user, Disconnect(code, reason or default))


def create_app(settings: Settings | None = None, tidings: Tidings | None = None) -> FastAPI:
    """A FastAPI app that serves Tidings alone: what ``tidings serve`` runs."""
    hub = tidings or Tidings(settings)
    app = FastAPI(title="Tidings", lifespan=hub.lifespan)
    app.include_router(hub.router)
    if hub.settings.web_app:
        install_web_app(app, hub)  # / (chat), /admin, /assets, /admin/api
    add_cors(app, hub.settings)
    app.add_exception_handler(BrokerUnavailable, broker_unavailable)
    app.state.tidings = hub
    return app


async def broker_unavailable(request: Request, exc: Exception) -> Response:
    """An HTTP route that needed the broker while it was down: a visible, retryable 503.

    Apps that mount Tidings can install it too:
    ``app.add_exception_handler(BrokerUnavailable, broker_unavailable)``.
    """
    return JSONResponse(
        {"detail": "the broker is unavailable; try again", "temporary": True}, status_code=503
    )


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Let the browsers of ``settings.cors_origins`` call the HTTP API; nothing when empty.

    Apps that mount Tidings call this on their own app (or add Starlette's
    CORSMiddleware themselves). No credentials: the API takes keys and bearer
    tokens in headers, never cookies. WebSockets are not affected (see Origin).
    """
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        allow_credentials=False,
        max_age=600,
    )
