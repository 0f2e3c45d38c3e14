"""The Grafana dashboard in docs/ only queries metrics that /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tidings import Settings
from tidings.api.metrics import build_registry
from tidings.brokers.memory import MemoryBroker
from tidings.hub import Hub

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"


def test_every_queried_metric_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = set(re.findall(r"\b((?:tidings|process)_[a-z_]+)", " ".join(exprs)))
    hub = Hub(Settings.load(secret="s", api_key="k"), MemoryBroker())
    # Labelled families show samples only once something was counted.
    hub.metrics.commands[("publish", "ok")] += 1
    hub.metrics.disconnects[3000] += 1
    exported: set[str] = set()
    for family in build_registry(hub).collect():
        exported.update(sample.name for sample in family.samples)
    missing = queried - exported
    assert not missing, f"dashboard queries metrics that do not exist: {sorted(missing)}"
    assert len(queried) >= 15
