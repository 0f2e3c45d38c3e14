"""The database: users, refresh tokens, rooms and memberships (SQLAlchemy 2, async).

SQLite in the data dir by default (aiosqlite); PostgreSQL with
``TIDINGS_DATABASE_URL=postgresql+asyncpg://...``. Alembic migrations ship in
``migrations/``.
"""

from .database import SchemaOutdated, current_revision, head_revision, upgrade
from .models import Membership, RefreshToken, Room, User
from .queries import RefreshOutcome, RoomView, Rotation, Store, UserExists

__all__ = [
    "Membership",
    "RefreshOutcome",
    "RefreshToken",
    "Room",
    "RoomView",
    "Rotation",
    "SchemaOutdated",
    "Store",
    "User",
    "UserExists",
    "current_revision",
    "head_revision",
    "upgrade",
]
