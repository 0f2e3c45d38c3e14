"""A load generator process: many client connections on one uvloop, driven over a pipe.

The orchestrator sends commands (dicts) through a ``multiprocessing`` pipe and
gets one reply per command. While clients receive, the process keeps three
numbers in shared memory for the orchestrator's flow control: publications
received by all its clients, by its least-advanced client, and frames received.

Clients may publish too (issue 12): ``connect`` marks some clients as
publishers (with the number of members of their channel, which each of their
publications is owed to), ``drive`` publishes from them at a fixed rate or
closed-loop on a window, ``rtt`` times one client's publications coming back,
and ``http`` posts publications to the server API from keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import socket
import threading
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop
from picows import ws_connect

from .client import CLOSED, Client, centrifugo_hello, socketio_hello
from .httpclient import HttpConnection, post
from .peers.common import pad_for, payload

# Shared counters per generator: [sum of publications, min per client, frames].
SLOTS = 3
# Receive buffer of a client that stops reading (the kernel doubles it).
SLOW_RCVBUF = 16 * 1024
NO_CLIENT = 1 << 62


class Generator:
    def __init__(self, index: int, conn: Connection, shared: Any) -> None:
        self.index = index
        self.conn = conn
        self.shared = shared
        self.clients: list[Client] = []
        self.slow: list[Client] = []
        self.publishers: list[Client] = []  # clients (among self.clients) that publish
        self.latency: array[float] = array("d")
        self._seq = 0
        self.done = asyncio.Event()
        self._commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # --- plumbing ---------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        # A blocking reader thread: the pipe must stay blocking for large messages.
        threading.Thread(target=self._read_commands, args=(loop,), daemon=True).start()
        publisher = asyncio.create_task(self._publish_counters())
        try:
            while not self.done.is_set():
                command = await self._commands.get()
                try:
                    reply = await self.handle(command)
                except Exception as e:
                    reply = {"error": f"{type(e).__name__}: {e}"}
                try:
                    self.conn.send(reply)
                except OSError:  # the orchestrator is gone
                    break
        finally:
            publisher.cancel()
            self._drop_all()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):
                command = {"op": "exit"}
            loop.call_soon_threadsafe(self._commands.put_nowait, command)
            if command.get("op") == "exit":
                return

    async def _publish_counters(self) -> None:
        base = self.index * SLOTS
        shared = self.shared
        while True:
            clients = self.clients
            if clients:
                total = 0
                least = 1 << 62
                frames = 0
                for c in clients:
                    n = c.count
                    total += n
                    if n < least:
                        least = n
                    frames += c.frames
                shared[base] = total
                shared[base + 1] = least
                shared[base + 2] = frames + sum(c.frames for c in self.slow)
            else:
                shared[base] = 0
                shared[base + 1] = 1 << 62  # no client here: no lower bound
                shared[base + 2] = sum(c.frames for c in self.slow)
            await asyncio.sleep(0.005)

    # --- commands ---------------------------------------------------------------

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "connect":
            return await self.connect(command)
        if op == "reset":
            self.latency = array("d")
            for c in self.clients:
                c.count = 0
                c.last = 0.0
                c.latency = self.latency if command.get("latency") else None
            base = self.index * SLOTS
            self.shared[base] = 0
            self.shared[base + 1] = 0 if self.clients else 1 << 62
            return {"ok": True}
        if op == "resume":
            for c in self.slow:
                c.resume()
            return {"ok": True}
        if op == "collect":
            return self.collect(command)
        if op == "drop":
            self._drop_all()
            await asyncio.sleep(0.05)
            return {"ok": True}
        if op == "positions":
            return {"positions": [(c.offset, c.epoch) for c in self.clients]}
        if op == "drive":
            return await self.drive(command)
        if op == "rtt":
            return await self.rtt(command)
        if op == "http":
            return await self.http(command)
        if op == "exit":
            self.done.set()
            return {"ok": True}
        raise ValueError(f"unknown op {op}")

    def _drop_all(self) -> None:
        for c in [*self.clients, *self.slow]:
            c.close()
        self.clients = []
        self.slow = []
        self.publishers = []

    async def connect(self, command: dict[str, Any]) -> dict[str, Any]:
        """Open clients, ``concurrency`` at a time; each one connects and subscribes."""
        url: str = command["url"]
        host = url.split("//", 1)[1].split(":", 1)[0]
        if not host.startswith("127."):
            raise ValueError("the benchmark only connects to loopback")
        dialect: str = command["dialect"]
        channels: list[str] = command["channels"]
        tokens: list[str] = command.get("tokens") or []
        recover: list[tuple[int, str]] | None = command.get("recover")
        fanout: list[int] | None = command.get("fanout")
        slow = bool(command.get("slow"))
        timeout = float(command.get("timeout", 30))
        headers = {}
        if command.get("deflate"):
            headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"
        sem = asyncio.Semaphore(int(command.get("concurrency", 100)))
        errors: Counter[str] = Counter()
        durations = array("d")
        new: list[Client | None] = [None] * len(channels)
        last_ok = 0.0

        async def one(i: int) -> None:
            nonlocal last_ok
            channel = channels[i]
            if dialect == "socketio":
                hello = socketio_hello(channel)
            else:
                hello = centrifugo_hello(tokens[i], channel, recover[i] if recover else None)
            async with sem:
                started = time.monotonic()
                client = Client(dialect, channel, hello, slow=slow)
                try:
                    async with asyncio.timeout(timeout):
                        await ws_connect(
                            lambda: client,
                            url,
                            extra_headers=headers,
                            websocket_handshake_timeout=timeout,
                            socket_factory=_slow_socket if slow else _socket,
                        )
                        await client.subscribed
                except Exception as e:
                    errors[type(e).__name__ + (f": {client.error}" if client.error else "")] += 1
                    client.close()
                    return
                last_ok = time.monotonic()
                durations.append(last_ok - started)
                if fanout is not None and fanout[i]:
                    client.fanout = fanout[i]
                new[i] = client

        t0 = time.monotonic()
        deadline = t0 + timeout + 5
        tasks = [asyncio.create_task(one(i)) for i in range(len(channels))]
        _done, pending = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
            errors["timeout"] += 1
        t1 = time.monotonic()
        ok = [c for c in new if c is not None]
        if slow:
            self.slow.extend(ok)
        else:
            self.clients.extend(ok)
            self.publishers.extend(c for c in ok if c.fanout)
        recovered = [c for c in ok if c.recovered]
        return {
            "ok": len(ok),
            "failed": len(channels) - len(ok),
            "errors": dict(errors),
            "t0": t0,
            "t1": t1,
            "last_ok": last_ok,
            "index": self.index,
            "publishers": sum(1 for c in ok if c.fanout),
            "deflate": sum(c.deflate for c in ok),
            "recovered": len(recovered),
            "recovered_messages": sum(c.recovered_count for c in ok),
            "connect_p50": _percentile(durations, 50),
            "connect_p99": _percentile(durations, 99),
        }

    def collect(self, command: dict[str, Any]) -> dict[str, Any]:
        expected = command.get("expected")
        clients = self.clients
        counts = [c.count for c in clients]
        closes = Counter(str(c.close_code) for c in clients if c.state is CLOSED)
        slow = [
            {
                "count": c.count,
                "bytes": c.bytes,
                "closed": c.state is CLOSED,
                "close_code": c.close_code,
            }
            for c in self.slow
        ]
        return {
            "clients": len(clients),
            "delivered": sum(counts),
            "min": min(counts, default=0),
            "max": max(counts, default=0),
            "short": sum(1 for n in counts if expected is not None and n < expected),
            "last": max((c.last for c in clients), default=0.0),
            "frames": sum(c.frames for c in clients),
            "bytes": sum(c.bytes for c in clients),
            "closes": dict(closes),
            "latency": _capped(self.latency, command.get("latency_cap")).tobytes()
            if command.get("latency")
            else b"",
            "latency_n": len(self.latency),
            "slow": slow,
            "cpu": _cpu(),
        }

    # --- clients that publish ---------------------------------------------------------

    def _least_everywhere(self, generators: int) -> int:
        """Publications received by the least-advanced client of every generator."""
        shared = self.shared
        least = NO_CLIENT
        for g in range(generators):
            least = min(least, shared[g * SLOTS + 1])
        return 0 if least == NO_CLIENT else int(least)

    async def drive(self, command: dict[str, Any]) -> dict[str, Any]:
        """Publish from this generator's publishers, round-robin, until a count or a time.

        ``mode`` "rate": open loop, ``rate`` publications/s in all, or from each
        publisher with ``per_client`` (spaced evenly, sent as they fall due:
        timers have 1 ms resolution).
        ``mode`` "window": closed loop, at most ``window`` publications ahead
        of the least-advanced client of all ``generators`` (shared counters).
        The payload carries the send time, as the in-process publisher's does.
        """
        publishers = [c for c in self.publishers if c.state is not CLOSED]
        if not publishers:
            raise ValueError("no publishing client here")
        random.Random(int(command.get("seed", 1))).shuffle(publishers)
        mode: str = command.get("mode", "rate")
        rate = float(command.get("rate", 100.0))
        window = int(command.get("window", 1000))
        generators = int(command.get("generators", 1))
        duration = float(command["duration"])
        max_messages = int(command.get("max_messages", 10_000_000))
        pad = pad_for(int(command.get("size", 100)))
        n_pub = len(publishers)
        errors_before = sum(c.command_errors for c in publishers)
        if command.get("per_client"):
            rate *= n_pub  # ``rate`` was each publisher's
        sent = expected = 0
        lag = 0.0
        window_stalled = False
        t0 = time.monotonic()
        deadline = t0 + duration
        while sent < max_messages:
            now = time.monotonic()
            if now >= deadline:
                break
            if mode == "window":
                window_stalled = sent - self._least_everywhere(generators) >= window
                if window_stalled:
                    await asyncio.sleep(0.0005)
                    continue
                budget = 1
            else:
                due = t0 + sent / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    now = time.monotonic()
                lag = max(lag, now - due)
                # Every publication due by now, at most 500 before receiving again.
                budget = min(500, max_messages - sent, int((now - t0) * rate) + 1 - sent)
            for _ in range(max(1, budget)):
                client = publishers[sent % n_pub]
                self._seq += 1
                if client.publish(payload(self._seq, pad)):
                    expected += client.fanout
                sent += 1
            await asyncio.sleep(0)
        t1 = time.monotonic()
        return {
            "sent": sent,
            "expected": expected,
            "t0": t0,
            "t1": t1,
            "lag_max": lag,
            "window_stalled": window_stalled,
            "publishers": n_pub,
            "publishers_closed": sum(1 for c in publishers if c.state is CLOSED),
            "command_errors": sum(c.command_errors for c in publishers) - errors_before,
        }

    async def rtt(self, command: dict[str, Any]) -> dict[str, Any]:
        """One client publishes and waits for its publication to come back, again and again.

        The publisher is this generator's first; the receiver (``receiver``,
        an index into its clients) is the publisher itself or, on two nodes, a
        client of the other node. ``gap`` seconds pass between a publication's
        arrival and the next publish (0: back-to-back).
        """
        publisher = self.publishers[0]
        receiver = self.clients[int(command.get("receiver", 0))]
        count = int(command["count"])
        warmup = int(command.get("warmup", 0))
        gap = float(command.get("gap", 0.0))
        timeout = float(command.get("timeout", 5.0))
        pad = pad_for(int(command.get("size", 100)))
        loop = asyncio.get_running_loop()
        errors_before = publisher.command_errors
        samples = array("d")
        gaps = array("d")
        waiting: list[asyncio.Future[float] | None] = [None]
        timeouts = 0

        def arrived(now: float) -> None:
            future = waiting[0]
            if future is not None and not future.done():
                future.set_result(now)

        receiver.on_pub = arrived
        t0 = time.monotonic()
        deadline = t0 + float(command["duration"])
        try:
            for i in range(warmup + count):
                if time.monotonic() > deadline:
                    break
                future: asyncio.Future[float] = loop.create_future()
                waiting[0] = future
                sent = time.monotonic()
                if not publisher.publish(payload(i, pad)):
                    break
                try:
                    async with asyncio.timeout(timeout):
                        got = await future
                except TimeoutError:
                    timeouts += 1
                    break
                if i >= warmup:
                    samples.append(got - sent)
                if gap:
                    g0 = time.monotonic()
                    await asyncio.sleep(gap)
                    gaps.append(time.monotonic() - g0)
        finally:
            receiver.on_pub = None
            waiting[0] = None
        return {
            "samples": samples.tobytes(),
            "timeouts": timeouts,
            "seconds": time.monotonic() - t0,
            "gap_mean": sum(gaps) / len(gaps) if gaps else 0.0,
            "command_errors": publisher.command_errors - errors_before,
        }

    async def http(self, command: dict[str, Any]) -> dict[str, Any]:
        """``clients`` keep-alive connections, each posting publications one after another."""
        host: str = command["host"]
        if not host.startswith("127."):
            raise ValueError("the benchmark only connects to loopback")
        port = int(command["port"])
        path: str = command["path"]
        headers: dict[str, str] = command.get("headers") or {}
        channel: str = command["channel"]
        n = int(command["clients"])
        timeout = float(command.get("timeout", 10.0))
        max_requests = int(command.get("max_requests", 10_000_000))
        pad = pad_for(int(command.get("size", 100)))
        prefix = b'{"channel":' + orjson.dumps(channel) + b',"data":'
        loop = asyncio.get_running_loop()
        latency = array("d")
        errors: Counter[str] = Counter()
        ok = 0
        started = 0
        connections: list[HttpConnection] = []
        for _ in range(n):
            try:
                async with asyncio.timeout(timeout):
                    _, conn = await loop.create_connection(HttpConnection, host, port)
                connections.append(conn)
            except (OSError, TimeoutError) as e:
                errors[f"connect: {type(e).__name__}"] += 1
        t0 = time.monotonic()
        deadline = t0 + float(command["duration"])

        async def worker(conn: HttpConnection) -> None:
            nonlocal ok, started
            while started < max_requests and time.monotonic() < deadline:
                started += 1
                self._seq += 1
                body = prefix + payload(self._seq, pad) + b"}"
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(timeout):
                        status, reply = await conn.request(post(host, port, path, headers, body))
                except (ConnectionError, TimeoutError) as e:
                    errors[type(e).__name__] += 1
                    return
                latency.append(time.monotonic() - sent)
                if status == 200 and b'"error"' not in reply:
                    ok += 1
                else:
                    errors[f"HTTP {status}"] += 1

        try:
            await asyncio.gather(*(worker(c) for c in connections))
        finally:
            for conn in connections:
                conn.close()
        return {
            "ok": ok,
            "errors": dict(errors),
            "t0": t0,
            "t1": time.monotonic(),
            "latency": latency.tobytes(),
            "connections": len(connections),
        }


def _socket(parsed: Any) -> socket.socket:
    """Every client socket: TCP_NODELAY, as the servers under test use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _slow_socket(parsed: Any) -> socket.socket:
    """A client that stops reading: a small receive buffer, as on a slow link.

    Without it the kernel alone would take megabytes (loopback buffers grow
    to tcp_rmem/tcp_wmem's maximum) before the server's queue sees anything.
    """
    sock = _socket(parsed)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    return sock


def _capped(samples: array[float], cap: int | None) -> array[float]:
    """At most ``cap`` samples, every k-th (the spread of a long run, not its start)."""
    if not cap or len(samples) <= cap:
        return samples
    step = -(-len(samples) // cap)
    return samples[::step]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: array[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def generator_main(index: int, conn: Connection, shared: Any) -> None:
    """Entry point of a generator process."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(Generator(index, conn, shared).serve())
    os._exit(0)
