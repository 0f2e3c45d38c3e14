"""The scenarios of issue 6, each run against one fresh server process per measurement."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .orchestrator import GeneratorPool, ServerProc, split
from .peers.common import push_line

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"  # = bench.peers.tidings_peer.SECRET
CHANNEL = "live:bench"  # presence and recovery (see bench.peers.tidings_peer)
CHAT_CHANNEL = "chat:bench"  # the built-in chat namespace: also join/leave to every subscriber
QUEUE_LIMIT = 1 << 20  # Tidings' default write_queue_max_bytes


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

    # --- helpers ----------------------------------------------------------------

    def tokens(self, n: int) -> list[str]:
        if len(self._tokens) < n:
            from tidings.auth import make_connection_token

            self._tokens += [
                make_connection_token(SECRET, f"u{i}", ttl=6 * 3600)
                for i in range(len(self._tokens), n)
            ]
        return self._tokens[:n]

    async def start(self, peer: str) -> ServerProc:
        server = ServerProc(peer, self.log_dir, self.server_cpus)
        await server.start()
        return server

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
    ) -> dict[str, Any]:
        """Connect and subscribe one client per channel, spread over the generators."""
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
                "concurrency": self.scale.concurrency,
                "timeout": timeout,
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
            "deflate": sum(r["deflate"] for r in replies),
            "recovered": sum(r["recovered"] for r in replies),
            "recovered_messages": sum(r["recovered_messages"] for r in replies),
            "connect_p50": statistics.median(r["connect_p50"] for r in replies),
            "connect_p99": max(r["connect_p99"] for r in replies),
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

    async def finish(self, server: ServerProc) -> None:
        await server.stop()
        await self.drop()

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
        meter = Meter(server, pool)
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
        self, peer: str, scenario: str, params: dict[str, Any], body: Any
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
            fields = await self._attempt(peer, body)
            fields.update(attempt=attempt, waited_for_quiet=round(waited, 1))
            if best is None or fields.get("external_cpu", 0) < best.get("external_cpu", 0):
                best = fields
            if "error" in fields or fields.get("external_cpu", 0) <= self.scale.noisy:
                break
        assert best is not None
        best["wall_seconds"] = round(time.monotonic() - began, 2)
        return self.record(peer, scenario, **params, **best)

    async def _attempt(self, peer: str, body: Any) -> dict[str, Any]:
        server: ServerProc | None = None
        try:
            server = await self.start(peer)
            return dict(await body(server))
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}
        finally:
            if server is not None:
                await self.finish(server)

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

    async def fanout(self, peer: str, subs: int, profile: Path | None = None) -> dict[str, Any]:
        scale = self.scale

        async def body(server: ServerProc) -> dict[str, Any]:
            self.step(f"{peer}: (a) fan-out, connecting {subs:,} subscribers")
            conn = await self.connect(server, [CHANNEL] * subs)
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
        return await self.guarded(peer, name, {"subs": subs, "size": scale.message_size}, body)

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
            meter = Meter(server, self.pool)
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


class Meter:
    """CPU of the whole machine, and how much of it went to processes not in the run."""

    def __init__(self, server: ServerProc, pool: GeneratorPool) -> None:
        self.server, self.pool = server, pool
        self.me = psutil.Process()
        self.start = time.monotonic()
        self.busy = _machine_busy()
        self.ours = self._ours()

    def _ours(self) -> float:
        times = self.me.cpu_times()
        return self.server.cpu() + self.pool.cpu() + float(times.user + times.system)

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
