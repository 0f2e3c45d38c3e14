"""What the hub counts. Plain integers on the hot path; Prometheus reads them at scrape time.

Incrementing an int attribute costs a few nanoseconds, where a labelled
prometheus-client counter takes a lock; so the hub keeps its own tallies
and ``tidings.api.metrics`` turns them into metric families when scraped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Fan-out latency buckets, in seconds: from one small channel to many thousands.
FANOUT_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass(slots=True)
class Metrics:
    connections_accepted: int = 0
    # (method, result): result is "ok", an error code, or "disconnect".
    commands: Counter[tuple[str, str]] = field(default_factory=Counter)
    # close code -> connections closed with it.
    disconnects: Counter[int] = field(default_factory=Counter)
    publications_in: int = 0
    publications_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    slow_disconnects: int = 0
    auth_failures: int = 0
    rate_limited: int = 0
    # Login attempts (/token password grant, /register) refused with HTTP 429.
    login_rate_limited: int = 0
    # Abuse limits hit, by limit: connections_per_user (3504), command_rate (111),
    # command_flood (3013), channels_per_connection (106).
    limits: Counter[str] = field(default_factory=Counter)
    # Server API requests refused for a missing or wrong key (401).
    api_auth_failures: int = 0
    # Time to queue one publication for every local subscriber: counts per bucket.
    fanout_buckets: list[int] = field(default_factory=lambda: [0] * (len(FANOUT_BUCKETS) + 1))
    fanout_sum: float = 0.0
    fanout_count: int = 0

    def observe_fanout(self, seconds: float) -> None:
        self.fanout_sum += seconds
        self.fanout_count += 1
        for i, bound in enumerate(FANOUT_BUCKETS):
            if seconds <= bound:
                self.fanout_buckets[i] += 1
                return
        self.fanout_buckets[-1] += 1
