"""Chat messages of rooms: stored first, then published; read back page by page.

``POST /rooms/{id}/messages`` stores the message in the database (which gives
it its id; the server stamps its time and author) and only then publishes it to
the room's channel ``room:<id>``, with history, so clients that were away
recover it. If the store fails, the answer is 503 and nothing is published: a
message either exists (in the database and, normally, live) or its sender got
an error. ``GET /rooms/{id}/messages`` pages through the database, which keeps
every message (the channel's history only keeps the last few minutes for
recovery).

The publication's data is the message as the HTTP routes return it::

    {"type": "message", "id": 42, "room": "<id>", "user": "alice",
     "text": "...", "ts": "2024-05-01T12:00:00.123456+00:00"}

Clients merge what they load and what arrives live by ``id``: the two overlap
where they meet, and ids make the overlap harmless.

Typing indicators are the client RPC ``tidings.typing`` with ``{"room": id}``:
the server checks that the caller's connection is subscribed to the room and
publishes ``{"type": "typing", "user": ...}`` to the channel *without* history,
so typing events are never stored, never recovered, and take no place in the
history that recovery relies on.
"""

# No ``from __future__ import annotations``: FastAPI must see the dependency
# annotations of the routes, which refer to names local to build_chat_router.

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.exc import SQLAlchemyError

from ..auth.accounts import Accounts, Unauthenticated
from ..brokers import BrokerUnavailable
from ..hub import Hub
from ..hub.events import Handlers, RPCEvent, RPCHandler
from ..protocol import ErrorCode, ProtocolError
from ..store import User
from ..store.models import MESSAGE_TEXT_MAX, Message
from .rooms import ROOM_NOT_FOUND, bearer_scheme, room_channel

log = logging.getLogger("tidings.chat")

# The client RPC method of typing indicators.
TYPING_METHOD = "tidings.typing"

# The most messages one page may hold.
PAGE_MAX = 200

STORE_FAILED = "the message was not stored (database error): nothing was sent"


class NewMessage(BaseModel):
    text: str = Field(min_length=1, max_length=MESSAGE_TEXT_MAX)

    @field_validator("text")
    @classmethod
    def _storable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a message needs some text")
        if "\x00" in value:
            # PostgreSQL cannot keep NUL in text; refused on every backend alike.
            raise ValueError("a message cannot contain NUL characters")
        return value


def message_json(message: Message) -> dict[str, Any]:
    """A message as routes return it and as its publication carries it."""
    return {
        "type": "message",
        "id": message.id,
        "room": message.room_id,
        "user": message.user_name,
        "text": message.text,
        "ts": message.created_at.isoformat(),
    }


def typing_handler(hub: Hub) -> RPCHandler:
    """The ``tidings.typing`` RPC: an ephemeral event for the other subscribers of a room."""

    async def typing(event: RPCEvent) -> None:
        room = event.data.get("room") if isinstance(event.data, dict) else None
        if not isinstance(room, str) or not room:
            raise ProtocolError.of(ErrorCode.BAD_REQUEST, "room required")
        channel = room_channel(room)
        session = hub.sessions.get(event.client_id)
        sub = session.subscriptions.get(channel) if session is not None else None
        if sub is None or not event.user:
            # A live subscription stands for membership, as for publish.
            raise ProtocolError.of(ErrorCode.PERMISSION_DENIED)
        data = orjson.dumps({"type": "typing", "room": room, "user": event.user})
        await hub.publish(sub.channel, data, info=sub.info, skip_history=True)

    return typing


def build_chat_router(accounts: Accounts, handlers: Handlers) -> APIRouter:
    """``/rooms/{id}/messages``; also registers the typing RPC in ``handlers``."""
    store = accounts.store
    hub = accounts.hub
    router = APIRouter(prefix="/rooms", tags=["chat"])
    handlers.rpc.setdefault(TYPING_METHOD, typing_handler(hub))

    async def current_user(token: Annotated[str | None, Depends(bearer_scheme)]) -> User:
        try:
            return await accounts.authenticate(token)
        except Unauthenticated as e:
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None

    CurrentUser = Annotated[User, Depends(current_user)]

    async def member_of(room_id: str, user: User, *, admin_reads: bool = False) -> None:
        view = await store.room_for(room_id, user)
        if view is None or not (view.member or (admin_reads and user.is_admin)):
            raise HTTPException(404, ROOM_NOT_FOUND)

    @router.post("/{room_id}/messages", status_code=201)
    async def post_message(room_id: str, body: NewMessage, user: CurrentUser) -> dict[str, Any]:
        """Store a message, then publish it to ``room:<id>``. Members only.

        503 when the database fails: the message was neither stored nor sent.
        ``delivered`` is false when it was stored but the broker could not
        publish it (it is then in the history pages, not live).
        """
        await member_of(room_id, user)
        try:
            message = await store.add_message(room_id, user, body.text)
        except (SQLAlchemyError, OSError):
            log.exception("storing a message in room %s failed", room_id)
            raise HTTPException(503, STORE_FAILED) from None
        data = message_json(message)
        delivered = True
        try:
            await hub.publish(hub.channel(room_channel(room_id)), orjson.dumps(data))
        except BrokerUnavailable:
            log.warning("message %s was stored but not published: broker unavailable", message.id)
            delivered = False
        return {"message": data, "delivered": delivered}

    @router.get("/{room_id}/messages")
    async def list_messages(
        room_id: str,
        user: CurrentUser,
        before: Annotated[int | None, Query(ge=1)] = None,
        after: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    ) -> dict[str, Any]:
        """Messages oldest first, and ``has_more``. Members (and admins) only.

        No cursor: the newest ``limit``. ``before=<id>``: the newest ones older
        than that id ("load earlier"; ``has_more``: older ones remain).
        ``after=<id>``: the oldest ones newer than that id (catching up after a
        gap; ``has_more``: newer ones remain).
        """
        if before is not None and after is not None:
            raise HTTPException(400, "give before or after, not both")
        await member_of(room_id, user, admin_reads=True)
        try:
            rows, more = await store.messages(room_id, before=before, after=after, limit=limit)
        except (SQLAlchemyError, OSError):
            log.exception("reading the messages of room %s failed", room_id)
            raise HTTPException(503, "the messages could not be read (database error)") from None
        return {"messages": [message_json(m) for m in rows], "has_more": more}

    return router
