"""``tidings user ...`` and ``tidings db ...``: accounts and the database from the shell.

Passwords never appear on the command line: ``user create`` and
``user set-password`` prompt twice on a terminal, or read one line from standard
input with ``--password-stdin``. The embedded SQLite database is created and
migrated on first use; a PostgreSQL database is migrated with ``db upgrade``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from .auth.passwords import (
    InvalidUserName,
    Passwords,
    WeakPassword,
    check_password,
    check_user_name,
)
from .cli_shared import ConfigOption, fail, load_settings
from .store import SchemaOutdated, Store, UserExists, current_revision, head_revision, upgrade
from .store.database import create_engine

T = TypeVar("T")

user_app = typer.Typer(help="Manage users (accounts in the database).", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)

PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from one line of standard input."),
]


def _with_store(config: Path | None, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store as ``serve`` would (SQLite: migrated on first use), run ``work``."""
    settings = load_settings(config)

    async def run() -> T:
        store = Store(settings.effective_database_url)
        await store.open(migrate=settings.database_auto_migrate)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except SchemaOutdated as e:
        fail(str(e))
    except (SQLAlchemyError, OSError) as e:
        fail(f"database error: {e}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("no password on standard input")
        password = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt(
            "Password", hide_input=True, confirmation_prompt="Repeat the password"
        )
    else:
        fail("standard input is not a terminal: pass --password-stdin")
    try:
        return check_password(password)
    except WeakPassword as e:
        fail(str(e))


# --- user -----------------------------------------------------------------


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The new user's name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Create a user; prompts for the password twice (or reads it with --password-stdin)."""
    try:
        check_user_name(name)
    except InvalidUserName as e:
        fail(str(e), code=2)
    password = _read_password(password_stdin)
    password_hash = Passwords().hash(password)

    async def work(store: Store) -> None:
        await store.create_user(name, password_hash, is_admin=admin)

    try:
        _with_store(config, work)
    except UserExists:
        fail(f"user {name!r} exists already")
    typer.echo(f"Created {'admin' if admin else 'user'} {name}")


@user_app.command("list")
def user_list(config: ConfigOption = None) -> None:
    """List users: name, role and creation time."""
    users = _with_store(config, lambda store: store.users())
    width = max((len(u.name) for u in users), default=4)
    for user in users:
        role = "admin" if user.is_admin else "user"
        typer.echo(f"{user.name:<{width}}  {role:<5}  {user.created_at.isoformat()}")


@user_app.command("delete")
def user_delete(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user to delete.")],
    config: ConfigOption = None,
) -> None:
    """Delete a user, their refresh tokens and room memberships."""
    if not _with_store(config, lambda store: store.delete_user(name)):
        fail(f"no user {name!r}")
    typer.echo(f"Deleted user {name}")


@user_app.command("set-password")
def user_set_password(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The user.")],
    password_stdin: PasswordStdin = False,
    config: ConfigOption = None,
) -> None:
    """Change a password (prompt or --password-stdin); the user's refresh tokens are revoked."""
    password_hash = Passwords().hash(_read_password(password_stdin))
    if not _with_store(config, lambda store: store.set_password_hash(name, password_hash)):
        fail(f"no user {name!r}")
    typer.echo(f"Changed the password of {name}")


# --- db -------------------------------------------------------------------


def _with_engine(config: Path | None, work: Callable[..., Awaitable[T]]) -> T:
    settings = load_settings(config)

    async def run() -> T:
        engine = create_engine(settings.effective_database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (SQLAlchemyError, OSError) as e:
        fail(f"database error: {e}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the database to this version's schema (run once per upgrade)."""
    revision = _with_engine(config, upgrade)
    typer.echo(f"Database at revision {revision} (newest)")


@db_app.command("status")
def db_status(config: ConfigOption = None) -> None:
    """Show the database's revision; exits with 1 when it needs `tidings db upgrade`."""
    current = _with_engine(config, current_revision)
    head = head_revision()
    typer.echo(f"Database at revision {current or '(empty)'}; this Tidings needs {head}")
    if current != head:
        raise typer.Exit(1)
