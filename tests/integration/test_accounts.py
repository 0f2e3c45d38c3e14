"""Accounts against a real server: /token, refresh rotation, logout, login limits, CLI.

Every test that keeps accounts runs on the embedded SQLite and on a real
PostgreSQL (``database_url``); HTTP goes through httpx and the protocol through
the real centrifuge-python SDK.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import sqlite3
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from centrifuge import Client, ClientEventHandler, ConnectedContext, DisconnectedContext

from tests.conftest import SECRET, Running, running_server, test_settings, wait_for
from tests.integration.test_cli import TIDINGS, cli_env, serve_process
from tests.postgres import migrate
from tidings import Tidings
from tidings.store import SchemaOutdated, User, head_revision
from tidings.store.database import VERSION_TABLE, create_engine
from tidings.store.models import Base

PASSWORD = "correct horse battery staple"


class Events(ClientEventHandler):
    def __init__(self) -> None:
        self.connected: list[ConnectedContext] = []
        self.disconnected: list[DisconnectedContext] = []

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)


async def add_user(server: Running, name: str, password: str = PASSWORD, **kw: Any) -> User:
    tidings = server.tidings
    password_hash = await tidings.accounts.passwords.hash_async(password)
    return await tidings.store.create_user(name, password_hash, **kw)


async def post_token(
    http: httpx.AsyncClient, address: str | None = None, **form: str
) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return await http.post("/token", data=form, headers=headers)


async def login(http: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await post_token(http, username=name, password=password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(http: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await post_token(http, grant_type="refresh_token", refresh_token=refresh_token)


async def connect(server: Running, token: str, events: Events | None = None, **kw: Any) -> Client:
    client = Client(server.ws_url, token=token, events=events, **kw)
    await client.connect()
    await client.ready(timeout=5)
    return client


@pytest.fixture
async def server(tmp_path: Path, database_url: str | None) -> AsyncIterator[Running]:
    settings = test_settings(tmp_path, database_url=database_url)
    async with running_server(settings) as running:
        yield running


@pytest.fixture
async def http(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def test_login_gives_an_access_token_that_connects(
    server: Running, http: httpx.AsyncClient
) -> None:
    await add_user(server, "alice")
    response = await post_token(http, username="alice", password=PASSWORD)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == int(server.settings.access_token_ttl)
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert abs(claims["exp"] - (time.time() + server.settings.access_token_ttl)) < 30

    events = Events()
    client = await connect(server, body["access_token"], events)
    try:
        assert events.connected
        assert server.tidings.hub.user_sessions("alice")
    finally:
        await client.disconnect()


@pytest.mark.one_websocket_path
async def test_wrong_password_and_unknown_user_look_the_same(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = test_settings(
        tmp_path, database_url=database_url, login_attempts_per_user=100,
        login_attempts_per_address=100,
    )  # fmt: skip
    async with running_server(settings) as server:
        await add_user(server, "alice")
        async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
            wrong, unknown = [], []
            for _ in range(3):
                started = time.perf_counter()
                a = await post_token(http, username="alice", password="not the password")
                wrong.append(time.perf_counter() - started)
                started = time.perf_counter()
                b = await post_token(http, username="nobody", password="not the password")
                unknown.append(time.perf_counter() - started)
                assert a.status_code == b.status_code == 401
                assert a.json() == b.json()
                assert a.headers["www-authenticate"] == b.headers["www-authenticate"] == "Bearer"
            assert a.json()["error"] == "invalid_grant"
            # An unknown user is refused after checking a dummy hash: as slow as a
            # wrong password (a database lookup alone would be ~50x faster).
            assert statistics.median(unknown) > 0.4 * statistics.median(wrong)


@pytest.mark.one_websocket_path
async def test_refresh_rotates_and_reuse_revokes_the_family(
    server: Running, http: httpx.AsyncClient
) -> None:
    await add_user(server, "alice")
    first = await login(http, "alice")
    other_login = await login(http, "alice")

    second = await refresh(http, first["refresh_token"])
    assert second.status_code == 200, second.text
    pair2 = second.json()
    assert pair2["refresh_token"] != first["refresh_token"]
    assert jwt.decode(pair2["access_token"], SECRET, algorithms=["HS256"])["sub"] == "alice"
    third = (await refresh(http, pair2["refresh_token"])).json()

    # The first token again: it was spent, so it leaked. The family is revoked...
    reused = await refresh(http, first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["error"] == "invalid_grant"
    # ...including its newest token, which the thief may hold...
    assert (await refresh(http, third["refresh_token"])).status_code == 401
    # ...but not the family of another login.
    assert (await refresh(http, other_login["refresh_token"])).status_code == 200

    assert (await refresh(http, "not-a-token")).status_code == 401
    unsupported = await post_token(http, grant_type="client_credentials")
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"


async def test_the_sdk_refreshes_its_access_token_over_the_connection(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = test_settings(tmp_path, database_url=database_url, access_token_ttl=2)
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        await add_user(server, "alice")
        tokens = await login(http, "alice")
        refreshed: list[str] = []

        async def get_token() -> str:
            # What an app does: rotate the refresh token for a new access token.
            response = await refresh(http, tokens["refresh_token"])
            assert response.status_code == 200, response.text
            tokens.update(response.json())
            refreshed.append(tokens["access_token"])
            return str(tokens["access_token"])

        events = Events()
        client = await connect(server, tokens["access_token"], events, get_token=get_token)
        try:
            await wait_for(lambda: len(refreshed) >= 2, timeout=15)
            assert not events.disconnected
            (session,) = server.tidings.hub.user_sessions("alice")
            assert session.expires_at is not None and session.expires_at > time.time() - 1
        finally:
            await client.disconnect()


async def test_logout_with_the_refresh_token_disconnects_the_user(
    server: Running, http: httpx.AsyncClient
) -> None:
    await add_user(server, "alice")
    await add_user(server, "bob")
    alice = await login(http, "alice")
    bob = await login(http, "bob")
    alice_events, alice_phone, bob_events = Events(), Events(), Events()
    clients = [
        await connect(server, alice["access_token"], alice_events),
        await connect(server, alice["access_token"], alice_phone),
        await connect(server, bob["access_token"], bob_events),
    ]
    try:
        response = await http.post("/logout", data={"refresh_token": alice["refresh_token"]})
        assert response.status_code == 204
        await wait_for(lambda: alice_events.disconnected and alice_phone.disconnected)
        for events in (alice_events, alice_phone):
            assert (events.disconnected[0].code, events.disconnected[0].reason) == (
                3503,
                "logged out",
            )
        assert not bob_events.disconnected
        assert not server.tidings.hub.user_sessions("alice")
        assert server.tidings.hub.user_sessions("bob")
        # The refresh token's family is gone.
        assert (await refresh(http, alice["refresh_token"])).status_code == 401
        assert (await refresh(http, bob["refresh_token"])).status_code == 200
    finally:
        for client in clients:
            await client.disconnect()


async def test_logout_with_a_bearer_token_revokes_every_session(
    server: Running, http: httpx.AsyncClient
) -> None:
    await add_user(server, "alice")
    laptop = await login(http, "alice")
    phone = await login(http, "alice")
    events = Events()
    client = await connect(server, phone["access_token"], events)
    try:
        headers = {"Authorization": f"Bearer {laptop['access_token']}"}
        assert (await http.post("/logout", headers=headers)).status_code == 204
        await wait_for(lambda: events.disconnected)
        assert events.disconnected[0].code == 3503
        assert (await refresh(http, laptop["refresh_token"])).status_code == 401
        assert (await refresh(http, phone["refresh_token"])).status_code == 401
    finally:
        await client.disconnect()

    anonymous = await http.post("/logout")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    unknown = await http.post("/logout", data={"refresh_token": "nope"})
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_grant"


@pytest.mark.one_websocket_path
async def test_login_attempts_are_limited_per_user_and_per_address(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = test_settings(
        tmp_path, database_url=database_url, login_attempts_per_user=3,
        login_attempts_per_address=5, login_window=60,
    )  # fmt: skip
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        await add_user(server, "alice")
        await add_user(server, "bob")
        # Per user: guesses at alice's password from ever new addresses (documentation
        # addresses in X-Forwarded-For, which uvicorn trusts from loopback proxies).
        for i in range(3):
            guess = await post_token(http, f"203.0.113.{i}", username="alice", password="guess")
            assert guess.status_code == 401
        limited = await post_token(http, "203.0.113.9", username="alice", password=PASSWORD)
        assert limited.status_code == 429  # even the right password: nothing is checked
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 60
        body = limited.json()
        assert body["error"] == "too_many_requests"
        assert body["retry_after"] == retry_after
        # bob is not affected.
        assert (await post_token(http, username="bob", password=PASSWORD)).status_code == 200

        # Per address: one address trying many names.
        for i in range(5):
            attempt = await post_token(http, "198.51.100.7", username=f"u{i}", password="guess")
            assert attempt.status_code == 401
        limited = await post_token(http, "198.51.100.7", username="bob", password=PASSWORD)
        assert limited.status_code == 429
        assert (await post_token(http, username="bob", password=PASSWORD)).status_code == 200

        assert server.tidings.hub.metrics.login_rate_limited == 2
        metrics = (await http.get("/metrics")).text
        assert "tidings_login_rate_limited_total 2.0" in metrics


@pytest.mark.one_websocket_path
async def test_registration_is_a_setting(tmp_path: Path, database_url: str | None) -> None:
    closed = test_settings(tmp_path / "closed", database_url=database_url)
    async with (
        running_server(closed) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        response = await http.post("/register", json={"name": "eve", "password": PASSWORD})
        assert response.status_code == 403
        assert await server.tidings.store.user("eve") is None

    open_settings = test_settings(
        tmp_path / "open", database_url=database_url, allow_registration=True
    )
    async with (
        running_server(open_settings) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        response = await http.post("/register", json={"name": "dora", "password": PASSWORD})
        assert response.status_code == 201
        assert response.json()["name"] == "dora"
        assert (await login(http, "dora"))["token_type"] == "bearer"
        again = await http.post("/register", json={"name": "dora", "password": PASSWORD})
        assert again.status_code == 409
        bad_name = await http.post("/register", json={"name": "a#b", "password": PASSWORD})
        assert bad_name.status_code == 400
        short = await http.post("/register", json={"name": "ed", "password": "short"})
        assert short.status_code == 400


@pytest.mark.one_websocket_path
async def test_migrations_match_the_models(tmp_path: Path, database_url: str | None) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    engine = create_engine(url)
    try:
        if database_url is None:
            await migrate(url)

        def diff(connection: Any) -> list[Any]:
            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "compare_type": True}
            )
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


@pytest.mark.one_websocket_path
async def test_a_shared_database_is_not_migrated_by_a_server(
    tmp_path: Path, postgres_database: str
) -> None:
    settings = test_settings(tmp_path, database_url=postgres_database)
    with pytest.raises(SchemaOutdated, match="tidings db upgrade"):
        async with Tidings(settings):
            pass
    env = cli_env(tmp_path, TIDINGS_DATABASE_URL=postgres_database)
    status = await run_cli(env, "db", "status")
    assert status.returncode == 1
    assert "(empty)" in status.stdout
    upgraded = await run_cli(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert head_revision() in upgraded.stdout
    assert (await run_cli(env, "db", "status")).returncode == 0
    created = await run_cli(
        env, "user", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert created.returncode == 0, created.stderr
    async with Tidings(settings) as tidings:
        (alice,) = await tidings.store.users()
        assert alice.name == "alice"
        assert (await tidings.accounts.passwords.verify(PASSWORD, alice.password_hash))[0]


# --- the CLI ---------------------------------------------------------------


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


async def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *TIDINGS,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.mark.one_websocket_path
async def test_cli_user_commands(tmp_path: Path) -> None:
    """On SQLite; test_a_shared_database_is_not_migrated_by_a_server runs some on PostgreSQL."""
    env = cli_env(tmp_path / "data")
    created = await run_cli(
        env, "user", "create", "alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert created.returncode == 0, created.stderr
    assert "alice" in created.stdout
    bob = await run_cli(env, "user", "create", "bob", "--password-stdin", stdin="bob-password\n")
    assert bob.returncode == 0, bob.stderr
    again = await run_cli(env, "user", "create", "bob", "--password-stdin", stdin="whatever12\n")
    assert again.returncode == 1
    assert "exists" in again.stderr

    listed = await run_cli(env, "user", "list")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("alice", "admin"), ("bob", "user")]

    changed = await run_cli(
        env, "user", "set-password", "bob", "--password-stdin", stdin="a new password\n"
    )
    assert changed.returncode == 0, changed.stderr

    # A server on the same database logs in with what the CLI stored.
    settings = test_settings(tmp_path / "data")
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
    ):
        await login(http, "alice")
        await login(http, "bob", "a new password")
        old = await post_token(http, username="bob", password="bob-password")
        assert old.status_code == 401

        deleted = await run_cli(env, "user", "delete", "bob")
        assert deleted.returncode == 0, deleted.stderr
        gone = await post_token(http, username="bob", password="a new password")
        assert gone.status_code == 401
        assert [u.name for u in await server.tidings.store.users()] == ["alice"]
    missing = await run_cli(env, "user", "delete", "bob")
    assert missing.returncode == 1


def _read_until(fd: int, seen: bytes, count: int, deadline: float) -> bytes:
    """Read a pty until ``seen`` holds more than ``count`` getpass prompts (": ")."""
    while seen.count(b": ") <= count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            seen += os.read(fd, 1024)
    return seen


@pytest.mark.one_websocket_path
def test_cli_prompts_twice_on_a_terminal(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*TIDINGS, "user", "create", "alice"],
        env=cli_env(tmp_path / "data"),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,  # no controlling terminal: it talks to the pty
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        for prompt in range(2):
            # Answer once the prompt ends with getpass's ": ": only then has it
            # turned echo off (flushing whatever was typed before).
            seen = _read_until(controller, seen, prompt, deadline)
            os.write(controller, PASSWORD.encode() + b"\n")
        assert proc.wait(timeout=60) == 0
        while select.select([controller], [], [], 0)[0]:
            try:
                chunk = os.read(controller, 1024)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "Password" in text and "Repeat" in text
    assert PASSWORD not in text  # not echoed
    assert "Created user alice" in text

    # Without a terminal, the password must come with --password-stdin...
    env = cli_env(tmp_path / "data")
    no_tty = subprocess.run(
        [*TIDINGS, "user", "create", "bob"], env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_tty.returncode == 1
    assert "--password-stdin" in no_tty.stderr
    # ...and is checked like any other.
    short = subprocess.run(
        [*TIDINGS, "user", "set-password", "alice", "--password-stdin"], env=env, input="short\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert short.returncode == 1
    assert "at least 8 characters" in short.stderr


@pytest.mark.one_websocket_path
async def test_serve_on_a_fresh_data_dir_creates_a_migrated_database(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    env = cli_env(data)
    async with serve_process(tmp_path, env) as served:
        database = data / "tidings.db"
        assert database.exists()
        with sqlite3.connect(database) as db:
            (version,) = db.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert version == head_revision()
        assert {"users", "refresh_tokens", "rooms", "room_members"} <= tables

        created = await run_cli(
            env, "user", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n"
        )
        assert created.returncode == 0, created.stderr
        async with httpx.AsyncClient(base_url=served.http_url, timeout=10) as http:
            assert (await login(http, "alice"))["token_type"] == "bearer"
