"""Brokers, chosen by the scheme of ``TIDINGS_BROKER_URL``."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .base import Broker, BrokerEvents, BrokerUnavailable, HistoryOptions

# scheme -> "module:class"; imported lazily so that a node on the memory broker
# never needs the Redis client installed.
BROKERS: dict[str, str] = {
    "memory": "tidings.brokers.memory:MemoryBroker",
    "redis": "tidings.brokers.redis:RedisBroker",
    "rediss": "tidings.brokers.redis:RedisBroker",
}


def create_broker(url: str) -> Broker:
    """Build the broker that serves ``url`` (``memory://``, ``redis://host:6379/0``)."""
    scheme = urlsplit(url).scheme
    target = BROKERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BROKERS))
        raise ValueError(f"unknown broker URL scheme {scheme!r} (known: {known})")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    broker: Broker = cls(url)
    return broker


__all__ = [
    "BROKERS",
    "Broker",
    "BrokerEvents",
    "BrokerUnavailable",
    "HistoryOptions",
    "create_broker",
]
