"""The ``tidings`` command, run as a real subprocess against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect

from tests.conftest import wait_for, websocket_direct

TIDINGS = (sys.executable, "-m", "tidings")
LISTENING = re.compile(r"Tidings listening on http://127\.0\.0\.1:(\d+)$")
TIMEOUT = 30.0


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no TIDINGS_* leaking in, keys in ``data_dir``.

    ``tidings serve`` runs on the test's WebSocket path (tests.conftest.websocket_direct)
    unless ``extra`` sets TIDINGS_WEBSOCKET_DIRECT.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        TIDINGS_DATA_DIR=str(data_dir),
        TIDINGS_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",  # keep error messages on one line
    )
    direct = websocket_direct.get()
    if direct is not None:
        env["TIDINGS_WEBSOCKET_DIRECT"] = "true" if direct else "false"
    env.update(extra)
    return env


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    port: int
    output: list[str]
    stderr_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@asynccontextmanager
async def serve_process(workdir: Path, env: dict[str, str]) -> AsyncIterator[ServeProcess]:
    """Start ``tidings serve --port 0`` and wait for the line naming its port."""
    stderr_path = workdir / "serve.stderr"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *TIDINGS,
            "serve",
            "--port",
            "0",
            cwd=workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert proc.stdout is not None
            output: list[str] = []
            port = 0
            async with asyncio.timeout(TIMEOUT):
                for _ in range(50):
                    line = (await proc.stdout.readline()).decode()
                    assert line, f"serve exited early: {stderr_path.read_text()}"
                    output.append(line.rstrip())
                    match = LISTENING.search(output[-1])
                    if match:
                        port = int(match.group(1))
                        break
            assert port, f"no listening line in {output}"
            yield ServeProcess(proc, port, output, stderr_path)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run one ``tidings`` command to completion; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *TIDINGS,
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.one_websocket_path
async def test_serve_generates_keys_and_answers_healthz(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serve_process(tmp_path, cli_env(data_dir)) as server:
        secret_file, api_key_file = data_dir / "secret", data_dir / "api_key"
        # Both keys were generated, kept private, and the output says where.
        for path in (secret_file, api_key_file):
            assert path.read_text().strip()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert any(str(path.resolve()) in line for line in server.output), server.output
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.get("/healthz")
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
            # The generated API key is the one the server checks.
            key = api_key_file.read_text().strip()
            info = await http.post("/api/info", headers={"X-API-Key": key}, json={})
            assert info.status_code == 200
            assert info.json()["result"]["nodes"]


async def test_token_is_accepted_by_the_server(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    async with serve_process(tmp_path, env) as server:
        code, out, err = await run_cli(
            "token", "alice", "--info", '{"name": "Alice"}', env=env, cwd=tmp_path
        )
        assert code == 0, err
        token = out.strip()
        secret = (tmp_path / "data" / "secret").read_text().strip()
        claims = jwt.decode(token, secret, algorithms=["HS256"])
        assert claims["sub"] == "alice"
        assert claims["exp"] > claims["iat"]

        async with connect(server.ws_url) as ws:
            await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply["id"] == 1
            assert reply["connect"]["client"], reply
            await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat:lobby"}}))
            frame = str(await asyncio.wait_for(ws.recv(), TIMEOUT))
            reply = json.loads(frame.split("\n")[0])  # a join push may follow in the frame
            assert reply["id"] == 2 and "error" not in reply, reply
            # The server knows the connection as alice, with the token's info.
            key = (tmp_path / "data" / "api_key").read_text().strip()
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                response = await http.post(
                    "/api/presence", headers={"X-API-Key": key}, json={"channel": "chat:lobby"}
                )
            clients = list(response.json()["result"]["presence"].values())
            assert [(c["user"], c.get("conn_info")) for c in clients] == [
                ("alice", {"name": "Alice"})
            ]


async def test_publish_reaches_listen(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    async with serve_process(tmp_path, env) as server:
        listener = await asyncio.create_subprocess_exec(
            *TIDINGS,
            "listen",
            "news",
            "--url",
            server.ws_url,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert listener.stdout is not None and listener.stderr is not None
            # listen says so on stderr once the server has confirmed the subscription.
            ready = await asyncio.wait_for(listener.stderr.readline(), TIMEOUT)
            assert b"Subscribed to news" in ready, ready

            for n in (1, 2):
                code, out, err = await run_cli(
                    "publish",
                    "news",
                    json.dumps({"text": "hello", "n": n}),
                    "--url",
                    server.http_url,
                    env=env,
                    cwd=tmp_path,
                )
                assert code == 0, err
                result = json.loads(out)
                assert result["offset"] == n
                assert result["epoch"]
                line = await asyncio.wait_for(listener.stdout.readline(), TIMEOUT)
                assert json.loads(line) == {"text": "hello", "n": n}
        finally:
            if listener.returncode is None:
                listener.kill()
            await listener.wait()


@pytest.mark.one_websocket_path
async def test_publish_with_a_wrong_api_key_fails(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    async with serve_process(tmp_path, env) as server:
        code, out, err = await run_cli(
            "publish",
            "news",
            '{"text": "hi"}',
            "--url",
            server.http_url,
            "--api-key",
            "not-the-key",
            env=env,
            cwd=tmp_path,
        )
    assert code != 0
    assert "unauthorized" in err
    assert out == ""


@pytest.mark.one_websocket_path
async def test_publish_rejects_invalid_json(tmp_path: Path) -> None:
    # Nothing listens on port 1: a request would fail differently (exit 1).
    code, out, err = await run_cli(
        "publish",
        "news",
        '{"text": ',
        "--url",
        "http://127.0.0.1:1",
        "--api-key",
        "k",
        env=cli_env(tmp_path / "data"),
        cwd=tmp_path,
    )
    assert code == 2
    assert "not valid JSON" in err
    assert out == ""


async def test_listen_with_a_bad_token_fails(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    async with serve_process(tmp_path, env) as server:
        code, out, err = await run_cli(
            "listen", "news", "--url", server.ws_url, "--token", "bogus", env=env, cwd=tmp_path
        )
    assert code == 1
    assert "invalid token" in err
    assert out == ""


async def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", TIDINGS_LOG_FORMAT="json")
    async with serve_process(tmp_path, env) as served:
        async with httpx.AsyncClient() as http:
            # A refused browser origin is logged by Tidings itself.
            response = await http.get(
                f"{served.http_url}/connection/websocket",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Origin": "http://evil.example",
                },
            )
            assert response.status_code == 403

        def refused_logged() -> bool:
            return "refused WebSocket" in served.stderr()

        await wait_for(refused_logged, timeout=TIMEOUT)
    records = [json.loads(line) for line in served.stderr().splitlines() if line.strip()]
    assert records, "no log lines"
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    refused = [r for r in records if "refused WebSocket" in r["message"]]
    assert refused[0]["logger"] == "tidings.transport" and refused[0]["level"] == "info"
