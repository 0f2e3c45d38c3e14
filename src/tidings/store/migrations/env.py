"""Alembic's entry point for Tidings' migrations.

Tidings runs it through ``tidings.store.database.upgrade``, which hands over an
open connection in ``config.attributes["connection"]``. For writing a new
revision, run Alembic itself with ``-x url=sqlite+aiosqlite:///path.db`` (and
``script_location`` pointing here): this module then opens its own engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from tidings.store.database import VERSION_TABLE, create_engine
from tidings.store.models import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot alter most things in place: Alembic copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
    finally:
        await engine.dispose()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database with -x url=...")
    return url


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given: Connection | None = context.config.attributes.get("connection")
    if given is not None:
        _migrate(given)
    else:
        asyncio.run(_migrate_url(_url()))
