"""The shipped benchmark runs end to end: every scenario, every peer, at toy scale.

``python -m bench --smoke`` starts each peer server in its own process and
drives it with the load generator processes, so this catches a benchmark that
no longer runs, a peer that stopped speaking the protocol, and a Tidings that
loses messages or no longer disconnects a slow client. Speed itself is not
asserted here: that is what the full run and docs/benchmarks.md are for.

The scenarios of issue 12 (clients publish: (a) with a client publishing,
(h)-(l)) run too, (k) and half of (l) on a redis-server of the benchmark's own,
so the run needs Debian's redis-server as the Redis tests do.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.missing import component_missing
from tests.redis_server import redis_binary

ROOT = Path(__file__).resolve().parents[2]
PEERS = {"tidings", "fastapi", "socketio", "bare"}
BENCH_PACKAGES = ("picows", "socketio", "matplotlib", "psutil")

# The run takes about two minutes on two cores; the first test waits for it.
pytestmark = pytest.mark.timeout(540)
# Issue 12's scenarios as results.json names them (every peer), and those run on Redis.
CLIENT_SCENARIOS = ("fanout_client", "roundtrip", "pubsub", "api", "connect_storm")
ON_REDIS = ("fanout", "fanout_client", "roundtrip", "pubsub")
CONFIGS = {1, 10, "chat"}  # (i) at smoke scale: subscribers per channel, and the chat mix


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    missing = [name for name in BENCH_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        component_missing(f"the benchmark needs {names} (pip install -e '.[bench]')")
    redis_binary()  # (k) and (l) start one
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-profile", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _runs(
    results: dict[str, Any], scenario: str, broker: str = "memory", nodes: int = 1
) -> list[dict[str, Any]]:
    return [
        r
        for r in results["runs"]
        if r["scenario"] == scenario
        and r.get("broker", "memory") == broker
        and r.get("nodes", 1) == nodes
    ]


def test_every_scenario_ran_for_every_peer(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke_run
    for scenario in ("fanout", "latency", "channels", "memory", "slow", "storm", *CLIENT_SCENARIOS):
        runs = _runs(results, scenario)
        assert {r["peer"] for r in runs} == PEERS, scenario
        assert not [r for r in runs if "error" in r], scenario
    for config in CONFIGS:
        runs = [r for r in _runs(results, "pubsub") if r["config"] == config]
        assert {r["peer"] for r in runs} == PEERS, config
    assert _runs(results, "recovery")
    # The report a user reads, with its plots.
    report = (out / "results.md").read_text()
    assert "Fan-out" in report
    for section in ("(h) Round trip", "(i) Clients publishing", "(j) Publishing", "(k) Tidings"):
        assert section in report, section
    plots = ("fanout.png", "latency.png", "memory.png", "slow.png", "storm.png")
    plots += ("fanout_client.png", "roundtrip.png", "pubsub.png", "api.png", "redis.png")
    for plot in (*plots, "connect_storm.png"):
        assert (out / plot).stat().st_size > 1000, plot


def test_tidings_ran_on_redis_on_one_node_and_two(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke_run
    for nodes in (1, 2):
        for scenario in ON_REDIS:
            runs = _runs(results, scenario, "redis", nodes)
            assert runs and {r["peer"] for r in runs} == {"tidings"}, (scenario, nodes)
            assert not [r for r in runs if "error" in r], (scenario, nodes)
        configs = {r["config"] for r in _runs(results, "pubsub", "redis", nodes)}
        assert configs == CONFIGS, nodes
    (storm,) = _runs(results, "connect_storm", "redis")
    assert storm["peer"] == "tidings" and "error" not in storm, storm


def test_tidings_delivers_everything(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke_run
    for scenario in ("fanout", "latency", "channels"):
        for run in _runs(results, scenario):
            if run["peer"] == "tidings":
                assert run["published"] > 0, run
                assert run["delivered"] == run["expected"], run
                assert run["lost"] == 0, run


def _tidings(results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """Tidings' runs of a scenario on every broker and number of nodes."""
    found = [r for r in results["runs"] if r["scenario"] == scenario and r["peer"] == "tidings"]
    assert found, scenario
    return found


def test_tidings_delivers_everything_clients_publish(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, results = smoke_run
    for run in _tidings(results, "fanout_client"):
        assert run["published"] > 0, run
        assert run["delivered"] == run["expected"] == run["published"] * run["connected"], run
        assert run["command_errors"] == 0, run
    for run in _tidings(results, "roundtrip"):
        for mode in ("back_to_back", "paced"):
            assert run[mode]["round_trips"] == run["planned"], (mode, run)
            assert run[mode]["timeouts"] == run[mode]["command_errors"] == 0, (mode, run)
    for run in _tidings(results, "pubsub"):
        assert run["steps"], run
        for step in run["steps"]:
            assert step["published"] > 0, step
            assert step["lost"] == 0 and step["delivered"] == step["expected"], step
            assert step["command_errors"] == step["publishers_closed"] == 0, step
    for run in _tidings(results, "api"):
        assert run["published"] > 0 and not run["http_errors"], run
        assert run["delivered"] == run["expected"] == run["published"] * run["connected"], run
    (storm,) = [r for r in _runs(results, "connect_storm") if r["peer"] == "tidings"]
    assert storm["connected"] == storm["conns"] and storm["refused"] == 0, storm


def test_tidings_on_redis_refuses_no_one_in_the_storm(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, results = smoke_run
    (storm,) = _runs(results, "connect_storm", "redis")
    assert storm["connected"] == storm["conns"] and storm["refused"] == 0, storm


def test_tidings_disconnects_the_slow_client_and_keeps_the_others(
    smoke_run: tuple[Path, dict[str, Any]],
) -> None:
    _, results = smoke_run
    with_slow = [r for r in _runs(results, "slow") if r["peer"] == "tidings" and r["with_slow"]]
    assert with_slow
    for run in with_slow:
        assert run["slow"], run
        for slow in run["slow"]:
            assert slow["closed"] and slow["close_code"] == 3008, slow
        assert run["lost"] == 0 and not run["stalled"], run


def test_recovery_brings_back_every_missed_message(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke_run
    (run,) = _runs(results, "recovery")
    assert run["reconnected"] == run["clients"]
    assert run["recovered_messages"] == run["expected_messages"] == run["clients"] * run["missed"]
