"""A real redis-server (the Debian package) for tests, on an ephemeral loopback port.

``redis_server`` is one server for the whole test session (tests keep apart by
key prefix); ``redis_factory`` makes servers of a test's own, which it may stop
and start again on the same port, with or without their data.

Without the binary, tests that need it are skipped, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.missing import component_missing

BINARY = "redis-server"
START_TIMEOUT = 10.0


def redis_binary() -> str:
    """The redis-server path; skip the test (or fail it under CI) when it is missing."""
    path = shutil.which(BINARY)
    if path is None:
        component_missing(
            f"{BINARY} is not installed (Debian package redis-server; ./dev.sh installs it)"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process in its own directory; stop and start keep the port."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.binary = redis_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # persistent: an append-only file synced on every write, so a restart
        # finds every acknowledged write again.
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.directory / "redis.log"

    def url(self, db: int = 0, prefix: str | None = None, **options: object) -> str:
        query = [f"prefix={prefix}"] if prefix else []
        query += [f"{k}={v}" for k, v in options.items()]
        return f"redis://127.0.0.1:{self.port}/{db}" + ("?" + "&".join(query) if query else "")

    def unique_url(self, **options: object) -> str:
        """A URL with a prefix of its own: keys and channels no other test sees."""
        return self.url(prefix=f"t{uuid.uuid4().hex[:12]}", **options)

    def _spawn(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
            "--logfile",
            str(self._log),
            "--protected-mode",
            "no",
        ]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(
            args, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            log = self._log.read_text() if self._log.exists() else ""
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")

    def start(self) -> None:
        """Start and wait (polling, bounded) until it answers PING."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    async def start_async(self) -> None:
        """As start, without blocking the event loop (the servers under test run on it)."""
        self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await loop.run_in_executor(None, _ping, self.port):
            self._check_alive()
            if loop.time() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            await asyncio.sleep(0.01)

    def stop(self, *, kill: bool = False) -> None:
        """Stop it: SIGTERM (a clean shutdown), or SIGKILL with ``kill``."""
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def wipe(self) -> None:
        """Forget the data on disk (only while stopped): the next start is empty."""
        assert self.process is None
        for path in self.directory.iterdir():
            if path.name != self._log.name:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; use ``unique_url()`` to keep tests apart."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Make redis-servers of this test's own (started); all are stopped at the end."""
    servers: list[RedisServer] = []

    def make(*, persistent: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persistent=persistent)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
