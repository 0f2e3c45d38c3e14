"""A real multi-node deployment for tests: redis-server, ``tidings serve`` processes, nginx.

``Cluster`` runs N nodes as subprocesses (``tidings serve --port 0``, each in a
directory of its own, all with the same secret, API key, Redis broker URL and,
when given, database URL) and an nginx in front of them: round-robin, no
sticky sessions, WebSocket upgrades passed through, and ``proxy_next_upstream``
so a dead node is skipped. Every process runs on loopback and is killed when
the cluster's context ends, whatever happened; every wait polls with a bound.

nginx is the Debian package; without it these tests are skipped, or fail
when CI=true (as redis-server and PostgreSQL are, in tests/redis_server.py and
tests/postgres.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEY, SECRET, wait_for
from tests.integration.test_cli import TIDINGS, cli_env, run_cli
from tests.missing import component_missing
from tests.redis_server import RedisServer, free_port
from tidings.auth import make_connection_token

START_TIMEOUT = 30.0
LISTENING = re.compile(r"Tidings listening on http://127\.0\.0\.1:(\d+)")

# The nginx configuration the tests run, and docs/deployment.md shows: ${...}
# are filled in by render_nginx_config.
NGINX_TEMPLATE = """\
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;

events {
    worker_connections 1024;
}

http {
    access_log ${prefix}/access.log;
    client_body_temp_path ${prefix}/client_body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;

    # "Connection: upgrade" for WebSocket handshakes, "close" otherwise.
    map $$http_upgrade $$connection_upgrade {
        default upgrade;
        ''      close;
    }

    # Round-robin over the nodes, no stickiness: any node serves any client.
    # A node that refuses or times out is skipped for fail_timeout.
    upstream tidings {
${servers}
    }

    server {
        listen ${listen};

        location / {
            proxy_pass http://tidings;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $$http_upgrade;
            proxy_set_header Connection $$connection_upgrade;
            proxy_set_header Host $$host;
            proxy_set_header X-Forwarded-For $$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $$scheme;
            # A dead node: try the next one. nginx never retries a POST it has
            # sent already (a publish is not idempotent), only a failed connect.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            # WebSockets stay open: longer than the protocol's ping interval (25 s).
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
            add_header X-Upstream $$upstream_addr always;
        }
    }
}
"""


def render_nginx_config(prefix: Path, listen: str, upstreams: Sequence[str]) -> str:
    from string import Template

    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=10s;" for u in upstreams)
    return Template(NGINX_TEMPLATE).substitute(prefix=prefix, listen=listen, servers=servers)


def nginx_binary() -> str:
    """The nginx path; skip the test (or fail it under CI) when it is missing."""
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if path is None:
        component_missing(
            "nginx is not installed (Debian package nginx; ./dev.sh test installs it)"
        )
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    """nginx in the foreground (``daemon off``) with a generated config in its own directory."""

    def __init__(self, directory: Path) -> None:
        self.binary = nginx_binary()
        self.prefix = directory
        self.prefix.mkdir(parents=True, exist_ok=True)
        # Workers may run as another user (nobody) when the tests run as root.
        self.prefix.chmod(0o755)
        self.port = free_port()
        self.conf = self.prefix / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.upstreams: list[int] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def _write(self, ports: Sequence[int]) -> None:
        self.upstreams = list(ports)
        self.conf.write_text(
            render_nginx_config(
                self.prefix, f"127.0.0.1:{self.port}", [f"127.0.0.1:{p}" for p in ports]
            )
        )

    def _args(self, *extra: str) -> list[str]:
        args = [self.binary, "-c", str(self.conf), "-p", f"{self.prefix}/"]
        return [*args, "-e", str(self.prefix / "error.log"), *extra]

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, ports: Sequence[int]) -> subprocess.Popen[bytes]:
        self._write(ports)
        check = subprocess.run(self._args("-t"), capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        # A session of its own: stop() can reach workers that outlive the master.
        return subprocess.Popen(
            self._args("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def start(self, ports: Sequence[int]) -> None:
        self.process = self._spawn(ports)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await loop.run_in_executor(None, _accepts, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            if loop.time() > deadline:
                raise RuntimeError(f"nginx did not listen on {self.port}: {self.error_log()}")
            await asyncio.sleep(0.02)
        await self._settled()

    async def reload(self, ports: Sequence[int]) -> None:
        """Point nginx at other nodes (SIGHUP) and wait until new requests go there."""
        assert self.process is not None
        self._write(ports)
        self.process.send_signal(signal.SIGHUP)
        await self._settled()

    async def _settled(self) -> None:
        """Until requests reach every upstream and only those (polled, bounded)."""
        expected = {f"127.0.0.1:{p}" for p in self.upstreams}

        async def spread() -> bool:
            seen: set[str] = set()
            async with httpx.AsyncClient(
                base_url=self.http_url, limits=httpx.Limits(max_keepalive_connections=0)
            ) as http:
                for _ in range(2 * len(expected) + 2):
                    response = await http.get("/healthz")
                    seen.update(response.headers.get("x-upstream", "").split(", "))
            return seen == expected

        await wait_for(spread, timeout=15, interval=0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()  # a fast shutdown: the master stops its workers
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        # Workers that outlived their master (they are in its process group).
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Node:
    """One ``tidings serve --port 0`` subprocess."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.name = name
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Output to files, not pipes: nobody reads a pipe after start, and a full
        # one would block the node.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            return subprocess.Popen(
                [*TIDINGS, "serve", "--port", "0"],
                cwd=self.directory,
                env=self.env,
                stdout=out,
                stderr=err,
            )

    async def start(self) -> None:
        self.process = self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            match = LISTENING.search(self.stdout_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.name} exited at start:\n{self.log()}")
            if loop.time() > deadline:
                raise RuntimeError(f"node {self.name} did not start:\n{self.log()}")
            await asyncio.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def status(self) -> int | str | None:
        """None while running; the exit status (negative: the signal) once it ended."""
        if self.process is None:
            return "reaped"
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye to anyone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    async def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit status."""
        assert self.process is not None
        self.process.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.process.poll() is None:
            if loop.time() > deadline:
                self.process.kill()
                raise AssertionError(f"node {self.name} ignored SIGTERM:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def reap(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Cluster:
    """Nodes on one Redis (and optionally one database), behind one nginx."""

    def __init__(
        self,
        directory: Path,
        redis: RedisServer,
        *,
        prefix: str,
        database_url: str | None = None,
        broker_options: dict[str, Any] | None = None,
        **settings: str,
    ) -> None:
        self.directory = directory
        self.redis = redis
        options: dict[str, Any] = {"reconnect_max": 0.5, **(broker_options or {})}
        self.broker_url = redis.url(prefix=prefix, **options)
        self.database_url = database_url
        self.settings = settings
        self.nodes: list[Node] = []
        self.nginx = Nginx(directory / "nginx")
        self._count = 0

    # --- processes ----------------------------------------------------------

    def env(self, name: str) -> dict[str, str]:
        extra = {
            "TIDINGS_SECRET": SECRET,
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_BROKER_URL": self.broker_url,
            "TIDINGS_NODE_NAME": name,
            "TIDINGS_SHUTDOWN_TIMEOUT": "5",
            **{f"TIDINGS_{k.upper()}": v for k, v in self.settings.items()},
        }
        if self.database_url:
            extra["TIDINGS_DATABASE_URL"] = self.database_url
        return cli_env(self.directory / name / "data", **extra)

    async def migrate(self) -> None:
        """``tidings db upgrade``, as one does before rolling out nodes on PostgreSQL."""
        assert self.database_url
        code, out, err = await run_cli("db", "upgrade", env=self.env("migrate"), cwd=self.directory)
        assert code == 0, f"tidings db upgrade failed: {out}{err}"

    async def add_nodes(self, count: int) -> list[Node]:
        """Start ``count`` more nodes (at once); nginx is not told (see ``balance``)."""
        new = []
        for _ in range(count):
            self._count += 1
            name = f"n{self._count}"
            new.append(Node(name, self.directory / name, self.env(name)))
        self.nodes += new
        await asyncio.gather(*(n.start() for n in new))
        return new

    async def start(self, count: int) -> None:
        if self.database_url:
            await self.migrate()
        await self.add_nodes(count)
        await self.nginx.start([n.port for n in self.nodes])

    async def balance(self, nodes: Sequence[Node]) -> None:
        """Make nginx send new requests and connections to these nodes only."""
        await self.nginx.reload([n.port for n in nodes])

    def close(self) -> None:
        for node in self.nodes:
            node.reap()
        self.nginx.stop()

    def logs(self) -> str:
        parts = [
            f"--- {n.name} (port {n.port}, exit status {n.status}) ---\n{n.log()[-4000:]}"
            for n in self.nodes
        ]
        parts.append(f"--- nginx ---\n{self.nginx.error_log()[-2000:]}")
        return "\n".join(parts)

    # --- clients --------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint through nginx."""
        return self.nginx.ws_url

    def token(self, user: str, **kwargs: Any) -> str:
        return make_connection_token(SECRET, user, **kwargs)

    def api(self, node: Node | None = None) -> httpx.AsyncClient:
        """A server API client through nginx (or to one node). A connection per request."""
        return httpx.AsyncClient(
            base_url=node.http_url if node else self.nginx.http_url,
            headers={"X-API-Key": API_KEY},
            timeout=10,
            limits=httpx.Limits(max_keepalive_connections=0),
        )


@asynccontextmanager
async def cluster(
    directory: Path, redis: RedisServer, nodes: int = 2, **kwargs: Any
) -> AsyncIterator[Cluster]:
    """Start a cluster of ``nodes`` behind nginx; everything is killed at the end."""
    nginx_binary()  # skip (or fail) before starting anything
    running = Cluster(directory, redis, **kwargs)
    started = time.monotonic()
    try:
        await running.start(nodes)
        print(f"cluster: {nodes} nodes and nginx up in {time.monotonic() - started:.1f}s")
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.close()
