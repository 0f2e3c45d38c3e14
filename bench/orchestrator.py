"""Processes: one server under test (a subprocess) and a pool of load generators.

Everything is bounded in time: every wait has a timeout, and a server that
does not answer is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil

from .loadgen import SLOTS, generator_main

HOST = "127.0.0.1"  # loopback only, always
ROOT = str(Path(__file__).resolve().parent.parent)  # the repository: bench/ is importable
NO_CLIENT = 1 << 62


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def cpu_seconds(ps: psutil.Process | None) -> float:
    """CPU time (user + system) a process has used so far; 0 when it is gone."""
    if ps is None:
        return 0.0
    try:
        times = ps.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class ServerProc:
    """One peer server in its own process, driven over stdin/stdout."""

    def __init__(
        self,
        peer: str,
        log_dir: Path,
        cpus: set[int] | None = None,
        *,
        broker: str | None = None,
        node: int = 0,
    ) -> None:
        self.peer = peer
        self.cpus = cpus
        self.broker = broker  # Tidings only: a redis:// URL (None: its memory broker)
        self.node = node  # 0, or 1 for the second node of a deployment on Redis
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.rss_peak = 0
        self._sampler: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        path = (
            "/socket.io/?EIO=4&transport=websocket"
            if self.peer == "socketio"
            else ("/connection/websocket")
        )
        return f"ws://{HOST}:{self.port}{path}"

    @property
    def dialect(self) -> str:
        return "socketio" if self.peer == "socketio" else "centrifugo"

    async def start(self, timeout: float = 30.0) -> None:
        name = self.peer + ("-redis" if self.broker else "")
        name += f"-node{self.node}" if self.node else ""
        log = open(os.path.join(self.log_dir, f"server-{name}.log"), "ab")  # noqa: ASYNC230
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        root = ROOT
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        broker = ["--broker", self.broker] if self.broker else []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.peers",
            self.peer,
            "--host",
            HOST,
            "--port",
            str(self.port),
            *broker,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=root,
            limit=1 << 20,
        )
        log.close()
        self._reader = asyncio.create_task(self._read_events())
        await self.wait_event("ready", timeout)
        self.ps = psutil.Process(self.proc.pid)
        if self.cpus:
            os.sched_setaffinity(self.proc.pid, self.cpus)

    async def _read_events(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.events.put({"event": "exit"})
                return
            with contextlib.suppress(orjson.JSONDecodeError):
                await self.events.put(orjson.loads(line))

    async def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.peer}: no {name!r} within {timeout:.0f}s")
            event = await asyncio.wait_for(self.events.get(), remaining)
            if event.get("event") == name:
                return event
            if event.get("event") == "exit":
                raise RuntimeError(f"{self.peer} server exited (see its log)")

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(command) + b"\n")

    async def request(self, command: dict[str, Any], reply: str, timeout: float = 10) -> Any:
        self.send(command)
        return await self.wait_event(reply, timeout)

    def rss(self) -> int:
        if self.ps is None:
            return 0
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    def cpu(self) -> float:
        return cpu_seconds(self.ps)

    def start_sampling(self, interval: float = 0.05) -> None:
        """Track the peak RSS until stop_sampling."""
        self.rss_peak = self.rss()

        async def sample() -> None:
            while True:
                self.rss_peak = max(self.rss_peak, self.rss())
                await asyncio.sleep(interval)

        self._sampler = asyncio.create_task(sample())

    def stop_sampling(self) -> int:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.rss_peak = max(self.rss_peak, self.rss())
        return self.rss_peak

    async def stop(self) -> None:
        """Kill the server: a run's results are taken already; shutdown is not measured."""
        self.stop_sampling()
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            self._reader.cancel()


class RedisProc:
    """A redis-server of the run's own (Debian's binary) on a free loopback port, no persistence."""

    BINARY = "/usr/bin/redis-server"

    def __init__(self, log_dir: Path, cpus: set[int] | None = None) -> None:
        self.log_dir = log_dir
        self.cpus = cpus
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    def binary(cls) -> str | None:
        found = shutil.which("redis-server")
        if found:
            return found
        return cls.BINARY if os.path.exists(cls.BINARY) else None

    async def start(self, timeout: float = 10.0) -> None:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self._dir = tempfile.TemporaryDirectory(prefix="tidings-bench-redis-")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            str(self.log_dir / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.ps = psutil.Process(self.proc.pid)
        if self.cpus:
            os.sched_setaffinity(self.proc.pid, self.cpus)
        deadline = time.monotonic() + timeout
        while not await self._ping():
            if self.proc.returncode is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer on port {self.port}")
            await asyncio.sleep(0.01)

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection(HOST, self.port)
                try:
                    writer.write(b"PING\r\n")
                    return (await reader.readline()).startswith(b"+PONG")
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return False

    def cpu(self) -> float:
        return cpu_seconds(self.ps)

    def rss(self) -> int:
        if self.ps is None:
            return 0
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _find_prctl() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()  # looked up here, so the child only calls it


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the benchmark dies (PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL))


class GeneratorPool:
    """Load generator processes (multiprocessing, spawn), reused across runs."""

    def __init__(self, processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.shared = ctx.RawArray("q", processes * SLOTS)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=generator_main, args=(i, child, self.shared), daemon=True, name=f"gen{i}"
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.ps = [psutil.Process(p.pid) for p in self.procs]
        self._executor = ThreadPoolExecutor(processes + 1, thread_name_prefix="gen-pipe")
        self._locks = [asyncio.Lock() for _ in range(processes)]

    def __len__(self) -> int:
        return len(self.conns)

    async def request(self, i: int, command: dict[str, Any], timeout: float = 120) -> Any:
        loop = asyncio.get_running_loop()
        async with self._locks[i]:  # one command at a time per generator
            self.conns[i].send(command)
            reply = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self.conns[i].recv), timeout
            )
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"generator {i}: {reply['error']}")
        return reply

    async def all(
        self, make: Callable[[int], dict[str, Any] | None], timeout: float = 120
    ) -> list[Any]:
        """Send each generator its command (None: skip it) and gather the replies."""
        jobs = []
        for i in range(len(self)):
            command = make(i)
            if command is not None:
                jobs.append(self.request(i, command, timeout))
        return list(await asyncio.gather(*jobs))

    def totals(self) -> tuple[int, int, int]:
        """(publications received, by the least-advanced client, frames) over all generators."""
        shared = self.shared
        total = least = frames = 0
        least = NO_CLIENT
        for i in range(len(self)):
            total += shared[i * SLOTS]
            least = min(least, shared[i * SLOTS + 1])
            frames += shared[i * SLOTS + 2]
        return total, (0 if least == NO_CLIENT else least), frames

    def cpu(self) -> float:
        total = 0.0
        for p in self.ps:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send({"op": "exit"})
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Deal items round-robin into ``parts`` lists."""
    return [items[i::parts] for i in range(parts)]
