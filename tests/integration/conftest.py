"""Every integration test that serves WebSockets runs on both paths of ``/connection/websocket``.

``tidings serve`` answers ``/connection/websocket`` with its own WebSocket
implementation (``websocket_direct``, the default: ``direct``) or, with it off,
with uvicorn's over ASGI (``asgi``). As uvicorn runs one suite over each of its
protocol implementations, each test here runs once per path, with the path in
its id (``test_x[memory-direct]``, ``test_x[memory-asgi]``; ``-k asgi`` picks one).

The autouse ``websocket_path`` fixture sets ``tests.conftest.websocket_direct``
for the test, which the servers it starts pick up: in-process ones through
``test_settings`` (so the ``server`` fixture, and every test that builds its own
settings), ``tidings serve`` subprocesses (tests/cluster.py, test_cli.py,
test_shutdown.py) through ``cli_env``'s TIDINGS_WEBSOCKET_DIRECT. A test that
sets ``websocket_direct`` itself keeps its choice.

Run once instead (on the default path, without a path in the id):

* tests marked ``@pytest.mark.one_websocket_path``: they serve no
  ``/connection/websocket`` (HTTP only, CLI commands, other WebSocket paths such
  as ``/ws`` or an app mounted in a plain uvicorn, which are always ASGI), or
  test, at a cost not worth doubling, something the path does not take part in;
* the modules in ``OWN_PATHS``, which choose their paths themselves.

Tests that also run on each broker or database run on the ASGI path with the
first of them only (``ASGI_ALSO_ON``): see there why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import websocket_direct

WEBSOCKET_PATHS = {"direct": True, "asgi": False}

OWN_PATHS = {
    # Each case already runs on both paths (a fixture of their own, ids direct/asgi).
    "test_websocket_conformance",
    "test_websocket_dos",
    # The benchmark starts its own peer servers, on their default configuration.
    "test_bench",
}


# The matrix, trimmed. The broker (memory, redis) and the database (sqlite,
# postgresql) sit behind the hub and the HTTP API; the WebSocket path sits in front
# of the sessions: the one never reaches into the other. So the tests that run on
# each broker or database (the ``broker_url`` and ``database_url`` fixtures) run
# on the ASGI path on the memory broker and SQLite only: the full cross would add
# 78 runs to the ~140 the ASGI path adds (over a minute more on two cores), of
# combinations that meet nowhere in the code. Redis x ASGI is still covered by the
# tests that need Redis in any case (test_cluster.py, test_cluster_control.py,
# test_redis_faults.py), which run on both paths. Empty this to run the full cross.
ASGI_ALSO_ON = {"broker_url": "memory", "database_url": "sqlite"}


def runs_on_each_path(metafunc: pytest.Metafunc) -> bool:
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in OWN_PATHS:
        return False
    return metafunc.definition.get_closest_marker("one_websocket_path") is None


@pytest.hookimpl(trylast=True)  # after the fixtures' own params: ids read [memory-direct]
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "websocket_path" in metafunc.fixturenames and runs_on_each_path(metafunc):
        metafunc.parametrize("websocket_path", list(WEBSOCKET_PATHS), indirect=True)


@pytest.fixture(autouse=True)
def websocket_path(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The path this test's servers use: "direct", "asgi", or None (their default)."""
    path: str | None = getattr(request, "param", None)
    if path is None:
        yield None
        return
    token = websocket_direct.set(WEBSOCKET_PATHS[path])
    try:
        yield path
    finally:
        websocket_direct.reset(token)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the ASGI runs on the brokers and databases ``ASGI_ALSO_ON`` leaves out."""

    def trimmed(item: pytest.Item) -> bool:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        return params.get("websocket_path") == "asgi" and any(
            params.get(name, value) != value for name, value in ASGI_ALSO_ON.items()
        )

    dropped = [item for item in items if trimmed(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not trimmed(item)]
