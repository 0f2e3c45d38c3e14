"""SIGTERM to ``tidings serve``: clients are told to reconnect, in-flight API calls finish."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import API_KEY, SECRET, wait_for
from tests.integration.test_cli import TIMEOUT, cli_env, serve_process
from tidings.auth import make_connection_token

SHUTDOWN_TIMEOUT = 10


async def close_code(ws: ClientConnection) -> int:
    """Read until the server closes the connection; its close code."""
    for _ in range(100):
        try:
            await ws.recv()
        except ConnectionClosed as e:
            assert e.rcvd is not None, "closed without a close frame"
            return e.rcvd.code
    raise AssertionError("the server kept sending and never closed")


async def refuses_connections(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_sigterm_closes_clients_with_3001_and_finishes_api_calls(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path / "data",
        TIDINGS_SECRET=SECRET,
        TIDINGS_API_KEY=API_KEY,
        TIDINGS_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
    )
    async with serve_process(tmp_path, env) as server:
        async with connect(server.ws_url) as ws:
            token = make_connection_token(SECRET, "alice")
            await ws.send(json.dumps({"id": 1, "connect": {"token": token}}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply["connect"]["client"], reply

            # A broadcast to thousands of channels, held in flight: with
            # "Expect: 100-continue" the server answers "100 Continue" only once
            # the API handler runs and reads the body, which we send after SIGTERM.
            channels = [f"load-{i}" for i in range(3000)]
            body = json.dumps({"channels": channels, "data": {"n": 1}}).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(
                    (
                        "POST /api/broadcast HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{server.port}\r\n"
                        f"X-API-Key: {API_KEY}\r\n"
                        "Content-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n"
                        "Expect: 100-continue\r\n\r\n"
                    ).encode()
                )
                await writer.drain()
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                assert interim.startswith(b"HTTP/1.1 100 "), interim

                server.proc.send_signal(signal.SIGTERM)

                # Connected clients are told: shutdown, reconnect elsewhere.
                assert await asyncio.wait_for(close_code(ws), TIMEOUT) == 3001
                # The node stops taking connections while it drains.
                await wait_for(lambda: refuses_connections(server.port), timeout=TIMEOUT)
                assert server.proc.returncode is None

                # The call that was in flight when SIGTERM came still completes.
                writer.write(body)
                await writer.drain()
                status, headers, reply_body = await asyncio.wait_for(read_response(reader), TIMEOUT)
            finally:
                writer.close()
            assert status == 200, reply_body
            responses = json.loads(reply_body)["result"]["responses"]
            assert len(responses) == len(channels)
            assert all(r["result"]["offset"] == 1 for r in responses), responses[:3]
            assert headers.get("connection") == "close"

        # The process then exits cleanly, within the shutdown timeout.
        code = await asyncio.wait_for(server.proc.wait(), SHUTDOWN_TIMEOUT + 5)
        assert code == 0, server.stderr()


@pytest.mark.one_websocket_path
async def test_ctrl_c_shuts_down_cleanly(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", TIDINGS_SECRET=SECRET, TIDINGS_API_KEY=API_KEY)
    async with serve_process(tmp_path, env) as server:
        server.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(server.proc.wait(), SHUTDOWN_TIMEOUT)
        stderr = server.stderr()
        assert code == 0, stderr
        assert "Finished server process" in stderr
        assert "Traceback" not in stderr
