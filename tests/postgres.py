"""A real PostgreSQL (the Debian package) for tests, on an ephemeral loopback port.

``postgres_server`` is one server for the whole test session, in a temporary
directory, run as the ``postgres`` system user when the tests run as root
(PostgreSQL refuses to run as root). ``postgres_database`` gives each test an
empty database of its own; ``database_url`` runs a test on SQLite and on a
migrated PostgreSQL database.

Without the binaries, tests that need them are skipped, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.missing import component_missing
from tidings.store import upgrade
from tidings.store.database import create_engine

START_TIMEOUT = 30.0
SUPERUSER = "tidings"
SYSTEM_USER = "postgres"

T = TypeVar("T")


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory; skip (or fail under CI) without one."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        component_missing(
            "PostgreSQL is not installed (Debian package postgresql; ./dev.sh installs it)"
        )
    return found[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root for the postgres system user (created if missing)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", SYSTEM_USER],
            check=True,
        )
        entry = pwd.getpwnam(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, trusting loopback connections."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.as_user = _run_as()
        self.directory = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
        if self.as_user:
            os.chown(self.directory, self.as_user["user"], self.as_user["group"])
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args, cwd=self.directory, capture_output=True, timeout=120, **self.as_user
        )

    def init(self) -> None:
        result = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')}")

    def _ready(self) -> bool:
        result = self._run(
            str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)
        )
        return result.returncode == 0

    def start(self) -> None:
        """Start on a free port and wait (polling, bounded) until it accepts connections."""
        for _attempt in range(3):
            self.port = free_port()
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [
                        str(self.bin / "postgres"),
                        "-D",
                        str(self.data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.directory),
                        # Test data need not survive a crash: skip the syncs.
                        "-F",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "synchronous_commit=off",
                    ],
                    cwd=self.directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **self.as_user,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while self.process.poll() is None and not self._ready():
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()}")
                time.sleep(0.02)
            if self.process.poll() is None:
                return
            self.process = None  # lost the port to someone else: try another
        raise RuntimeError(f"PostgreSQL exited at start: {self.log.read_text()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from a synchronous fixture, on a loop of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(server: PostgresServer, statement: str) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def migrate(url: str) -> None:
    """What ``tidings db upgrade`` does."""
    engine = create_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database of this test's own; yields its SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    run_async(_admin(postgres_server, f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.url(name)
    finally:
        run_async(_admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Run on the embedded SQLite (None: the default in the data dir) and on PostgreSQL.

    The PostgreSQL database is migrated first, as ``tidings db upgrade`` would:
    servers do not migrate a shared database by themselves.
    """
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_database")
    run_async(migrate(url))
    return url
