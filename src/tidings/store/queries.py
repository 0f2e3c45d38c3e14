"""``Store``: every query Tidings makes, each in its own short transaction."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import database
from .models import Membership, Message, RefreshToken, Room, User, utcnow


class UserExists(Exception):
    """A user with that name exists already."""


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    # A token that was used already: it leaked, and its family is now revoked.
    REUSED = "reused"


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: RefreshOutcome
    user: User | None = None
    family: str = ""


@dataclass(frozen=True, slots=True)
class RoomView:
    """A room as one user sees it."""

    room: Room
    member: bool


class Store:
    """The database of one Tidings node (shared by several nodes on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    # --- lifecycle --------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def open(self, *, migrate: bool | None = None) -> None:
        """Connect; migrate when asked (default: only the embedded SQLite), else check.

        Raises ``SchemaOutdated`` when the database is behind and may not be migrated.
        """
        if self._engine is not None:
            return
        engine = database.create_engine(self.url)
        try:
            if migrate if migrate is not None else database.is_sqlite(self.url):
                await database.upgrade(engine)
            else:
                await database.check(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        engine, self._engine, self._sessions = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    def session(self) -> AsyncSession:
        if self._sessions is None:
            raise RuntimeError("the store is not open")
        return self._sessions()

    # --- users ------------------------------------------------------------

    async def create_user(self, name: str, password_hash: str, *, is_admin: bool = False) -> User:
        user = User(name=name, password_hash=password_hash, is_admin=is_admin, created_at=utcnow())
        try:
            async with self.session() as s, s.begin():
                s.add(user)
        except IntegrityError:
            raise UserExists(name) from None
        return user

    async def user(self, name: str) -> User | None:
        async with self.session() as s:
            return await s.scalar(select(User).where(User.name == name))

    async def users(self) -> Sequence[User]:
        async with self.session() as s:
            return (await s.scalars(select(User).order_by(User.name))).all()

    async def delete_user(self, name: str) -> bool:
        """Delete a user with their tokens and memberships; their rooms stay."""
        async with self.session() as s, s.begin():
            result = await s.execute(delete(User).where(User.name == name))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def set_password_hash(self, name: str, password_hash: str) -> bool:
        """Change a password and revoke every refresh token of that user."""
        async with self.session() as s, s.begin():
            user_id = await s.scalar(select(User.id).where(User.name == name))
            if user_id is None:
                return False
            await s.execute(
                update(User).where(User.id == user_id).values(password_hash=password_hash)
            )
            await s.execute(
                update(RefreshToken).where(RefreshToken.user_id == user_id).values(revoked=True)
            )
        return True

    # --- refresh tokens ---------------------------------------------------

    async def add_refresh_token(
        self, token_id: str, user_id: int, family: str, expires_at: datetime
    ) -> None:
        """Store a new token (the first of a family at login); forget this user's expired ones."""
        now = utcnow()
        async with self.session() as s, s.begin():
            await s.execute(
                delete(RefreshToken).where(
                    RefreshToken.user_id == user_id, RefreshToken.expires_at < now
                )
            )
            s.add(
                RefreshToken(
                    id=token_id,
                    user_id=user_id,
                    family=family,
                    created_at=now,
                    expires_at=expires_at,
                    revoked=False,
                )
            )

    async def rotate_refresh_token(
        self, token_id: str, new_id: str, expires_at: datetime
    ) -> Rotation:
        """Spend a refresh token for its successor ``new_id``, once.

        The spend is one conditional UPDATE, so of two requests racing with the
        same token exactly one wins; the other counts as reuse.
        """
        now = utcnow()
        async with self.session() as s, s.begin():
            spent = await s.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.id == token_id,
                    RefreshToken.replaced_by.is_(None),
                    RefreshToken.revoked.is_(False),
                    RefreshToken.expires_at > now,
                )
                .values(replaced_by=new_id)
                .returning(RefreshToken.user_id, RefreshToken.family)
            )
            row = spent.first()
            if row is not None:
                user_id, family = row
                s.add(
                    RefreshToken(
                        id=new_id,
                        user_id=user_id,
                        family=family,
                        created_at=now,
                        expires_at=expires_at,
                        revoked=False,
                    )
                )
                user = await s.get(User, user_id)
                return Rotation(RefreshOutcome.ROTATED, user, family)
            token = await s.get(RefreshToken, token_id)
            if token is None:
                return Rotation(RefreshOutcome.UNKNOWN)
            user = await s.get(User, token.user_id)
            if token.replaced_by is not None:
                await self._revoke_family(s, token.family)
                return Rotation(RefreshOutcome.REUSED, user, token.family)
            if token.revoked:
                return Rotation(RefreshOutcome.REVOKED, user, token.family)
            return Rotation(RefreshOutcome.EXPIRED, user, token.family)

    @staticmethod
    async def _revoke_family(s: AsyncSession, family: str) -> None:
        await s.execute(
            update(RefreshToken).where(RefreshToken.family == family).values(revoked=True)
        )

    async def revoke_family_of(self, token_id: str) -> User | None:
        """Revoke the family of a refresh token (used or not); returns its user."""
        async with self.session() as s, s.begin():
            token = await s.get(RefreshToken, token_id)
            if token is None:
                return None
            await self._revoke_family(s, token.family)
            return await s.get(User, token.user_id)

    async def revoke_user_tokens(self, user_id: int) -> None:
        async with self.session() as s, s.begin():
            await s.execute(
                update(RefreshToken).where(RefreshToken.user_id == user_id).values(revoked=True)
            )

    # --- rooms ------------------------------------------------------------

    async def create_room(self, room_id: str, name: str, *, private: bool, creator: User) -> Room:
        """Create a room; its creator is its first member."""
        now = utcnow()
        room = Room(id=room_id, name=name, private=private, created_by=creator.id, created_at=now)
        async with self.session() as s, s.begin():
            s.add(room)
            await s.flush()
            s.add(Membership(room_id=room_id, user_id=creator.id, joined_at=now))
        return room

    async def rooms_for(self, user: User) -> list[RoomView]:
        """Public rooms, and the private ones ``user`` is in."""
        mine = exists().where(Membership.room_id == Room.id, Membership.user_id == user.id)
        query = (
            select(Room, mine.label("member"))
            .where(or_(Room.private.is_(False), mine))
            .order_by(Room.created_at, Room.id)
        )
        async with self.session() as s:
            rows = (await s.execute(query)).all()
        return [RoomView(room, bool(member)) for room, member in rows]

    async def room_for(self, room_id: str, user: User) -> RoomView | None:
        """The room and whether ``user`` is in it; None when it does not exist.

        Whether a private room may be shown is for the caller to decide.
        """
        async with self.session() as s:
            room = await s.get(Room, room_id)
            if room is None:
                return None
            member = await s.get(Membership, (room_id, user.id)) is not None
        return RoomView(room, member)

    async def is_member(self, user_name: str, room_id: str) -> bool:
        """Whether ``user_name`` is in the room: one indexed lookup, made per command."""
        query = (
            select(Membership.room_id)
            .join(User, User.id == Membership.user_id)
            .where(Membership.room_id == room_id, User.name == user_name)
            .limit(1)
        )
        async with self.session() as s:
            return await s.scalar(query) is not None

    async def add_member(self, room_id: str, user_id: int) -> bool:
        """Add a member; False when they were one already."""
        async with self.session() as s, s.begin():
            if await s.get(Membership, (room_id, user_id)) is not None:
                return False
            s.add(Membership(room_id=room_id, user_id=user_id, joined_at=utcnow()))
        return True

    async def remove_member(self, room_id: str, user_id: int) -> bool:
        async with self.session() as s, s.begin():
            result = await s.execute(
                delete(Membership).where(
                    Membership.room_id == room_id, Membership.user_id == user_id
                )
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def members(self, room_id: str) -> list[tuple[str, datetime]]:
        query = (
            select(User.name, Membership.joined_at)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.room_id == room_id)
            .order_by(Membership.joined_at, User.name)
        )
        async with self.session() as s:
            return [(name, joined) for name, joined in (await s.execute(query)).all()]

    # --- chat messages ----------------------------------------------------

    async def add_message(self, room_id: str, user: User, text: str) -> Message:
        """Store a message; the database assigns its id, the server its time."""
        message = Message(
            room_id=room_id, user_id=user.id, user_name=user.name, text=text, created_at=utcnow()
        )
        async with self.session() as s, s.begin():
            s.add(message)
        return message

    async def messages(
        self, room_id: str, *, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> tuple[list[Message], bool]:
        """Up to ``limit`` messages of a room, oldest first, and whether there are more.

        With ``after``: the oldest ones after that id ("more" is newer ones).
        Otherwise the newest ones, before ``before`` if given ("more" is older ones).
        """
        query = select(Message).where(Message.room_id == room_id)
        if after is not None:
            query = query.where(Message.id > after).order_by(Message.id)
        else:
            if before is not None:
                query = query.where(Message.id < before)
            query = query.order_by(Message.id.desc())
        async with self.session() as s:
            rows = list((await s.scalars(query.limit(limit + 1))).all())
        more = len(rows) > limit
        rows = rows[:limit]
        if after is None:
            rows.reverse()
        return rows, more
