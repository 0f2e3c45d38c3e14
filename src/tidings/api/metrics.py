"""``/metrics``: the hub's counters in the Prometheus text format.

Each ``Tidings`` has its own registry, so several hubs in one process (tests,
or an app that mounts two) never clash.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..brokers.metrics import CommandMetrics
from ..hub import Hub
from ..hub.metrics import FANOUT_BUCKETS


class HubCollector(Collector):
    """Reads the hub's plain counters when Prometheus scrapes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        m = hub.metrics

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"tidings_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"tidings_{name}", doc, value=value)

        yield gauge("connections", "Connected (authenticated) clients.", len(hub.sessions))
        yield gauge("users", "Distinct users connected.", len(hub.users))
        yield gauge("channels", "Channels with a subscriber on this node.", len(hub.channels))
        yield gauge(
            "subscriptions",
            "Subscriptions of clients on this node.",
            sum(len(s) for s in hub.channels.values()),
        )
        queued = [s.queued_bytes for s in hub.sessions.values()]
        yield gauge("write_queue_bytes", "Bytes waiting in writer queues.", sum(queued))
        yield gauge(
            "write_queue_max_bytes", "Largest writer queue, in bytes.", max(queued, default=0)
        )
        yield gauge("broker_ready", "1 when the broker can deliver.", 1 if hub.broker.ready else 0)
        yield counter(
            "broker_errors", "Broker operations that failed.", getattr(hub.broker, "errors", 0)
        )
        yield counter(
            "broker_reconnects",
            "Times the broker connection was re-established.",
            getattr(hub.broker, "reconnects", 0),
        )
        yield counter(
            "connections_accepted", "WebSocket connections accepted.", m.connections_accepted
        )
        commands = CounterMetricFamily(
            "tidings_commands", "Client commands by method and result.", labels=["method", "result"]
        )
        for (method, result), n in sorted(m.commands.items()):
            commands.add_metric([method, result], n)
        yield commands
        disconnects = CounterMetricFamily(
            "tidings_disconnects", "Connections closed, by close code.", labels=["code"]
        )
        for code, n in sorted(m.disconnects.items()):
            disconnects.add_metric([str(code)], n)
        yield disconnects
        yield counter("publications_in", "Publications accepted on this node.", m.publications_in)
        yield counter("publications_out", "Publications queued to subscribers.", m.publications_out)
        yield counter("messages_in", "WebSocket messages received.", m.messages_in)
        yield counter("messages_out", "WebSocket messages sent (after coalescing).", m.messages_out)
        yield counter("bytes_in", "Payload received (characters of text frames).", m.bytes_in)
        yield counter("bytes_out", "Payload bytes sent.", m.bytes_out)
        yield counter(
            "slow_disconnects", "Clients closed with 3008 (queue full).", m.slow_disconnects
        )
        yield counter("auth_failures", "Rejected tokens.", m.auth_failures)
        yield counter("rate_limited", "Commands refused by the rate limit.", m.rate_limited)
        yield counter(
            "login_rate_limited", "Login attempts refused with 429.", m.login_rate_limited
        )
        limits = CounterMetricFamily(
            "tidings_limit_hits", "Abuse limits hit, by limit.", labels=["limit"]
        )
        for limit, n in sorted(m.limits.items()):
            limits.add_metric([limit], n)
        yield limits
        yield counter(
            "api_auth_failures", "Server API requests refused with 401.", m.api_auth_failures
        )
        cumulative, buckets = 0, []
        for bound, n in zip((*FANOUT_BUCKETS, float("inf")), m.fanout_buckets, strict=True):
            cumulative += n
            buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "tidings_fanout_seconds",
            "Time to queue one publication for every local subscriber.",
            buckets=buckets,
            sum_value=m.fanout_sum,
        )
        # The Redis broker's commands (only it has them).
        redis = getattr(hub.broker, "command_metrics", None)
        if isinstance(redis, CommandMetrics):
            yield gauge(
                "redis_in_flight",
                "Redis operations issued and not answered yet (queued or sent).",
                redis.in_flight,
            )
            yield gauge(
                "redis_connections_busy",
                "Redis command connections sending a pipeline (at most max_connections).",
                redis.busy,
            )
            yield counter(
                "redis_timeouts",
                "Redis operations failed for want of a free connection within command_timeout.",
                redis.timeouts,
            )
            yield HistogramMetricFamily(
                "tidings_redis_latency_seconds",
                "Time from issuing a Redis operation to its reply or failure.",
                buckets=redis.latency.cumulative(),
                sum_value=redis.latency.total,
            )
            yield HistogramMetricFamily(
                "tidings_redis_pipeline_size",
                "Commands sent to Redis in one pipeline.",
                buckets=redis.pipeline_size.cumulative(),
                sum_value=redis.pipeline_size.total,
            )


def build_registry(hub: Hub) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
