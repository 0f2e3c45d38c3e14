"""Tidings as ``tidings serve`` runs it: ``build_server`` with default settings.

Every setting is the default but two. The log level is warning (as for every
peer), so uvicorn does not log each WebSocket it accepts. And one namespace is
added, ``live``, as a user's config file would: presence, history (100
publications, 10 minutes) and forced recovery, as on the built-in ``chat``
namespace, but without ``chat``'s join/leave pushes to every subscriber, whose
cost grows with the square of the subscribers (the benchmark measures that
apart, in the connection storm on ``chat:*``).

Two more settings differ for the scenarios where clients publish (issue 12).
The per-connection command rate limit (default 100 commands/s, burst 200)
is raised out of reach: one client publishing back-to-back, as in (h), sends
thousands a second, and none of the other designs has a limit (the bucket is
still checked on every command). And ``--broker`` selects the broker:
``memory://`` (the default) or a ``redis://`` URL; two processes on the same
Redis are two nodes of one deployment.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import uvloop

from tidings import Settings, Tidings
from tidings.config import NamespaceOptions
from tidings.server import build_server

from .common import API_KEY, Control, raise_nofile_limit, serve_under_control

# The benchmark's secret: the generators mint connection tokens with it.
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"

LIVE = NamespaceOptions(
    presence=True,
    history_size=100,
    history_ttl=600,
    force_recovery=True,
    allow_publish_for_subscriber=True,
    allow_presence_for_subscriber=True,
    allow_history_for_subscriber=True,
)


# Commands per second and burst per connection: far above anything the benchmark sends.
COMMAND_RATE = 1_000_000


async def serve(host: str, port: int, broker: str = "memory://") -> None:
    for name in [k for k in os.environ if k.startswith("TIDINGS_")]:
        del os.environ[name]  # the defaults, whatever the caller's environment says
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as data_dir:
        settings = Settings.load(
            secret=SECRET,
            api_key=API_KEY,
            data_dir=data_dir,
            broker_url=broker,
            command_rate=COMMAND_RATE,
            command_burst=COMMAND_RATE,
            log_level="warning",
            namespaces={"live": LIVE},
        )
        tidings = Tidings(settings)
        server = build_server(tidings.settings, host=host, port=port, tidings=tidings)
        hub = tidings.hub

        def publish(channel: str, data: bytes, seq: int) -> Any:
            # What the server API's publish does with the JSON it was given.
            return hub.publish(hub.channel(channel), data)

        def slow_disconnects() -> int:
            metrics = getattr(hub, "metrics", None)
            if metrics is not None:
                return int(metrics.slow_disconnects)
            return int(getattr(hub, "metrics_slow_disconnects", 0))

        def stats() -> dict[str, Any]:
            return {
                "connections": len(hub.sessions),
                "slow_disconnects": slow_disconnects(),
                **hub.stats(),
            }

        control = Control(publish, stats, slow_disconnects)
        await serve_under_control(server, control)


def run(host: str, port: int, broker: str = "memory://") -> None:
    raise_nofile_limit()
    uvloop.run(serve(host, port, broker))
