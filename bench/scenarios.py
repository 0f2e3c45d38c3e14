"""The scenarios of issues 6 and 12, each run against fresh server processes per measurement."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from .orchestrator import HOST, GeneratorPool, RedisProc, ServerProc, split
from .peers.common import API_KEY, PUBLISH_PATH, push_line

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"  # = bench.peers.tidings_peer.SECRET
CHANNEL = "live:bench"  # presence and recovery (see bench.peers.tidings_peer)
CHAT_CHANNEL = "chat:bench"  # the built-in chat namespace: also join/leave to every subscriber
QUEUE_LIMIT = 1 << 20  # Tidings' default write_queue_max_bytes
CHAT = 0  # the (i) configuration "chat-like mix" (others are a number of subscribers)
REDIS_SETUP_CONCURRENCY = 40  # clients connecting at once while setting up on Redis


@dataclass(frozen=True)
class Scale:
    name: str
    fanout_subs: tuple[int, ...]
    fanout_duration: float
    latency_subs: int
    latency_rates: tuple[float, ...]
    latency_duration: float
    channels: int
    channels_duration: float
    idle_conns: int
    slow_others: int
    slow_sizes: tuple[int, ...]
    slow_duration: float
    storm_conns: int
    recovery_clients: int
    recovery_missed: int
    chat_storm_conns: int
    processes: int
    concurrency: int = 100
    message_size: int = 100
    settle: float = 0.4  # seconds without a frame that mean the setup is over
    stall_grace: float = 5.0  # seconds past the planned end that mean a stalled publisher
    slow_read: float = 1.0  # seconds the slow client gets to read what was queued for it
    quiet: float = 0.15  # cores of other load under which the machine counts as quiet
    quiet_wait: float = 30.0  # seconds to wait for quiet before each measurement
    noisy: float = 0.3  # cores of other load during a measurement that mean: try again
    retries: int = 2
    # --- issue 12: clients publish ---
    # (a) with a client publishing: subscriber counts.
    fanout_client_subs: tuple[int, ...] = (1000, 5000)
    # (h) round trip: measured round trips per mode (after a warm-up), at most this long.
    rtt_count: int = 2000
    rtt_warmup: int = 50
    rtt_duration: float = 10.0
    rtt_gap: float = 0.002  # the paced mode's pause between arrival and next publish
    # (i) subscribers per channel; each configuration has pubsub_conns subscribers in all.
    pubsub_subs: tuple[int, ...] = (1, 10, 1000)
    pubsub_conns: int = 2000
    chat_rooms: int = 1000
    chat_members: tuple[int, int] = (2, 50)  # room sizes, log-uniform between these
    # The rate search of (i): first step (deliveries/s; publications/s per member in
    # the chat mix), factor between steps, steps at most, and each step's length.
    ramp_start: float = 20_000.0
    chat_ramp_start: float = 1.0
    ramp_factor: float = 2.0
    ramp_steps: int = 9
    ramp_duration: float = 3.0
    ramp_refine: int = 2  # steps between the last rate passed and the first failed (bisection)
    p99_limit_ms: float = 100.0
    drain_quiet: float = 2.0  # seconds without a delivery that end a drain
    latency_cap: int = 200_000  # latency samples per generator sent back (every k-th)
    # (j) the HTTP API: subscribers of the channel, concurrent HTTP clients.
    api_subs: int = 10
    api_clients: tuple[int, ...] = (1, 10, 100)
    api_duration: float = 4.0
    # (k) Redis: the fan-out size, and the deployments (nodes).
    redis_fanout_subs: int = 1000
    redis_nodes: tuple[int, ...] = (1, 2)
    # (l) connect storm: clients, all at once, and how long each may take.
    big_storm_conns: int = 10_000
    big_storm_timeout: float = 60.0


SCALES = {
    "smoke": Scale(
        name="smoke",
        fanout_subs=(20,),
        fanout_duration=0.3,
        latency_subs=20,
        latency_rates=(20,),
        latency_duration=0.3,
        channels=100,
        channels_duration=0.3,
        idle_conns=50,
        slow_others=10,
        slow_sizes=(16384,),
        slow_duration=0.6,
        storm_conns=100,
        recovery_clients=50,
        recovery_missed=100,
        chat_storm_conns=50,
        processes=1,
        settle=0.1,
        stall_grace=0.8,
        slow_read=0.3,
        quiet_wait=0.0,
        retries=0,
        fanout_client_subs=(20,),
        rtt_count=50,
        rtt_warmup=5,
        rtt_duration=2.0,
        pubsub_subs=(1, 10),
        pubsub_conns=20,
        chat_rooms=4,
        chat_members=(2, 6),
        ramp_start=400.0,
        chat_ramp_start=2.0,
        ramp_steps=2,
        ramp_duration=0.2,
        ramp_refine=0,
        drain_quiet=0.5,
        api_subs=5,
        api_clients=(4,),
        api_duration=0.3,
        redis_fanout_subs=20,
        big_storm_conns=100,
        big_storm_timeout=30.0,
    ),
    "quick": Scale(
        name="quick",
        fanout_subs=(1000,),
        fanout_duration=2.0,
        latency_subs=1000,
        latency_rates=(10,),
        latency_duration=5.0,
        channels=1000,
        channels_duration=2.0,
        idle_conns=500,
        slow_others=100,
        slow_sizes=(16384,),
        slow_duration=3.0,
        storm_conns=500,
        recovery_clients=200,
        recovery_missed=100,
        chat_storm_conns=200,
        processes=2,
        settle=0.25,
        stall_grace=3.0,
        slow_read=0.5,
        quiet_wait=5.0,
        retries=0,
        fanout_client_subs=(1000,),
        rtt_count=1000,
        rtt_duration=5.0,
        pubsub_conns=1000,
        chat_rooms=100,
        ramp_steps=8,
        ramp_duration=2.0,
        ramp_refine=1,
        api_clients=(10,),
        api_duration=2.0,
        big_storm_conns=2000,
        big_storm_timeout=60.0,
    ),
    "full": Scale(
        name="full",
        fanout_subs=(100, 1000, 5000, 10000),
        fanout_duration=4.0,
        latency_subs=1000,
        latency_rates=(10, 40),
        latency_duration=10.0,
        channels=10000,
        channels_duration=4.0,
        idle_conns=5000,
        slow_others=100,
        slow_sizes=(1024, 16384),
        slow_duration=8.0,
        storm_conns=5000,
        recovery_clients=1000,
        recovery_missed=100,
        chat_storm_conns=1000,
        processes=2,
    ),
}


def line_size(size: int) -> int:
    from .peers.common import pad_for, payload

    return len(push_line(CHANNEL, payload(1, pad_for(size)), 1)) + 1


def client_window(subs: int) -> int:
    """Publications a publishing client may be ahead of the slowest client in (a).

    Smaller than the in-process publisher's window: that publisher shares the
    server's event loop, so a design that fans out inline paces it by itself;
    a client does not wait, and a window of 1,000 publications at 1,000
    subscribers left a million messages queued in the servers' buffers. At
    most 100,000 deliveries in flight: still ample to keep any server busy
    (the counters the window reads are 5 ms old at most).
    """
    return max(16, min(1000, 100_000 // max(1, subs)))


def fanout_window(subs: int, size: int) -> int:
    """Publications a publisher may be ahead of the slowest client: bounded bytes per run."""
    budget = 200 << 20  # in flight, over all clients
    per_client = 256 << 10
    lines = min(budget // max(1, subs * line_size(size)), per_client // line_size(size))
    return max(8, min(1000, lines))


class Runner:
    """Runs scenarios; ``on_step`` tells the progress display what is going on."""

    def __init__(
        self,
        scale: Scale,
        pool: GeneratorPool,
        log_dir: Path,
        on_step: Callable[[str], None],
        on_done: Callable[[], None],
    ) -> None:
        self.scale = scale
        self.pool = pool
        self.log_dir = log_dir
        self.step = on_step
        self.done = on_done
        self.results: list[dict[str, Any]] = []
        self.server_cpus: set[int] | None = None
        self._tokens: list[str] = []
        # The processes of the system under test (servers, Redis) of the running measurement.
        self.active: list[HasCpu] = []
        self.redis_query = ""  # appended to Tidings' redis:// URL (e.g. "max_connections=1000")

    # --- helpers ----------------------------------------------------------------

    def tokens(self, n: int) -> list[str]:
        if len(self._tokens) < n:
            from tidings.auth import make_connection_token

            self._tokens += [
                make_connection_token(SECRET, f"u{i}", ttl=6 * 3600)
                for i in range(len(self._tokens), n)
            ]
        return self._tokens[:n]

    def meter(self) -> Meter:
        return Meter(self.active, self.pool)

    async def connect(
        self,
        server: ServerProc,
        channels: list[str],
        *,
        deflate: bool = False,
        slow: bool = False,
        only: int | None = None,
        recover: list[list[tuple[int, str]]] | None = None,
        timeout: float = 60,
        fanout: list[int] | None = None,
        concurrency: int | None = None,
    ) -> dict[str, Any]:
        """Connect and subscribe one client per channel, spread over the generators.

        ``fanout`` (one per channel): a client with a non-zero number publishes,
        and that many subscribers are owed each of its publications.
        """
        if concurrency is None and server.broker is not None:
            # Set-up on Redis: fewer at once. Tidings' broker uses redis-py's pool,
            # which refuses a command beyond 100 connections (redis-py >= 6) rather
            # than wait, and each connecting client has a Redis command in flight.
            # The storm (l) measures what happens beyond that.
            n_gen = 1 if only is not None else len(self.pool)
            concurrency = max(1, REDIS_SETUP_CONCURRENCY // n_gen)  # per generator
        n_gen = 1 if only is not None else len(self.pool)
        if recover is not None:
            # Each generator takes back its own clients, with their positions.
            chunks, start = [], 0
            for positions in recover:
                chunks.append(list(range(start, start + len(positions))))
                start += len(positions)
        else:
            chunks = split(list(range(len(channels))), n_gen)
        tokens = self.tokens(len(channels))

        def command(i: int) -> dict[str, Any] | None:
            if only is not None and i != only:
                return None
            idx = chunks[0 if only is not None else i]
            return {
                "op": "connect",
                "url": server.url,
                "dialect": server.dialect,
                "channels": [channels[j] for j in idx],
                "tokens": [tokens[j] for j in idx],
                "recover": recover[i] if recover is not None else None,
                "deflate": deflate,
                "slow": slow,
                "concurrency": concurrency or self.scale.concurrency,
                "timeout": timeout,
                "fanout": [fanout[j] for j in idx] if fanout is not None else None,
            }

        replies = await self.pool.all(command, timeout=timeout + 30)
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {
            "ok": sum(r["ok"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": errors,
            "seconds": max(r["t1"] for r in replies) - min(r["t0"] for r in replies),
            "t0": min(r["t0"] for r in replies),
            "last_ok": max(r["last_ok"] for r in replies),
            "deflate": sum(r["deflate"] for r in replies),
            "recovered": sum(r["recovered"] for r in replies),
            "recovered_messages": sum(r["recovered_messages"] for r in replies),
            "connect_p50": statistics.median(r["connect_p50"] for r in replies),
            "connect_p99": max(r["connect_p99"] for r in replies),
            "publishers": {r["index"]: r["publishers"] for r in replies},
        }

    async def quiesce(self, quiet: float | None = None, timeout: float = 120) -> float:
        """Wait until the clients receive nothing for ``quiet`` seconds (joins drained)."""
        quiet = self.scale.settle if quiet is None else quiet
        start = time.monotonic()
        last = self.pool.totals()[2]
        still_since = time.monotonic()
        while time.monotonic() - start < timeout:
            await asyncio.sleep(0.05)
            frames = self.pool.totals()[2]
            if frames != last:
                last, still_since = frames, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                break
        return time.monotonic() - start

    async def drop(self) -> None:
        await self.pool.all(lambda i: {"op": "drop"})

    async def publish(
        self,
        server: ServerProc,
        *,
        channels: list[str],
        subs: int,
        size: int,
        duration: float,
        mode: str = "window",
        window: int = 1000,
        rate: float = 0,
        ack: str = "min",
        latency: bool = False,
        slow_gen: int | None = None,
        max_messages: int = 10_000_000,
        stall_grace: float | None = None,
    ) -> dict[str, Any]:
        """One measured publishing phase, with flow control relayed from the generators."""
        pool = self.pool
        if stall_grace is None:
            stall_grace = self.scale.stall_grace
        await pool.all(lambda i: {"op": "reset", "latency": latency})
        await asyncio.sleep(0.02)
        if slow_gen is not None:
            server.send({"cmd": "watch_slow"})
        cpu_server, cpu_gen = server.cpu(), pool.cpu()
        meter = self.meter()
        rss_before = server.rss()
        server.start_sampling()
        server.send(
            {
                "cmd": "publish",
                "channels": channels,
                "size": size,
                "duration": duration,
                "mode": mode,
                "window": window,
                "rate": rate,
                "max_messages": max_messages,
            }
        )
        started = time.monotonic()
        published: dict[str, Any] | None = None
        slow_disconnect_at: float | None = None
        resumed: asyncio.Task[Any] | None = None
        last_ack = -1
        stalled = False
        while published is None:
            total, least, _ = pool.totals()
            value = least if ack == "min" else total
            if value != last_ack:
                server.send({"cmd": "ack", "n": value})
                last_ack = value
            while not server.events.empty():
                event = server.events.get_nowait()
                name = event.get("event")
                if name == "published":
                    published = event
                elif name == "slow_disconnect" and slow_gen is not None and resumed is None:
                    slow_disconnect_at = event["at"]
                    # Read again, so the slow client takes its close frame.
                    resumed = asyncio.create_task(pool.request(slow_gen, {"op": "resume"}))
                elif name == "exit":
                    raise RuntimeError(f"{server.peer} server died (see its log)")
            if published is None and time.monotonic() - started > duration + stall_grace:
                stalled = True
                break
            await asyncio.sleep(0.004)
        if stalled:
            stats = await server.request({"cmd": "stats"}, "stats", timeout=5)
            published = {"n": stats.get("published", 0), "t0": started, "t1": time.monotonic()}
        assert published is not None
        n = int(published["n"])
        expected_total = n * subs if ack == "min" else n
        # Drain: every client gets everything, or nothing arrives for a while.
        drain_start = time.monotonic()
        last_total, still_since = -1, time.monotonic()
        while not stalled and time.monotonic() - drain_start < 30:
            total = pool.totals()[0]
            if total >= expected_total:
                break
            if total != last_total:
                last_total, still_since = total, time.monotonic()
            elif time.monotonic() - still_since > 2.0:
                break
            await asyncio.sleep(0.01)
        rss_peak = server.stop_sampling()
        cpu_server = server.cpu() - cpu_server
        cpu_gen = pool.cpu() - cpu_gen
        slow_info: list[dict[str, Any]] = []
        if slow_gen is not None:
            if resumed is None:
                await pool.request(slow_gen, {"op": "resume"})
            else:
                await resumed
            await asyncio.sleep(self.scale.slow_read)  # read what was buffered for it
        replies = await pool.all(
            lambda i: {
                "op": "collect",
                "expected": n if ack == "min" else None,
                "latency": latency,
            }
        )
        delivered = sum(r["delivered"] for r in replies)
        last = max(r["last"] for r in replies)
        t0 = float(published["t0"])
        elapsed = max(1e-9, (last if last > t0 else time.monotonic()) - t0)
        if stalled:
            elapsed = time.monotonic() - t0
        for r in replies:
            slow_info += r["slow"]
        result: dict[str, Any] = {
            "published": n,
            "expected": expected_total,
            "delivered": delivered,
            "lost": max(0, expected_total - delivered),
            "clients_short": sum(r["short"] for r in replies),
            "closed": _merge(r["closes"] for r in replies),
            "seconds": elapsed,
            "rate": delivered / elapsed,
            "stalled": stalled,
            "window_stalled": bool(published.get("window_stalled")),
            "frames": sum(r["frames"] for r in replies),
            "bytes": sum(r["bytes"] for r in replies),
            "server_cpu": cpu_server / elapsed,
            "generator_cpu": cpu_gen / elapsed,
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "rss_growth": rss_peak - rss_before,
            "server_gc": published.get("gc"),
            **meter.read(),
        }
        if slow_gen is not None:
            result["slow"] = slow_info
            result["slow_disconnect_after"] = (
                slow_disconnect_at - t0 if slow_disconnect_at is not None else None
            )
        if latency:
            samples = array("d")
            for r in replies:
                samples.frombytes(r["latency"])
            result["latency"] = _latency_summary(samples)
        return result

    def record(self, peer: str, scenario: str, **fields: Any) -> dict[str, Any]:
        entry = {"peer": peer, "scenario": scenario, **fields}
        self.results.append(entry)
        self.done()
        return entry

    async def guarded(
        self,
        peer: str,
        scenario: str,
        params: dict[str, Any],
        body: Any,
        *,
        broker: str = "memory",
        nodes: int = 1,
        multi: bool = False,
    ) -> dict[str, Any]:
        """Run one measurement on a fresh server; a failure is recorded, not raised.

        The machine may be shared: each attempt first waits (a bounded while)
        for other processes to go quiet, and an attempt disturbed by more than
        ``Scale.noisy`` cores of other load is tried again; the least disturbed
        attempt is kept.
        """
        best: dict[str, Any] | None = None
        began = time.monotonic()
        for attempt in range(1, self.scale.retries + 2):
            waited = await self.wait_quiet()
            fields = await self._attempt(peer, body, broker, nodes, multi)
            fields.update(attempt=attempt, waited_for_quiet=round(waited, 1))
            if best is None or fields.get("external_cpu", 0) < best.get("external_cpu", 0):
                best = fields
            if "error" in fields or fields.get("external_cpu", 0) <= self.scale.noisy:
                break
        assert best is not None
        best["wall_seconds"] = round(time.monotonic() - began, 2)
        deployment = {"broker": broker, "nodes": nodes}
        return self.record(peer, scenario, **deployment, **params, **best)

    async def _attempt(
        self, peer: str, body: Any, broker: str = "memory", nodes: int = 1, multi: bool = False
    ) -> dict[str, Any]:
        """Start the deployment (Redis, the nodes), run ``body`` on it, tear it all down.

        ``body`` gets the one server, or with ``multi`` the list of nodes.
        """
        servers: list[ServerProc] = []
        redis: RedisProc | None = None
        self.active = []
        try:
            url = None
            if broker == "redis":
                redis = RedisProc(self.log_dir, self.server_cpus)
                self.active.append(redis)
                await redis.start()
                url = redis.url + (f"?{self.redis_query}" if self.redis_query else "")
            for node in range(nodes):
                server = ServerProc(peer, self.log_dir, self.server_cpus, broker=url, node=node)
                servers.append(server)
                self.active.append(server)
                await server.start()
            return dict(await body(servers if multi else servers[0]))
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}
        finally:
            for server in servers:
                await server.stop()
            await self.drop()
            if redis is not None:
                await redis.stop()
            self.active = []

    async def wait_quiet(self) -> float:
        """Wait until other processes use < ``Scale.quiet`` cores, at most ``quiet_wait`` s."""
        start = time.monotonic()
        while time.monotonic() - start < self.scale.quiet_wait:
            load = await external_load(0.5)
            if load < self.scale.quiet:
                break
            self.step(f"waiting for the machine to be quiet (other load {load:.2f} cores)")
        return time.monotonic() - start

    # --- (a) fan-out throughput ---------------------------------------------------

    async def fanout(
        self,
        peer: str,
        subs: int,
        profile: Path | None = None,
        *,
        broker: str = "memory",
        nodes: int = 1,
    ) -> dict[str, Any]:
        scale = self.scale

        async def body(servers: list[ServerProc]) -> dict[str, Any]:
            server = servers[0]  # the publisher's node
            self.step(f"{peer}: (a) fan-out{_on(broker, nodes)}, connecting {subs:,} subscribers")
            conn = await self.connect_spread(servers, [CHANNEL] * subs)
            settle = await self.quiesce()
            rss_connected = server.rss()
            self.step(f"{peer}: (a) fan-out to {subs:,} subscribers")
            spy = None
            if profile is not None:
                spy = await _start_py_spy(server, profile, scale.fanout_duration + 1)
            result = await self.publish(
                server,
                channels=[CHANNEL],
                subs=conn["ok"],
                size=scale.message_size,
                duration=scale.fanout_duration,
                window=fanout_window(subs, scale.message_size),
            )
            if spy is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(spy.wait(), 30)
            return {
                "connected": conn["ok"],
                "connect_failed": conn["failed"],
                "connect_errors": conn["errors"],
                "connect_seconds": conn["seconds"],
                "settle_seconds": settle,
                "rss_connected": rss_connected,
                **result,
            }

        name = "profile" if profile is not None else "fanout"
        params = {"subs": subs, "size": scale.message_size}
        return await self.guarded(peer, name, params, body, broker=broker, nodes=nodes, multi=True)

    # --- (b) latency at a fixed rate -----------------------------------------------

    async def latency(self, peer: str, rate: float) -> dict[str, Any]:
        scale = self.scale
        subs = scale.latency_subs

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (b) latency, connecting {subs:,}")
            conn = await self.connect(server, [CHANNEL] * subs)
            await self.quiesce()
            self.step(f"{peer}: (b) latency at {rate:g} publications/s")
            result = await self.publish(
                server,
                channels=[CHANNEL],
                subs=conn["ok"],
                size=scale.message_size,
                duration=scale.latency_duration,
                mode="rate",
                rate=rate,
                latency=True,
            )
            return {
                "connected": conn["ok"],
                "connect_failed": conn["failed"],
                "planned": int(rate * scale.latency_duration) + 1,  # one at t=0
                **result,
            }

        params = {"subs": subs, "publish_rate": rate, "size": scale.message_size}
        return await self.guarded(peer, "latency", params, body)

    # --- (c) many channels, one subscriber each -----------------------------------

    async def channels(self, peer: str) -> dict[str, Any]:
        scale = self.scale
        names = [f"live:c{i}" for i in range(scale.channels)]

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (c) connecting {len(names):,} channels")
            conn = await self.connect(server, names)
            await self.quiesce()
            self.step(f"{peer}: (c) round-robin over {len(names):,} channels")
            result = await self.publish(
                server,
                channels=names,
                subs=1,
                size=scale.message_size,
                duration=scale.channels_duration,
                window=min(20_000, 4 * len(names)),
                ack="sum",
            )
            return {"connected": conn["ok"], "connect_failed": conn["failed"], **result}

        return await self.guarded(
            peer, "channels", {"channels": len(names), "size": scale.message_size}, body
        )

    # --- (d) memory per idle connection -------------------------------------------

    async def memory(self, peer: str, deflate: bool) -> dict[str, Any]:
        n = self.scale.idle_conns

        async def body(server: ServerProc) -> dict[str, Any]:
            mode = "on" if deflate else "off"
            self.step(f"{peer}: (d) {n:,} idle connections, deflate {mode}")
            # A few first, so lazily built state is not counted per connection.
            await self.connect(server, [CHANNEL] * 20, deflate=deflate)
            await self.quiesce()
            await server.request({"cmd": "gc"}, "gc")
            await asyncio.sleep(min(0.5, 2 * self.scale.settle))
            rss0 = server.rss()
            conn = await self.connect(server, [CHANNEL] * n, deflate=deflate)
            await self.quiesce()
            await server.request({"cmd": "gc"}, "gc")
            await asyncio.sleep(min(1.0, 4 * self.scale.settle))
            rss1 = server.rss()
            return {
                "connected": conn["ok"],
                "connect_failed": conn["failed"],
                "deflate_negotiated": conn["deflate"],
                "rss_before": rss0,
                "rss_after": rss1,
                "bytes_per_connection": (rss1 - rss0) / max(1, conn["ok"]),
            }

        return await self.guarded(peer, "memory", {"conns": n, "deflate": deflate}, body)

    # --- (e) one subscriber stops reading ------------------------------------------

    async def slow(self, peer: str, size: int, with_slow: bool) -> dict[str, Any]:
        scale = self.scale
        others = scale.slow_others

        async def body(server: ServerProc) -> dict[str, Any]:
            what = "with a slow client" if with_slow else "baseline"
            self.step(f"{peer}: (e) {size // 1024} KiB, {what}")
            conn = await self.connect(server, [CHANNEL] * others)
            if with_slow:
                await self.connect(server, [CHANNEL], slow=True, only=0)
            await self.quiesce()
            result = await self.publish(
                server,
                channels=[CHANNEL],
                subs=conn["ok"],
                size=size,
                duration=scale.slow_duration,
                window=fanout_window(others, size),
                slow_gen=0 if with_slow else None,
            )
            return {"connected": conn["ok"], **result}

        params = {"others": others, "size": size, "with_slow": with_slow}
        return await self.guarded(peer, "slow", params, body)

    # --- (f) connection storm -----------------------------------------------------

    async def storm(
        self, peer: str, channel: str = CHANNEL, conns: int | None = None
    ) -> dict[str, Any]:
        n = conns or self.scale.storm_conns

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (f) connection storm, {n:,} clients to {channel}")
            meter = self.meter()
            conn = await self.connect(server, [channel] * n)
            return {
                "connected": conn["ok"],
                "connect_failed": conn["failed"],
                "connect_errors": conn["errors"],
                "seconds": conn["seconds"],
                "rate": conn["ok"] / max(1e-9, conn["seconds"]),
                "connect_p50": conn["connect_p50"],
                "connect_p99": conn["connect_p99"],
                **meter.read(),
            }

        return await self.guarded(peer, "storm", {"conns": n, "channel": channel}, body)

    # --- (g) recovery after a mass reconnect (Tidings) -----------------------------

    async def recovery(self, peer: str) -> dict[str, Any]:
        n = self.scale.recovery_clients
        missed = self.scale.recovery_missed

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (g) recovery, {n:,} clients subscribe")
            conn = await self.connect(server, [CHANNEL] * n)
            await self.quiesce()
            positions = await self.pool.all(lambda i: {"op": "positions"})
            self.step(f"{peer}: (g) all disconnect; {missed} publications meanwhile")
            await self.drop()
            for _ in range(600):
                stats = await server.request({"cmd": "stats"}, "stats")
                if stats.get("connections", 0) == 0:
                    break
                await asyncio.sleep(0.05)
            server.send(
                {
                    "cmd": "publish",
                    "channels": [CHANNEL],
                    "size": self.scale.message_size,
                    "mode": "burst",
                    "max_messages": missed,
                    "duration": 30,
                }
            )
            await server.wait_event("published", 40)
            self.step(f"{peer}: (g) {n:,} clients reconnect and recover at once")
            recover = [[tuple(p) for p in reply["positions"]] for reply in positions]
            counts = [len(r) for r in recover]
            channels = [CHANNEL] * sum(counts)
            again = await self.connect(server, channels, recover=recover)
            return {
                "connected": conn["ok"],
                "reconnected": again["ok"],
                "failed": again["failed"],
                "errors": again["errors"],
                "recovered": again["recovered"],
                "recovered_messages": again["recovered_messages"],
                "expected_messages": again["ok"] * missed,
                "seconds": again["seconds"],
                "rate": again["ok"] / max(1e-9, again["seconds"]),
                "messages_per_second": again["recovered_messages"] / max(1e-9, again["seconds"]),
            }

        return await self.guarded(peer, "recovery", {"clients": n, "missed": missed}, body)

    # --- issue 12: deployments of several nodes, clients that publish -------------

    async def connect_spread(
        self,
        servers: list[ServerProc],
        channels: list[str],
        *,
        fanout: list[int] | None = None,
        publishers_on_first: bool = True,
    ) -> dict[str, Any]:
        """Connect clients to the nodes: publishers to the first, the others alternately.

        With ``publishers_on_first`` False (the chat mix, where everyone
        publishes) every client alternates, and publishes through its own node.
        """
        if len(servers) == 1:
            return await self.connect(servers[0], channels, fanout=fanout)
        lanes: list[list[int]] = [[] for _ in servers]
        k = 0
        for j in range(len(channels)):
            if publishers_on_first and fanout is not None and fanout[j]:
                lanes[0].append(j)
            else:
                lanes[k % len(servers)].append(j)
                k += 1
        parts = []
        for server, lane in zip(servers, lanes, strict=True):
            if lane:
                parts.append(
                    await self.connect(
                        server,
                        [channels[j] for j in lane],
                        fanout=[fanout[j] for j in lane] if fanout is not None else None,
                    )
                )
        return _merge_connects(parts)

    async def drain(self, owed: int, limit: float = 60.0) -> bool:
        """Wait until the clients have ``owed`` publications, or nothing arrives for a while."""
        start = time.monotonic()
        last, still_since = -1, start
        while time.monotonic() - start < limit:
            total = self.pool.totals()[0]
            if total >= owed:
                return True
            if total != last:
                last, still_since = total, time.monotonic()
            elif time.monotonic() - still_since > self.scale.drain_quiet:
                return False
            await asyncio.sleep(0.01)
        return False

    async def drive(
        self,
        servers: list[ServerProc],
        *,
        gens: list[int],
        command: dict[str, Any],
        latency: bool,
        owed: Callable[[int], int] | None = None,
        every_client: bool = False,
    ) -> dict[str, Any]:
        """One measured phase where clients publish (the generators' ``drive``)."""
        pool = self.pool
        await pool.all(lambda i: {"op": "reset", "latency": latency})  # counters zeroed at once
        primary = servers[0]
        meter = self.meter()
        rss_before = primary.rss()
        primary.start_sampling()
        cpu_server, cpu_gen = primary.cpu(), pool.cpu()
        duration = float(command["duration"])
        replies = await asyncio.gather(
            *(pool.request(i, command, timeout=duration + 60) for i in gens)
        )
        sent = sum(r["sent"] for r in replies)
        expected = owed(sent) if owed is not None else sum(r["expected"] for r in replies)
        t0 = min(r["t0"] for r in replies)
        t1 = max(r["t1"] for r in replies)
        drained = await self.drain(expected)
        rss_peak = primary.stop_sampling()
        cpu_server = primary.cpu() - cpu_server
        cpu_gen = pool.cpu() - cpu_gen
        collected = await pool.all(
            lambda i: {
                "op": "collect",
                "expected": sent if every_client else None,
                "latency": latency,
                "latency_cap": self.scale.latency_cap,
            }
        )
        delivered = sum(r["delivered"] for r in collected)
        last = max(r["last"] for r in collected)
        elapsed = max(1e-9, (last if last > t0 else time.monotonic()) - t0)
        result: dict[str, Any] = {
            "published": sent,
            "expected": expected,
            "delivered": delivered,
            "lost": max(0, expected - delivered),
            "drained": drained,
            "clients_short": sum(r["short"] for r in collected),
            "closed": _merge(r["closes"] for r in collected),
            "seconds": elapsed,
            "rate": delivered / elapsed,
            "publishing_seconds": t1 - t0,
            "publish_rate": sent / max(1e-9, t1 - t0),
            "generator_lag_max": max(r["lag_max"] for r in replies),
            "window_stalled": any(r["window_stalled"] for r in replies),
            "publishers_closed": sum(r["publishers_closed"] for r in replies),
            "command_errors": sum(r["command_errors"] for r in replies),
            "frames": sum(r["frames"] for r in collected),
            "server_cpu": cpu_server / elapsed,
            "generator_cpu": cpu_gen / elapsed,
            "rss_before": rss_before,
            "rss_peak": rss_peak,
            "rss_growth": rss_peak - rss_before,
            **meter.read(),
        }
        if latency:
            samples = array("d")
            for r in collected:
                samples.frombytes(r["latency"])
            result["latency"] = _latency_summary(samples)
        return result

    # --- (a) fan-out, a client publishing ---------------------------------------------

    async def fanout_client(
        self, peer: str, subs: int, *, broker: str = "memory", nodes: int = 1
    ) -> dict[str, Any]:
        """(a) with the publisher a client: one of the subscribers publishes, closed-loop."""
        scale = self.scale

        async def body(servers: list[ServerProc]) -> dict[str, Any]:
            where = _on(broker, nodes)
            self.step(f"{peer}: (a) client publishing{where}, connecting {subs:,}")
            conn = await self.connect_spread(
                servers, [CHANNEL] * subs, fanout=[subs] + [0] * (subs - 1)
            )
            settle = await self.quiesce()
            if not conn["publishers"].get(0):
                raise RuntimeError("the publishing client did not connect")
            self.step(f"{peer}: (a) a client publishes to {subs:,} subscribers{where}")
            result = await self.drive(
                servers,
                gens=[0],  # the publisher is the first client, on the first generator
                command={
                    "op": "drive",
                    "mode": "window",
                    "window": client_window(subs),
                    "generators": len(self.pool),
                    "duration": scale.fanout_duration,
                    "size": scale.message_size,
                },
                latency=False,
                owed=lambda n: n * conn["ok"],
                every_client=True,
            )
            return {
                "connected": conn["ok"],
                "connect_failed": conn["failed"],
                "connect_errors": conn["errors"],
                "settle_seconds": settle,
                **result,
            }

        params = {"subs": subs, "size": scale.message_size}
        return await self.guarded(
            peer, "fanout_client", params, body, broker=broker, nodes=nodes, multi=True
        )

    # --- (h) request/response round trip ----------------------------------------------

    async def roundtrip(
        self, peer: str, *, broker: str = "memory", nodes: int = 1
    ) -> dict[str, Any]:
        """One client publishes and waits for its own publication, back-to-back and paced."""
        scale = self.scale
        channel = "live:rtt"

        async def body(servers: list[ServerProc]) -> dict[str, Any]:
            where = _on(broker, nodes)
            self.step(f"{peer}: (h) round trip{where}, connecting")
            conn = await self.connect(servers[0], [channel], only=0, fanout=[1])
            receiver = 0
            if len(servers) > 1:  # the publication comes back through the other node
                conn = _merge_connects([conn, await self.connect(servers[1], [channel], only=0)])
                receiver = 1
            if conn["failed"]:
                raise RuntimeError(f"round-trip clients did not connect: {conn['errors']}")
            await self.quiesce()
            meter = self.meter()
            out: dict[str, Any] = {"connected": conn["ok"], "planned": scale.rtt_count}
            for mode, gap in (("back_to_back", 0.0), ("paced", scale.rtt_gap)):
                self.step(f"{peer}: (h) round trip{where}, {mode.replace('_', '-')}")
                reply = await self.pool.request(
                    0,
                    {
                        "op": "rtt",
                        "receiver": receiver,
                        "count": scale.rtt_count,
                        "warmup": scale.rtt_warmup,
                        "gap": gap,
                        "duration": scale.rtt_duration,
                        "size": scale.message_size,
                        "timeout": 5.0,
                    },
                    timeout=scale.rtt_duration + 30,
                )
                samples = array("d")
                samples.frombytes(reply["samples"])
                summary = _latency_summary(samples)
                summary["mean_ms"] = 1000 * sum(samples) / len(samples) if samples else 0.0
                out[mode] = {
                    **summary,
                    "round_trips": len(samples),
                    "timeouts": reply["timeouts"],
                    "seconds": reply["seconds"],
                    "gap_mean_ms": 1000 * reply["gap_mean"],
                    "command_errors": reply["command_errors"],
                }
            out.update(meter.read())
            return out

        params = {"size": scale.message_size}
        return await self.guarded(
            peer, "roundtrip", params, body, broker=broker, nodes=nodes, multi=True
        )

    # --- (i) clients publishing: the highest rate with p99 under the limit ----------

    def layout(self, config: int) -> tuple[list[str], list[int]]:
        """One channel per client, and per client the members owed its publications (0: none).

        ``config`` is a number of subscribers per channel (the first of each
        channel publishes), or CHAT: rooms of log-uniform sizes where every
        member publishes.
        """
        scale = self.scale
        channels: list[str] = []
        fanout: list[int] = []
        if config == CHAT:
            rng = random.Random(12)
            lo, hi = scale.chat_members
            for j in range(scale.chat_rooms):
                size = round(math.exp(rng.uniform(math.log(lo), math.log(hi))))
                channels += [f"live:room{j}"] * size
                fanout += [size] * size
        else:
            for j in range(max(1, scale.pubsub_conns // config)):
                channels += [f"live:s{config}-{j}"] * config
                fanout += [config] + [0] * (config - 1)
        return channels, fanout

    async def pubsub(
        self, peer: str, config: int, *, broker: str = "memory", nodes: int = 1
    ) -> dict[str, Any]:
        """(i): steps of rising rate until p99 passes the limit; the last step under it counts."""
        scale = self.scale
        channels, fanout = self.layout(config)
        publishers = sum(1 for f in fanout if f)
        # Deliveries per publication of one publisher each second, over all publishers.
        per_rate = sum(fanout)
        name = "chat" if config == CHAT else f"{config} per channel"
        # The rate the steps move: publications/s of each publishing client.
        if config == CHAT:
            start = scale.chat_ramp_start
        else:
            start = scale.ramp_start / config / publishers

        async def body(servers: list[ServerProc]) -> dict[str, Any]:
            where = _on(broker, nodes)
            self.step(f"{peer}: (i) {name}{where}, connecting {len(channels):,}")
            conn = await self.connect_spread(
                servers, channels, fanout=fanout, publishers_on_first=config != CHAT
            )
            if conn["failed"]:
                raise RuntimeError(f"{conn['failed']} clients did not connect: {conn['errors']}")
            await self.quiesce()
            gens = [i for i, n in conn["publishers"].items() if n]
            steps: list[dict[str, Any]] = []
            passed: float | None = None
            failed: float | None = None
            rate = start
            refine = scale.ramp_refine
            for n_step in range(scale.ramp_steps):
                if n_step:
                    await self.quiesce()  # the previous step's stragglers, if any
                planned = rate * publishers
                self.step(f"{peer}: (i) {name}{where}, {planned:,.0f} publications/s")
                result = await self.drive(
                    servers,
                    gens=gens,
                    command={
                        "op": "drive",
                        "mode": "rate",
                        "rate": rate,
                        "per_client": True,
                        "duration": scale.ramp_duration,
                        "max_messages": math.ceil(planned * scale.ramp_duration) + 1,
                        "size": scale.message_size,
                    },
                    latency=True,
                )
                reasons = []
                p99 = result["latency"]["p99_ms"]
                if p99 > scale.p99_limit_ms:
                    reasons.append(f"p99 {p99:.0f} ms")
                if result["lost"]:
                    reasons.append(f"lost {result['lost']:,}")
                if result["publish_rate"] < 0.9 * planned:
                    reasons.append(f"sent {result['publish_rate']:,.0f}/s of {planned:,.0f}/s")
                if result["command_errors"] or result["publishers_closed"]:
                    reasons.append("publish refused or client closed")
                step = {
                    "rate_each": rate,
                    "planned_rate": planned,
                    "planned_deliveries": rate * per_rate,
                    "ok": not reasons,
                    "reasons": reasons,
                    **result,
                }
                steps.append(step)
                if step["ok"]:
                    passed = rate if passed is None else max(passed, rate)
                else:
                    failed = rate if failed is None else min(failed, rate)
                if failed is None:
                    rate *= scale.ramp_factor
                elif passed is None:
                    rate /= scale.ramp_factor
                elif refine > 0 and failed > passed:
                    refine -= 1
                    rate = math.sqrt(passed * failed)
                else:
                    break
            best = max(
                (st for st in steps if st["ok"]), key=lambda st: st["rate_each"], default=None
            )
            sustainable = None
            if best is not None:
                sustainable = {
                    "rate_each": best["rate_each"],
                    "publications_per_second": best["planned_rate"],
                    "deliveries_per_second": best["delivered"] / best["seconds"],
                    "p50_ms": best["latency"]["p50_ms"],
                    "p99_ms": best["latency"]["p99_ms"],
                }
            return {
                "connected": conn["ok"],
                "channels": len(set(channels)),
                "publishers": publishers,
                "members": len(channels),
                "deliveries_per_publication": per_rate / publishers,
                "sustainable": sustainable,
                "limit_found": failed is not None and passed is not None and failed > passed,
                "lost": sum(st["lost"] for st in steps),
                # The most disturbed step decides whether the ramp is run again.
                "external_cpu": max((st["external_cpu"] for st in steps), default=0.0),
                "steps": steps,
            }

        params = {"config": "chat" if config == CHAT else config, "size": scale.message_size}
        return await self.guarded(
            peer, "pubsub", params, body, broker=broker, nodes=nodes, multi=True
        )

    # --- (j) publishing through the HTTP API -------------------------------------------

    async def api(self, peer: str, clients: int) -> dict[str, Any]:
        """Concurrent HTTP clients POST /api/publish, each waiting for its answer."""
        scale = self.scale
        channel = "live:api"

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (j) HTTP API, connecting {scale.api_subs:,} subscribers")
            conn = await self.connect(server, [channel] * scale.api_subs)
            await self.quiesce()
            self.step(f"{peer}: (j) {clients} HTTP clients publish")
            pool = self.pool
            await pool.all(lambda i: {"op": "reset", "latency": True})
            meter = self.meter()
            cpu_server, cpu_gen = server.cpu(), pool.cpu()
            shares = [len(part) for part in split(list(range(clients)), len(pool))]
            replies = await asyncio.gather(
                *(
                    pool.request(
                        i,
                        {
                            "op": "http",
                            "host": HOST,
                            "port": server.port,
                            "path": PUBLISH_PATH,
                            "headers": {"X-API-Key": API_KEY},
                            "channel": channel,
                            "clients": n,
                            "duration": scale.api_duration,
                            "size": scale.message_size,
                        },
                        timeout=scale.api_duration + 60,
                    )
                    for i, n in enumerate(shares)
                    if n
                )
            )
            ok = sum(r["ok"] for r in replies)
            t0 = min(r["t0"] for r in replies)
            t1 = max(r["t1"] for r in replies)
            expected = ok * conn["ok"]
            drained = await self.drain(expected)
            wall = max(1e-9, t1 - t0)
            cpu_server = server.cpu() - cpu_server
            cpu_gen = pool.cpu() - cpu_gen
            collected = await pool.all(
                lambda i: {"op": "collect", "latency": True, "latency_cap": scale.latency_cap}
            )
            requests = array("d")
            for r in replies:
                requests.frombytes(r["latency"])
            deliveries = array("d")
            for r in collected:
                deliveries.frombytes(r["latency"])
            delivered = sum(r["delivered"] for r in collected)
            return {
                "connected": conn["ok"],
                "http_connections": sum(r["connections"] for r in replies),
                "published": ok,
                "http_errors": _merge(r["errors"] for r in replies),
                "seconds": wall,
                "rate": ok / wall,
                "request": _latency_summary(requests),
                "latency": _latency_summary(deliveries),
                "expected": expected,
                "delivered": delivered,
                "lost": max(0, expected - delivered),
                "drained": drained,
                "server_cpu": cpu_server / wall,
                "generator_cpu": cpu_gen / wall,
                **meter.read(),
            }

        params = {"clients": clients, "subs": scale.api_subs, "size": scale.message_size}
        return await self.guarded(peer, "api", params, body)

    # --- (l) connect storm: everyone at once -------------------------------------------

    async def connect_storm(self, peer: str, *, broker: str = "memory") -> dict[str, Any]:
        """All clients connect and subscribe at once; the time until the last is subscribed."""
        n = self.scale.big_storm_conns

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (l) connect storm{_on(broker, 1)}, {n:,} clients at once")
            meter = self.meter()
            conn = await self.connect(
                server, [CHANNEL] * n, concurrency=n, timeout=self.scale.big_storm_timeout
            )
            until = conn["last_ok"] - conn["t0"] if conn["ok"] else None
            return {
                "connected": conn["ok"],
                "refused": conn["failed"],
                "connect_errors": conn["errors"],
                "seconds_all": until,
                "seconds": conn["seconds"],
                "rate": conn["ok"] / until if until else 0.0,
                "connect_p50": conn["connect_p50"],
                "connect_p99": conn["connect_p99"],
                **meter.read(),
            }

        return await self.guarded(peer, "connect_storm", {"conns": n}, body, broker=broker)


class HasCpu(Protocol):
    def cpu(self) -> float: ...


class Meter:
    """CPU of the whole machine, and how much of it went to processes not in the run.

    ``procs`` are the system under test (servers, Redis): their CPU is also
    reported together, as ``server_side_cpu``.
    """

    def __init__(self, procs: list[HasCpu], pool: GeneratorPool) -> None:
        self.procs, self.pool = list(procs), pool
        self.me = psutil.Process()
        self.start = time.monotonic()
        self.busy = _machine_busy()
        self.side = self._side()
        self.ours = self._ours()

    def _side(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def _ours(self) -> float:
        times = self.me.cpu_times()
        return self._side() + self.pool.cpu() + float(times.user + times.system)

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.start)
        now = _machine_busy()
        busy = (now[0] - self.busy[0]) / wall
        irq = (now[1] - self.busy[1]) / wall
        ours = (self._ours() - self.ours) / wall
        return {
            "machine_cpu": busy,
            "irq_cpu": irq,
            "external_cpu": max(0.0, busy - irq - ours),
            "server_side_cpu": (self._side() - self.side) / wall,
        }


def _machine_busy() -> tuple[float, float]:
    """CPU seconds (all cores) busy since boot, and of those in (soft) interrupts.

    Interrupt time is the loopback's packet processing, mostly ours; it is
    counted apart because the kernel does not charge it to any process.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / tick, (fields[5] + fields[6]) / tick


async def external_load(seconds: float = 0.5) -> float:
    """Cores busy with processes other than ours (and interrupts) over ``seconds``."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]

    def ours() -> float:
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    b0, o0, t0 = _machine_busy(), ours(), time.monotonic()
    await asyncio.sleep(seconds)
    b1, o1, wall = _machine_busy(), ours(), time.monotonic() - t0
    return max(0.0, ((b1[0] - b0[0]) - (b1[1] - b0[1]) - (o1 - o0)) / wall)


async def _start_py_spy(server: ServerProc, out: Path, duration: float) -> Any:
    import shutil
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    assert server.proc is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(server.proc.pid),
        "--rate",
        "200",
        "--duration",
        str(max(1, round(duration))),
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _merge(dicts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = merged.get(k, 0) + v
    return merged


def _latency_summary(samples: array[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    n = len(ordered)

    def pct(p: float) -> float:
        return ordered[min(n - 1, int(n * p / 100))] * 1000

    return {"n": n, "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": ordered[-1] * 1000}


def _on(broker: str, nodes: int) -> str:
    """How a step names the deployment: nothing for one node on memory."""
    if broker == "memory" and nodes == 1:
        return ""
    return f" on {broker}, {nodes} node" + ("s" if nodes > 1 else "")


def _merge_connects(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The connect results of several nodes as one."""
    if len(parts) == 1:
        return parts[0]
    publishers: dict[int, int] = {}
    for part in parts:
        for gen, n in part["publishers"].items():
            publishers[gen] = publishers.get(gen, 0) + n
    return {
        "ok": sum(p["ok"] for p in parts),
        "failed": sum(p["failed"] for p in parts),
        "errors": _merge(p["errors"] for p in parts),
        "seconds": sum(p["seconds"] for p in parts),
        "t0": min(p["t0"] for p in parts),
        "last_ok": max(p["last_ok"] for p in parts),
        "deflate": sum(p["deflate"] for p in parts),
        "recovered": sum(p["recovered"] for p in parts),
        "recovered_messages": sum(p["recovered_messages"] for p in parts),
        "connect_p50": statistics.median(p["connect_p50"] for p in parts),
        "connect_p99": max(p["connect_p99"] for p in parts),
        "publishers": publishers,
    }
