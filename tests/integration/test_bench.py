"""The shipped benchmark runs end to end: every scenario, every peer, at toy scale.

``python -m bench --smoke`` starts each peer server in its own process and
drives it with the load generator processes, so this catches a benchmark that
no longer runs, a peer that stopped speaking the protocol, and a Tidings that
loses messages or no longer disconnects a slow client. Speed itself is not
asserted here: that is what the full run and docs/benchmarks.md are for.
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

ROOT = Path(__file__).resolve().parents[2]
PEERS = {"tidings", "fastapi", "socketio", "bare"}
BENCH_PACKAGES = ("picows", "socketio", "matplotlib", "psutil")

# The run takes about a minute on two cores; the first test waits for it.
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    missing = [name for name in BENCH_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        names = ", ".join(missing)
        component_missing(f"the benchmark needs {names} (pip install -e '.[bench]')")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-profile", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _runs(results: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    return [r for r in results["runs"] if r["scenario"] == scenario]


def test_every_scenario_ran_for_every_peer(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke_run
    for scenario in ("fanout", "latency", "channels", "memory", "slow", "storm"):
        runs = _runs(results, scenario)
        assert {r["peer"] for r in runs} == PEERS, scenario
        assert not [r for r in runs if "error" in r], scenario
    assert _runs(results, "recovery")
    # The report a user reads, with its plots.
    assert "Fan-out" in (out / "results.md").read_text()
    for plot in ("fanout.png", "latency.png", "memory.png", "slow.png", "storm.png"):
        assert (out / plot).stat().st_size > 1000, plot


def test_tidings_delivers_everything(smoke_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke_run
    for scenario in ("fanout", "latency", "channels"):
        for run in _runs(results, scenario):
            if run["peer"] == "tidings":
                assert run["published"] > 0, run
                assert run["delivered"] == run["expected"], run
                assert run["lost"] == 0, run


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
