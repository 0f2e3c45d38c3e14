"""What the Redis broker's command pipeline counts; ``tidings.api.metrics`` exports it.

Plain numbers on the hot path, as in ``tidings.hub.metrics``: Prometheus reads
them at scrape time. This module imports nothing of redis-py, so /metrics works
on a node without it (the memory broker has no such counters).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds from issuing a Redis operation to its reply (or its failure): from a
# pipelined round trip on loopback to the command timeout.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Commands sent in one pipeline.
PIPELINE_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (the last one: above every bound) and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.total += value
        # The first bucket whose bound is >= value (Prometheus' "le").
        self.counts[bisect_left(self.bounds, value)] += 1

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' buckets: (upper bound, observations up to it), +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else str(bound), running))
        return out


@dataclass(slots=True)
class CommandMetrics:
    """The Redis broker's commands: how many wait, how long they take, how they travel."""

    # Operations issued and not answered yet (queued, or sent and awaiting the reply).
    in_flight: int = 0
    # Pooled connections busy sending a pipeline (at most the pool's size).
    busy: int = 0
    # Operations that failed because no connection was free within the command timeout.
    timeouts: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    pipeline_size: Histogram = field(default_factory=lambda: Histogram(PIPELINE_SIZE_BUCKETS))
