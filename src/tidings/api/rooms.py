"""HTTP routes of chat rooms: create, list, join, leave, members. Bearer access token auth.

A room's channel is ``room:<id>``. A private room the caller is not in answers
exactly as a room that does not exist: 404 ``{"detail": "room not found"}``.
Errors use FastAPI's ``{"detail": ...}`` body; a missing, invalid or expired
access token is 401 with ``WWW-Authenticate: Bearer``.
"""

# No ``from __future__ import annotations``: FastAPI must see the dependency
# annotations of the routes, which refer to names local to build_rooms_router.

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, Field, field_validator

from ..auth.accounts import Accounts, Unauthenticated
from ..config import ROOM_NAMESPACE
from ..store import RoomView, User
from ..store.models import ROOM_NAME_MAX

bearer_scheme = OAuth2PasswordBearer(tokenUrl="token", auto_error=False)

ROOM_NOT_FOUND = "room not found"


class NewRoom(BaseModel):
    name: str = Field(min_length=1, max_length=ROOM_NAME_MAX)
    private: bool = False

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("a room name is printable text")
        return value


class NewMember(BaseModel):
    user: str = Field(min_length=1, max_length=64)


def room_channel(room_id: str) -> str:
    return f"{ROOM_NAMESPACE}:{room_id}"


def _iso(value: datetime) -> str:
    return value.isoformat()


def _room_json(view: RoomView) -> dict[str, Any]:
    room = view.room
    return {
        "id": room.id,
        "name": room.name,
        "channel": room_channel(room.id),
        "private": room.private,
        "member": view.member,
        "created_at": _iso(room.created_at),
    }


def _not_found(what: str = ROOM_NOT_FOUND) -> HTTPException:
    return HTTPException(404, what)


def build_rooms_router(accounts: Accounts) -> APIRouter:
    store = accounts.store
    hub = accounts.hub
    router = APIRouter(prefix="/rooms", tags=["rooms"])

    async def current_user(token: Annotated[str | None, Depends(bearer_scheme)]) -> User:
        try:
            return await accounts.authenticate(token)
        except Unauthenticated as e:
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None

    CurrentUser = Annotated[User, Depends(current_user)]

    async def visible(room_id: str, user: User) -> RoomView:
        view = await store.room_for(room_id, user)
        if view is None or (view.room.private and not view.member and not user.is_admin):
            raise _not_found()
        return view

    @router.post("", status_code=201)
    async def create_room(body: NewRoom, user: CurrentUser) -> dict[str, Any]:
        """Create a room; its creator is its first member."""
        room = await store.create_room(
            secrets.token_urlsafe(12), body.name, private=body.private, creator=user
        )
        return _room_json(RoomView(room, True))

    @router.get("")
    async def list_rooms(user: CurrentUser) -> dict[str, Any]:
        """Public rooms, and the private rooms the caller is in."""
        return {"rooms": [_room_json(v) for v in await store.rooms_for(user)]}

    @router.get("/{room_id}")
    async def get_room(room_id: str, user: CurrentUser) -> dict[str, Any]:
        return _room_json(await visible(room_id, user))

    @router.post("/{room_id}/join")
    async def join_room(room_id: str, user: CurrentUser) -> dict[str, Any]:
        """Join a public room (a private one needs a member to add you)."""
        view = await store.room_for(room_id, user)
        if view is None or (view.room.private and not view.member):
            raise _not_found()
        await store.add_member(room_id, user.id)
        return _room_json(RoomView(view.room, True))

    @router.post("/{room_id}/leave", status_code=204)
    async def leave_room(room_id: str, user: CurrentUser) -> Response:
        """Leave a room; the caller's live connections are unsubscribed from its channel."""
        if not await store.remove_member(room_id, user.id):
            raise _not_found()  # not a member, or no such room: the same answer
        await hub.unsubscribe_user(user.name, room_channel(room_id))
        return Response(status_code=204)

    @router.get("/{room_id}/members")
    async def list_members(room_id: str, user: CurrentUser) -> dict[str, Any]:
        """The members of a room the caller is in (admins: any room)."""
        view = await visible(room_id, user)
        if not view.member and not user.is_admin:
            raise _not_found()
        members = await store.members(room_id)
        return {"members": [{"name": name, "joined_at": _iso(at)} for name, at in members]}

    @router.post("/{room_id}/members", status_code=201)
    async def add_member(room_id: str, body: NewMember, user: CurrentUser) -> dict[str, Any]:
        """Add a user to a room the caller is in (how private rooms get members)."""
        view = await visible(room_id, user)
        if not view.member and not user.is_admin:
            raise _not_found()
        other = await store.user(body.user)
        if other is None:
            raise _not_found("user not found")
        added = await store.add_member(room_id, other.id)
        return {"room": room_id, "user": other.name, "added": added}

    return router
