"""The suite runs on both WebSocket paths (tests/integration/conftest.py): check it does."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import test_settings
from tests.integration.test_cli import cli_env


def test_servers_run_on_the_tests_path(websocket_path: str, tmp_path: Path) -> None:
    direct = websocket_path == "direct"
    # In-process servers (the server fixture's settings too), unless a test chooses...
    assert test_settings(tmp_path).websocket_direct is direct
    assert test_settings(tmp_path, websocket_direct=not direct).websocket_direct is not direct
    # ...and `tidings serve` subprocesses (test_cli.py, test_shutdown.py, tests/cluster.py).
    assert cli_env(tmp_path)["TIDINGS_WEBSOCKET_DIRECT"] == ("true" if direct else "false")
    assert cli_env(tmp_path, TIDINGS_WEBSOCKET_DIRECT="true")["TIDINGS_WEBSOCKET_DIRECT"] == "true"
