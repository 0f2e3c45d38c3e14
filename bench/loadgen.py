"""A load generator process: many client connections on one uvloop, driven over a pipe.

The orchestrator sends commands (dicts) through a ``multiprocessing`` pipe and
gets one reply per command. While clients receive, the process keeps three
numbers in shared memory for the orchestrator's flow control: publications
received by all its clients, by its least-advanced client, and frames received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import threading
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from picows import ws_connect

from .client import CLOSED, Client, centrifugo_hello, socketio_hello

# Shared counters per generator: [sum of publications, min per client, frames].
SLOTS = 3
# Receive buffer of a client that stops reading (the kernel doubles it).
SLOW_RCVBUF = 16 * 1024


class Generator:
    def __init__(self, index: int, conn: Connection, shared: Any) -> None:
        self.index = index
        self.conn = conn
        self.shared = shared
        self.clients: list[Client] = []
        self.slow: list[Client] = []
        self.latency: array[float] = array("d")
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
        if op == "exit":
            self.done.set()
            return {"ok": True}
        raise ValueError(f"unknown op {op}")

    def _drop_all(self) -> None:
        for c in [*self.clients, *self.slow]:
            c.close()
        self.clients = []
        self.slow = []

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
        slow = bool(command.get("slow"))
        timeout = float(command.get("timeout", 30))
        headers = {}
        if command.get("deflate"):
            headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"
        sem = asyncio.Semaphore(int(command.get("concurrency", 100)))
        errors: Counter[str] = Counter()
        durations = array("d")
        new: list[Client | None] = [None] * len(channels)

        async def one(i: int) -> None:
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
                durations.append(time.monotonic() - started)
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
        recovered = [c for c in ok if c.recovered]
        return {
            "ok": len(ok),
            "failed": len(channels) - len(ok),
            "errors": dict(errors),
            "t0": t0,
            "t1": t1,
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
            "latency": self.latency.tobytes() if command.get("latency") else b"",
            "slow": slow,
            "cpu": _cpu(),
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
