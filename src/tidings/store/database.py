"""Engines and migrations: SQLite (aiosqlite) by default, PostgreSQL (asyncpg) at scale.

The Alembic migrations live in this package (``migrations/``) and run through
Alembic's API on an async connection, so neither ``alembic.ini`` nor a
separate tool is needed: ``tidings serve`` migrates the embedded SQLite
database by itself, and ``tidings db upgrade`` migrates a shared PostgreSQL
once for every node.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where it is used: most runs only check one revision
# number, and the import costs a noticeable part of the CLI's start-up.

log = logging.getLogger("tidings.store")

# Alembic says at INFO level how it sets itself up, at every start; Tidings logs
# the migrations it runs itself. Left alone where an app set these levels.
for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).parent / "migrations"

# Our own version table: an app that mounts Tidings on its own database keeps its
# ``alembic_version`` for itself.
VERSION_TABLE = "tidings_schema_version"

# Taken for the length of a migration on PostgreSQL, so nodes that start at
# once migrate one after the other. Any constant does; this one spells "tidings".
_PG_MIGRATION_LOCK = 0x7469_6469_6E67_73


class SchemaOutdated(RuntimeError):
    """The database is not at the newest revision: run ``tidings db upgrade``."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets its directory, foreign keys and WAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(parsed, pool_pre_ping=True)
    database = parsed.database or ""
    kwargs: dict[str, Any] = {}
    if database in ("", ":memory:"):
        # One connection for everyone, or each would see its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(parsed, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 10000")
        if database not in ("", ":memory:"):
            # Readers do not wait for the writer (a CLI beside a running server).
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    return engine


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None for an empty database."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine) -> str:
    """Migrate to the newest revision (creating the tables on an empty database).

    A database that is at the newest revision already is left alone, quietly:
    this runs at every start of a node on the embedded SQLite.
    """
    from alembic import command

    head = head_revision()

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
        current = _current(connection)
        if current != head:
            log.info("migrating the database from %s to %s", current or "(empty)", head)
            command.upgrade(_config(connection), "head")

    async with engine.begin() as conn:
        await conn.run_sync(run)
    return head


async def check(engine: AsyncEngine) -> None:
    """Raise ``SchemaOutdated`` unless the database is at the newest revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutdated(
            f"the database is at revision {current or '(empty)'}, this Tidings needs {head}: "
            "run `tidings db upgrade`"
        )
