"""Conformance with the real JavaScript SDK: centrifuge-js (npm) under Node.

Each test runs the real server and one scenario script of tests/js, which
prints one JSON object per line on stdout ({"event": ...}) and ends with
{"event": "done", ...} (exit 0) or {"event": "fail", ...} (exit 1). The test
reads those lines as they come, so it can act between them (publish once the
script reports "subscribed", answer its request for a fresh token on stdin).

Every test runs twice: with the SDK's JSON build and with its Protobuf build
(`--format protobuf`: the `centrifuge-protobuf` WebSocket subprotocol). The
scripts decode payloads in both, so the assertions are the same.

Without Node or the npm packages (`npm ci` in tests/js) these tests skip,
unless CI=true: then they fail.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import API_KEY, Running, running_server, test_settings, wait_for
from tests.missing import component_missing

pytestmark = pytest.mark.node

JS_DIR = Path(__file__).resolve().parents[1] / "js"
MIN_NODE = 18
FORMATS = ("json", "protobuf")


@functools.cache
def _node_problem() -> str | None:
    """Why the JS SDK tests cannot run here, or None when they can."""
    node = shutil.which("node")
    if node is None:
        return "Node.js is not installed (needed to run the centrifuge npm SDK)"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return f"cannot run `node --version`: {e}"
    if major < MIN_NODE:
        return f"Node.js {version} is too old (need >= {MIN_NODE})"
    for package in ("centrifuge", "ws"):
        if not (JS_DIR / "node_modules" / package / "package.json").is_file():
            return f"npm package {package!r} is not installed: run `npm ci` in tests/js"
    return None


def _require_node() -> None:
    """Skip without Node and the npm packages, but fail under CI=true."""
    problem = _node_problem()
    if problem is None:
        return
    component_missing(problem)


@pytest.fixture(autouse=True)
def _skip_without_node() -> None:
    # Skip before a server starts; under CI=true, node_script() fails the test itself.
    if os.environ.get("CI") != "true":
        _require_node()


@pytest.fixture(params=FORMATS, ids=FORMATS)
def wire_format(request: pytest.FixtureRequest) -> str:
    """The SDK build, and so the wire format, a test drives the server with."""
    fmt: str = request.param
    return fmt


class Script:
    """A running scenario script: its events so far and a way to answer it."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._stderr = bytearray()
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(4096):
            self._stderr += chunk

    def _context(self) -> str:
        lines = "\n".join(json.dumps(e) for e in self.events[-20:])
        stderr = self._stderr.decode(errors="replace")[-2000:]
        return f"{self.name}: events so far:\n{lines}\nstderr:\n{stderr}"

    async def next(self, event: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        """Read lines until an ``event`` whose fields include ``match``; fail on "fail"."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(remaining, 0))
            except TimeoutError:
                raise AssertionError(
                    f"no {event!r} event within {timeout}s\n{self._context()}"
                ) from None
            if not line:
                await self._stderr_task
                raise AssertionError(f"script ended before a {event!r} event\n{self._context()}")
            message = json.loads(line)
            self.events.append(message)
            if message["event"] == "fail" and event != "fail":
                raise AssertionError(f"script failed: {message['error']}\n{self._context()}")
            if message["event"] == event and all(message.get(k) == v for k, v in match.items()):
                return message

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the final summary and a clean exit."""
        done = await self.next("done", timeout)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        assert code == 0, f"exit code {code}\n{self._context()}"
        return done

    def seen(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@asynccontextmanager
async def node_script(
    script: str, fmt: str, *args: str, timeout: float = 15.0
) -> AsyncIterator[Script]:
    """Run ``node tests/js/<script> args`` with the SDK build of ``fmt``.

    The script is killed on the way out if still running.
    """
    _require_node()
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node,
        script,
        *args,
        f"--timeout={int(timeout * 1000)}",
        f"--format={fmt}",
        cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Script(f"{script} ({fmt})", proc)
    try:
        yield running
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        if proc.returncode is None:  # finish() was not reached: the test failed
            proc.kill()
        await asyncio.wait_for(proc.wait(), 5)
        await proc.stdout.read()
        await asyncio.wait_for(running._stderr_task, 5)


def _exp(token: str) -> int:
    exp: int = jwt.decode(token, options={"verify_signature": False})["exp"]
    return exp


async def test_connect_subscribe_publish_roundtrip(server: Running, wire_format: str) -> None:
    async with node_script(
        "pubsub.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token",
        server.token("alice"),
        "--channel",
        "chat:room",
    ) as js:
        done = await js.finish()

    client_id = done["client"]
    assert client_id  # the connected event carries the server-assigned id
    pub = done["publication"]
    assert pub["channel"] == "chat:room"
    assert pub["data"] == {"text": "hello from js", "n": 1}
    assert pub["offset"] == 1
    assert pub["info"] == {"client": client_id, "user": "alice"}
    [sub] = js.seen("subscribed")
    assert sub["recoverable"] is True and sub["positioned"] is True
    assert sub["streamPosition"]["offset"] == 0 and sub["streamPosition"]["epoch"]
    # The server kept what the SDK saw.
    stored, position = await server.tidings.history("chat:room")
    assert [(p.offset, p.info and p.info.user) for p in stored] == [(1, "alice")]
    assert position.epoch == sub["streamPosition"]["epoch"]


async def test_server_publications_reach_js_subscriber(server: Running, wire_format: str) -> None:
    async with node_script(
        "subscriber.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token",
        server.token("alice"),
        "--channel",
        "news",
        "--count",
        "2",
    ) as js:
        connected = await js.next("connected")
        # The SDK build asked for its format, and the server speaks it.
        assert server.tidings.hub.sessions[connected["client"]].format.name == wire_format
        await js.next("subscribed")
        await server.tidings.publish("news", {"title": "from python"}, tags={"kind": "py"})
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.post(
                "/api/publish",
                json={"channel": "news", "data": {"title": "from the api"}},
                headers={"X-API-Key": API_KEY},
            )
        assert response.status_code == 200, response.text
        assert response.json()["result"]["offset"] == 2
        done = await js.finish()

    assert done["publications"] == [
        {"channel": "news", "data": {"title": "from python"}, "offset": 1, "tags": {"kind": "py"}},
        {"channel": "news", "data": {"title": "from the api"}, "offset": 2},
    ]
    assert len(done["clients"]) == 1


async def test_presence_and_join_leave_between_two_users(server: Running, wire_format: str) -> None:
    async with node_script(
        "presence.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token1",
        server.token("alice"),
        "--token2",
        server.token("bob"),
        "--channel",
        "chat:room",
    ) as js:
        done = await js.finish()

    alice, bob = done["clients"]["first"], done["clients"]["second"]
    both = [{"client": alice, "user": "alice"}, {"client": bob, "user": "bob"}]
    assert done["presence"] == {"first": both, "second": both}
    assert done["stats"] == {
        "first": {"numClients": 2, "numUsers": 2},
        "second": {"numClients": 2, "numUsers": 2},
    }
    assert done["join"] == {"client": bob, "user": "bob"}
    assert done["leave"] == {"client": bob, "user": "bob"}
    assert done["leaves"] == [{"client": bob, "user": "bob"}]
    assert done["statsAfter"] == {"numClients": 1, "numUsers": 1}
    assert done["presenceAfter"] == [{"client": alice, "user": "alice"}]


async def test_history_order_and_offsets(server: Running, wire_format: str) -> None:
    async with node_script(
        "history.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token",
        server.token("alice"),
        "--channel",
        "chat:room",
        "--count",
        "5",
    ) as js:
        done = await js.finish()

    epoch = done["streamPosition"]["epoch"]
    assert epoch and done["streamPosition"]["offset"] == 0
    assert done["live"] == [1, 2, 3, 4, 5]

    def pubs(*seqs: int) -> list[dict[str, Any]]:
        return [{"data": {"seq": s}, "offset": s, "user": "alice"} for s in seqs]

    expected = {
        "all": pubs(1, 2, 3, 4, 5),
        "first3": pubs(1, 2, 3),
        "last2Reversed": pubs(5, 4),
        "since2": pubs(3, 4, 5),
        "positionOnly": [],
    }
    for name, publications in expected.items():
        assert done[name] == {"offset": 5, "epoch": epoch, "publications": publications}, name


async def test_recovery_after_forced_reconnect(server: Running, wire_format: str) -> None:
    tidings = server.tidings
    async with node_script(
        "subscriber.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token",
        server.token("alice"),
        "--channel",
        "chat:room",
        "--count",
        "5",
    ) as js:
        first = await js.next("connected")
        await js.next("subscribed", wasRecovering=False)
        for n in (1, 2):
            await tidings.publish("chat:room", {"n": n})
        await js.next("publication", data={"n": 2})

        # The server drops the connection with a code that tells the SDK to
        # reconnect; what is published meanwhile must be recovered.
        assert await tidings.disconnect("alice", code=3011) == 1
        for n in (3, 4, 5):
            await tidings.publish("chat:room", {"n": n})
        connecting = await js.next("connecting")
        assert (connecting["code"], connecting["reason"]) == (3011, "force reconnect")
        second = await js.next("connected")
        assert second["client"] != first["client"]
        resubscribed = await js.next("subscribed")
        done = await js.finish()

    assert resubscribed["wasRecovering"] is True
    assert resubscribed["recovered"] is True
    assert resubscribed["hasRecoveredPublications"] is True
    assert (
        resubscribed["streamPosition"]["epoch"]
        == done["subscriptions"][0]["streamPosition"]["epoch"]
    )
    assert [p["data"]["n"] for p in done["publications"]] == [1, 2, 3, 4, 5]
    assert [p["offset"] for p in done["publications"]] == [1, 2, 3, 4, 5]
    assert done["clients"] == [first["client"], second["client"]]


async def test_permission_errors(server: Running, wire_format: str) -> None:
    async with node_script(
        "errors.mjs", wire_format, "--url", server.ws_url, "--token", server.token("alice")
    ) as js:
        done = await js.finish()

    denied = {"ok": False, "code": 103, "message": "permission denied"}
    # Channels without a namespace: only the server API publishes.
    assert done["publishNoNamespace"] == denied
    # No such namespace: the subscription ends with the server's code.
    assert done["subscribeUnknown"] == {
        "ok": False,
        "code": 102,
        "reason": "unknown channel",
        "state": "unsubscribed",
    }
    # chat: publish and presence are for subscribers; history is off for clients on news.
    assert done["publishNotSubscribed"] == denied
    assert done["presenceNotSubscribed"] == denied
    assert done["historyNoNamespace"] == denied
    # Errors fail one command each; the connection stays up.
    assert done["state"] == "connected"
    assert done["disconnects"] == []
    publications, _ = await server.tidings.history("news")
    assert publications == []


async def test_token_refresh_keeps_the_connection(tmp_path: Path, wire_format: str) -> None:
    grace = 1.0
    async with running_server(test_settings(tmp_path, token_expiry_grace=grace)) as server:
        hub = server.tidings.hub
        short = server.token("alice", ttl=3)
        async with node_script(
            "subscriber.mjs",
            wire_format,
            "--url",
            server.ws_url,
            "--token",
            short,
            "--channel",
            "news",
            "--count",
            "1",
            "--refresh",
            "ask",
        ) as js:
            connected = await js.next("connected")
            session = hub.sessions[connected["client"]]
            assert session.format.name == wire_format
            assert session.expires_at == _exp(short)
            await js.next("subscribed")

            # Before the token expires, the SDK's getToken asks for a fresh one.
            await js.next("token", timeout=5)
            assert time.time() < _exp(short)
            fresh = server.token("alice", ttl=60)
            await js.send({"token": fresh})
            await wait_for(lambda: session.expires_at == _exp(fresh))

            # Past the first token's expiry and the grace period the server
            # would have closed the connection (3005) without the refresh.
            await wait_for(lambda: time.time() > _exp(short) + grace + 0.2, timeout=10)
            assert hub.sessions.get(connected["client"]) is session
            await server.tidings.publish("news", {"after": "expiry"})
            done = await js.finish()

    assert [p["data"] for p in done["publications"]] == [{"after": "expiry"}]
    assert done["clients"] == [connected["client"]]  # one connection: refreshed in place
    assert done["tokenRequests"] == 1
    assert [e["code"] for e in js.seen("connecting")] == [0]  # only the first connect
    assert [e["code"] for e in js.seen("disconnected")] == [0]  # only the script's own, at the end
    assert js.seen("error") == []


async def test_expired_token_at_connect_is_refreshed(server: Running, wire_format: str) -> None:
    # E.g. a laptop waking up: the token it had expired meanwhile. The SDK
    # sends connect and its subscribe in one frame; the connect fails with 109,
    # and the SDK gets a fresh token and connects again.
    expired = server.token("alice", ttl=-60)
    async with node_script(
        "subscriber.mjs",
        wire_format,
        "--url",
        server.ws_url,
        "--token",
        expired,
        "--channel",
        "news",
        "--count",
        "1",
        "--refresh",
        "ask",
    ) as js:
        error = await js.next("error")
        assert error["type"] == "connect" and error["error"]["code"] == 109
        await js.next("token")
        await js.send({"token": server.token("alice", ttl=60)})
        connected = await js.next("connected")
        await js.next("subscribed")
        await server.tidings.publish("news", {"n": 1})
        done = await js.finish()

    assert done["clients"] == [connected["client"]]
    assert [p["data"] for p in done["publications"]] == [{"n": 1}]
    assert [e["code"] for e in js.seen("disconnected")] == [0]  # never gave up
