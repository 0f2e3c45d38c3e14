"""Denial of service on the read path of ``/connection/websocket``, against ``tidings serve``.

One test per attack of docs/security.md ("WebSocket and HTTP read path"), each
run on both WebSocket paths (the direct one and uvicorn's over ASGI). The
contract, for every attack:

* the attacking connection is closed (close frame or HTTP status as the table
  says, then EOF) within ``CLOSE_WITHIN`` of its offending header or byte;
* a bystander client, subscribed to a channel that gets a publication every
  ``PERIOD``, sees no gap over ``MAX_GAP`` between two of them, and loses none;
* the server's RSS grows by less than ``MAX_RSS_GROWTH``.

How it is measured:

* The server is a ``tidings serve`` subprocess, so its RSS (psutil) is its
  own. One per path for the whole module; a failed test stops it, and the next
  test starts a fresh one: a stuck or bloated server never spoils the next row.
* The bystander *and its publisher* are another process: the attacker's own
  CPU use here (building and writing hundreds of thousands of frames) cannot
  delay a publication or its receipt, so a gap is the server's. The publisher
  posts to ``/api/publish`` on a fixed schedule; every publication received is
  a JSON line in a file, stamped with ``time.monotonic()`` (CLOCK_MONOTONIC,
  one clock for every process on the machine), which this process reads.
* Attackers write raw bytes on plain sockets (the loop's ``sock_*`` calls).
  The time an offending byte was written is taken just before the write that
  holds it. Where legal bytes come first (a fragmented message below the cap),
  they are written first, and a ping answered by a pong proves the server has
  read them before the offending part goes out. A reader task stamps every
  byte the server sends as it arrives: the close frame (or status line) and
  the EOF are timed from those stamps.
* Every attack runs ``WARM_UPS`` + 1 times in a row. The first runs warm the
  server's allocators up (glibc raises its mmap threshold and keeps freed heap;
  pymalloc keeps its arenas), which would otherwise count as growth: uvicorn's
  path, for one, keeps ~1.8 MiB after the first 65,000-fragment flood, ~0.8 MiB
  more after the second, and nothing after any further one. The RSS limit
  applies to the last run, from a baseline read just before it, against the peak
  sampled every few milliseconds during the attack (the end result for the
  500-socket attack, where holding 500 connections for the timeout
  legitimately costs memory). A leak still shows: it grows on every run. The
  close-time limit applies to every run.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil
import pytest

from tests.conftest import API_KEY, SECRET

try:  # websockets' C helper; its pure-Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

ROOT = Path(__file__).resolve().parents[2]

# --- the contract (docs/security.md) ---------------------------------------------

CLOSE_WITHIN = 0.1  # seconds from the offending byte to the close frame / status, and EOF
PERIOD = 0.1  # the bystander's channel gets a publication this often
MAX_GAP = 0.2  # longest the bystander may go without one
MAX_RSS_GROWTH = 1 << 20

# The limits the attacks run into, set explicitly (their defaults, but for the
# timeout, which the issue asks to shorten here).
MAX_MESSAGE_SIZE = 65536
MAX_FRAGMENTS = 128
MAX_REQUEST_HEAD_SIZE = 16 * 1024
MAX_REQUEST_HEADERS = 100
REQUEST_HEAD_TIMEOUT = 0.5

# Runs of each attack before the measured one (see the module's docstring).
WARM_UPS = 2

# How long to wait for an outcome before calling it missing. Far above the
# contract, so that a miss still reports what actually happened.
WAIT = 3.0
CHANNEL = "news"


# --- frames -----------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    length: int | None = None,
) -> bytes:
    """A masked client frame; ``length`` declares a length other than the payload's."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    mask = os.urandom(4)
    return bytes(head) + mask + apply_mask(payload, mask)


def server_frames(data: bytes, start: int) -> Iterator[tuple[int, bytes, int]]:
    """The complete frames the server sent from ``start``: (opcode, payload, end offset)."""
    position = start
    for _ in range(len(data)):
        if len(data) < position + 2:
            return
        b0, b1 = data[position], data[position + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if len(data) < position + 4:
                return
            (n,) = struct.unpack_from("!H", data, position + 2)
            head = 4
        elif n == 127:
            if len(data) < position + 10:
                return
            (n,) = struct.unpack_from("!Q", data, position + 2)
            head = 10
        mask = b""
        if b1 & 0x80:  # servers do not mask; a broken one might
            mask = data[position + head : position + head + 4]
            head += 4
        end = position + head + n
        if len(data) < end:
            return
        payload = data[position + head : end]
        yield b0 & 0x0F, apply_mask(payload, mask) if mask else payload, end
        position = end


def upgrade_request(port: int, extra: str = "") -> str:
    """An upgrade request to /connection/websocket, without its final empty line."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /connection/websocket HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{extra}"
    )


# --- an attacking connection ----------------------------------------------------------


@dataclass
class Closing:
    """How one attacking connection ended, timed from its offending byte."""

    what: str
    expected: int | None  # close code or HTTP status; None: anything, or nothing
    got: int | None  # the close code or HTTP status the server sent
    answered_after: float | None  # offending byte to close frame / status line
    closed_after: float | None  # offending byte to EOF (or reset)
    within: float = CLOSE_WITHIN

    def problems(self) -> list[str]:
        found = []
        if self.expected is not None:
            if self.got != self.expected:
                found.append(f"{self.what}: got {self.got}, expected {self.expected}")
            elif self.answered_after is None or self.answered_after > self.within:
                found.append(f"{self.what}: {self.expected} after {ms(self.answered_after)}")
        if self.closed_after is None or self.closed_after > self.within:
            found.append(f"{self.what}: connection closed after {ms(self.closed_after)}")
        return found


def ms(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds * 1000:.1f} ms"


class Peer:
    """A raw TCP connection to the server; a reader task stamps what arrives.

    Reads and writes go straight to the socket (``sock_recv``, ``sock_sendall``),
    not through a stream: a write that fails because the server hung up must not
    discard what the server sent before it (an asyncio stream raises the error
    on the next read, losing its buffer). The socket still gives that data,
    then EOF or the reset.
    """

    def __init__(self, sock: socket.socket, connecting_at: float) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.connecting_at = connecting_at  # the server cannot have accepted earlier
        self.data = bytearray()
        # (bytes received so far, when): the time each offset arrived.
        self.arrivals: list[tuple[int, float]] = []
        self.upgraded = False  # what arrives is WebSocket frames
        self.ended_at: float | None = None
        self.reset = False
        self._task: asyncio.Task[None] | None = None
        self._pings = 0

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        connecting_at = time.monotonic()
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), WAIT
            )
        except BaseException:
            sock.close()
            raise
        return cls(sock, connecting_at)

    @classmethod
    async def websocket(cls, port: int, extra: str = "", **kwargs: Any) -> tuple[Peer, str]:
        """Open and upgrade; also the response's head. Nothing more is read until ``watch``."""
        self = await cls.open(port, **kwargs)
        try:
            await self.send((upgrade_request(port, extra) + "\r\n").encode())
            received = bytearray()
            for _ in range(100):
                chunk = await asyncio.wait_for(self._recv(), WAIT)
                assert chunk, f"no upgrade: {received[:200]!r}"
                received += chunk
                if b"\r\n\r\n" in received:
                    break
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), f"upgrade refused: {head[:200]!r}"
        except BaseException:
            self.abort()
            raise
        self.upgraded = True
        if rest:
            self._arrived(rest)
        return self, head.decode("latin-1")

    def _recv(self) -> Awaitable[bytes]:
        return asyncio.get_running_loop().sock_recv(self.sock, 1 << 16)

    def _arrived(self, chunk: bytes) -> None:
        self.data += chunk
        self.arrivals.append((len(self.data), time.monotonic()))

    def watch(self) -> Peer:
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            for _ in range(1 << 20):  # bounded: ends at EOF, or when aborted
                chunk = await self._recv()
                if not chunk:
                    break
                self._arrived(chunk)
        except ConnectionError:
            self.reset = True
        self.ended_at = time.monotonic()

    async def send(self, data: bytes, timeout: float = WAIT) -> float:
        """Write ``data`` (unless the server hung up or stopped reading); when it began."""
        began = time.monotonic()
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_sendall(self.sock, data), timeout
            )
        except (OSError, TimeoutError):
            pass  # what the server answered, if anything, tells
        return began

    async def stream(self, data: bytes, chunk: int = 1 << 16) -> float:
        """Write ``data`` a chunk at a time until the server hangs up; when it began.

        Between chunks the reader task runs, so the server's answer is stamped
        when it comes, not when megabytes of writing are over.
        """
        began = time.monotonic()
        view = memoryview(data)
        for start in range(0, len(data), chunk):
            if self.ended_at is not None:
                break
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.sock_sendall(self.sock, view[start : start + chunk]), WAIT
                )
            except (OSError, TimeoutError):
                break
            await asyncio.sleep(0)
        return began

    async def ended(self, timeout: float = WAIT) -> bool:
        """Wait (up to ``timeout``) for EOF or a reset."""
        assert self._task is not None
        await asyncio.wait({self._task}, timeout=timeout)
        return self._task.done()

    def arrived_at(self, offset: int) -> float | None:
        """When the byte before ``offset`` had arrived."""
        for total, at in self.arrivals:
            if total >= offset:
                return at
        return None

    def frames(self) -> Iterator[tuple[int, bytes, int]]:
        return server_frames(bytes(self.data), 0)

    async def barrier(self) -> None:
        """Ping, and wait for the pong: the server has read all that was sent before.

        The ping is empty: a payload would count against the size of a message
        in progress with uvicorn's websockets (1009 at exactly the limit).
        """
        self._pings += 1
        await self.send(frame(OP_PING))

        def answered() -> bool:
            pongs = 0
            for opcode, payload, _ in self.frames():
                pongs += opcode == OP_PONG
                if opcode == OP_CLOSE:
                    raise AssertionError(f"closed before the offending byte: {close_code(payload)}")
            return pongs >= self._pings

        assert await until(answered, WAIT), "no pong to the barrier ping"

    async def closing(
        self,
        what: str,
        offending_at: float,
        expected: int | None,
        wait: float = WAIT,
        within: float = CLOSE_WITHIN,
    ) -> Closing:
        """Wait for the end of the connection; time its close frame (or status) and EOF."""
        await self.ended(wait)
        got: int | None = None
        answered: float | None = None
        if not self.upgraded:  # an HTTP response, if any
            line_end = self.data.find(b"\r\n")
            if self.data.startswith(b"HTTP/") and line_end > 0:
                got = int(self.data[:line_end].split(b" ")[1])
                answered = self.arrived_at(line_end + 2)
        else:
            for opcode, payload, end in self.frames():
                if opcode == OP_CLOSE:
                    got = close_code(payload)
                    answered = self.arrived_at(end)
                    break
        return Closing(
            what,
            expected,
            got,
            None if answered is None else answered - offending_at,
            None if self.ended_at is None else self.ended_at - offending_at,
            within,
        )

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


async def until(predicate: Callable[[], Any], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(interval)
    return bool(predicate())


# --- the server -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, direct: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        PYTHONUNBUFFERED="1",
        TIDINGS_SECRET=SECRET,
        TIDINGS_API_KEY=API_KEY,
        TIDINGS_ALLOW_ANONYMOUS="true",
        TIDINGS_DATA_DIR=str(data_dir),
        TIDINGS_LOG_LEVEL="warning",
        TIDINGS_WEB_APP="false",
        TIDINGS_WEBSOCKET_DIRECT="true" if direct else "false",
        # No history: nothing grows in the server while the bystander listens.
        TIDINGS_DEFAULT_NAMESPACE=json.dumps({"allow_subscribe_for_anonymous": True}),
        TIDINGS_MAX_MESSAGE_SIZE=str(MAX_MESSAGE_SIZE),
        TIDINGS_WEBSOCKET_MAX_FRAGMENTS=str(MAX_FRAGMENTS),
        TIDINGS_MAX_REQUEST_HEAD_SIZE=str(MAX_REQUEST_HEAD_SIZE),
        TIDINGS_MAX_REQUEST_HEADERS=str(MAX_REQUEST_HEADERS),
        TIDINGS_REQUEST_HEAD_TIMEOUT=str(REQUEST_HEAD_TIMEOUT),
    )
    return env


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """``until`` for the synchronous start-up code."""
    deadline = time.monotonic() + timeout
    for _ in range(math.ceil(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    return bool(predicate())


SERVE = (sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1")


class Server:
    """``tidings serve`` in a process of its own."""

    def __init__(self, workdir: Path, direct: bool) -> None:
        self.log = workdir / "serve.log"
        env = server_env(workdir / "data", direct)
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(3):  # another process may take the free port first: then another
            self.port = free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [*SERVE, "--port", str(self.port)],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if wait_until(lambda: not self.alive() or self.healthy(), 30) and self.alive():
                break
            self.stop()
        else:
            raise AssertionError(f"serve did not start: {self.output()}")
        self.ps = psutil.Process(self.proc.pid)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.http_url}/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def holds(self, ports: set[int]) -> int:
        """How many sockets the server still has whose peer is one of our ``ports``."""
        return sum(
            1
            for c in self.ps.net_connections(kind="tcp4")
            if c.raddr and c.raddr.port in ports and c.status != psutil.CONN_LISTEN
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class RssPeak:
    """The server's RSS, sampled from a thread while an attack runs."""

    ps: psutil.Process
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        for _ in range(1_000_000):  # bounded; ends when told
            try:
                self.samples.append(int(self.ps.memory_info().rss))
            except psutil.Error:
                return
            if self._stop.wait(0.002):
                return

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    def __enter__(self) -> RssPeak:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- the bystander, in a process of its own ----------------------------------------

MAX_PUBLICATIONS = 6000  # ten minutes' worth: the bystander process never outlives that


def bystander_process(ws_url: str, http_url: str, out_path: str) -> None:
    """The bystander process (see ``Bystander``): runs until its stdin closes."""

    def parent_gone() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=parent_gone, daemon=True).start()
    with open(out_path, "a", buffering=1) as out:
        asyncio.run(bystander_main(ws_url, http_url, out))


async def bystander_main(ws_url: str, http_url: str, out: TextIO) -> None:
    """Subscribe to CHANNEL, publish to it every PERIOD, write a line per publication received."""
    # Imported here: only the bystander process needs them.
    from websockets.exceptions import ConnectionClosed

    from tests.integration.wsclient import ws_client

    sent: dict[int, tuple[float, float]] = {}

    def note(**fields: Any) -> None:
        out.write(json.dumps(fields) + "\n")

    async with (
        ws_client(ws_url) as client,
        httpx.AsyncClient(base_url=http_url, headers={"X-API-Key": API_KEY}) as http,
    ):
        await client.connect()
        await client.subscribe(CHANNEL)
        in_flight: set[asyncio.Task[None]] = set()

        async def publish(n: int) -> None:
            try:
                response = await http.post(
                    "/api/publish", json={"channel": CHANNEL, "data": {"n": n}}, timeout=5
                )
                if response.status_code != 200 or "error" in response.json():
                    note(at=time.monotonic(), error=f"publish {n}: {response.text[:200]}")
            except httpx.HTTPError as e:
                note(at=time.monotonic(), error=f"publish {n}: {e!r}")

        async def publisher() -> None:
            start = time.monotonic()
            for n in range(MAX_PUBLICATIONS):
                due = start + n * PERIOD
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                now = time.monotonic()
                sent[n] = (now, now - due)
                # Each in a task of its own: a slow answer never delays the next.
                task = asyncio.create_task(publish(n))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

        publishing = asyncio.create_task(publisher())
        try:
            for _ in range(MAX_PUBLICATIONS * 10):
                try:
                    message = await client.recv(timeout=1.0)
                except TimeoutError:
                    continue
                now = time.monotonic()
                push = message.get("push", {})
                if push.get("channel") != CHANNEL or "pub" not in push:
                    continue
                n = push["pub"]["data"]["n"]
                at, late = sent.get(n, (now, 0.0))
                note(n=n, sent=at, late=late, recv=now)
                if n >= MAX_PUBLICATIONS - 1:
                    break
        except ConnectionClosed as e:
            note(at=time.monotonic(), error=f"the bystander was disconnected: {e}")
        finally:
            publishing.cancel()


@dataclass
class Window:
    """What the bystander saw around an attack."""

    received: int
    max_gap: float
    lost: list[int]
    max_latency: float  # publish request sent to publication received
    max_late: float  # the publisher's own lateness: a starved bystander, not the server
    errors: list[str]

    def problems(self) -> list[str]:
        found = [f"bystander: {e}" for e in self.errors[:3]]
        if len(self.errors) > 3:
            found.append(f"bystander: {len(self.errors) - 3} more errors")
        if self.max_gap > MAX_GAP:
            found.append(f"bystander: a gap of {ms(self.max_gap)} between publications")
        if self.lost:
            found.append(f"bystander: publications {self.lost[:10]} never arrived")
        return found

    def __str__(self) -> str:
        return (
            f"bystander: {self.received} publications, max gap {ms(self.max_gap)}, "
            f"max latency {ms(self.max_latency)}, lost {len(self.lost)}, "
            f"publisher late by up to {ms(self.max_late)}"
        )


class Bystander:
    """The bystander process and the file it writes."""

    def __init__(self, workdir: Path, server: Server) -> None:
        self.out = workdir / "bystander.jsonl"
        self.log = workdir / "bystander.log"
        self.out.write_text("")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys\n"
                    "from tests.integration.test_websocket_dos import bystander_process\n"
                    "bystander_process(*sys.argv[1:])",
                    server.ws_url,
                    server.http_url,
                    str(self.out),
                ],
                cwd=ROOT,
                env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
            )

    def lines(self) -> list[dict[str, Any]]:
        text = self.out.read_text()
        return [json.loads(line) for line in text.split("\n")[:-1] if line]

    def receipts_after(self, since: float) -> list[dict[str, Any]]:
        return [r for r in self.lines() if "recv" in r and r["recv"] > since]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def window(self, start: float, attacks_over: float) -> Window:
        """From the first publication after ``start`` to the third after ``attacks_over``."""
        await until(lambda: self.receipts_after(start), 2 * MAX_GAP + WAIT)
        await until(lambda: len(self.receipts_after(attacks_over)) >= 3, 3 * PERIOD + WAIT)
        now = time.monotonic()
        lines = self.lines()
        receipts = sorted((r for r in lines if "recv" in r and r["recv"] > start), key=_recv)
        after = [r for r in receipts if r["recv"] > attacks_over]
        end = after[2]["recv"] if len(after) >= 3 else now
        receipts = [r for r in receipts if r["recv"] <= end]
        times = [r["recv"] for r in receipts] + ([] if len(after) >= 3 else [now])
        gaps = [b - a for a, b in itertools.pairwise(times)]
        numbers = {r["n"] for r in receipts}
        lost = sorted(set(range(min(numbers), max(numbers) + 1)) - numbers) if numbers else []
        return Window(
            received=len(receipts),
            max_gap=max(gaps, default=now - start),
            lost=lost,
            max_latency=max((r["recv"] - r["sent"] for r in receipts), default=math.inf),
            max_late=max((r["late"] for r in receipts), default=0.0),
            errors=[line["error"] for line in lines if "error" in line and line["at"] > start],
        )

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the bystander exits when its stdin closes
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _recv(line: dict[str, Any]) -> float:
    return float(line["recv"])


# --- the stage: server, bystander, and the attacks' harness ------------------------


@dataclass
class Result:
    """One run of an attack: the sockets it used, how they ended, what else went wrong."""

    ports: set[int]
    closings: list[Closing] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def all_problems(self) -> list[str]:
        missed = [p for c in self.closings for p in c.problems()]
        if len(missed) > 5:  # 500 connections may miss alike
            missed = [*missed[:5], f"... and {len(missed) - 5} more like these"]
        return self.problems + missed

    def summary(self) -> str:
        parts = []
        if self.closings:
            codes = sorted({str(c.got) for c in self.closings})
            answered = [c.answered_after for c in self.closings]
            closed = [c.closed_after for c in self.closings]
            parts.append(f"{len(self.closings)} connection(s), got {'/'.join(codes)}")
            parts.append(f"answered after {_span(answered)}")
            parts.append(f"closed after {_span(closed)}")
        return "; ".join(parts + self.notes)


def _span(values: Sequence[float | None]) -> str:
    if any(v is None for v in values):
        return "never (some)"
    known = [v for v in values if v is not None]
    low, high = min(known), max(known)
    return ms(high) if len(known) == 1 else f"{ms(low)}..{ms(high)}"


Attack = Callable[["Server"], Awaitable[Result]]


async def released_by(server: Server, ports: set[int]) -> bool:
    """Wait until the server holds none of the attacker's sockets."""
    return await until(lambda: not server.holds(ports), WAIT)


class Stage:
    """One server (one WebSocket path) and its bystander; started again when broken."""

    def __init__(self, workdir: Path, direct: bool) -> None:
        self.workdir = workdir
        self.direct = direct
        self.path = "direct" if direct else "asgi"
        self.server: Server | None = None
        self.bystander: Bystander | None = None

    def ready(self) -> None:
        """Start the server and bystander, unless both run and the bystander is served."""
        if self.server and self.bystander and self.server.alive() and self.bystander.alive():
            since = time.monotonic()
            if wait_until(lambda: self._received_after(since), 2 * MAX_GAP):
                return
        self.stop()
        self.server = Server(self.workdir, self.direct)
        self.bystander = Bystander(self.workdir, self.server)
        since = time.monotonic()
        assert wait_until(lambda: self._received_after(since), 30), (
            f"the bystander receives nothing: {self.bystander.output()}"
        )

    def _received_after(self, since: float) -> bool:
        assert self.bystander is not None
        if not self.bystander.alive():
            raise AssertionError(f"the bystander exited: {self.bystander.output()}")
        return bool(self.bystander.receipts_after(since))

    def stop(self) -> None:
        if self.bystander is not None:
            self.bystander.stop()
            self.bystander = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    async def trial(self, name: str, attack: Attack, *, rss: str = "peak") -> None:
        """Run ``attack`` (warm-ups, then measured) with the bystander watching; check all."""
        server, bystander = self.server, self.bystander
        assert server is not None and bystander is not None
        start = time.monotonic()
        assert await until(lambda: bystander.receipts_after(start), 2 * MAX_GAP + WAIT)
        report = [f"{name} [{self.path}]"]
        problems: list[str] = []
        for run in [*(f"warm-up {n + 1}" for n in range(WARM_UPS)), "measured"]:
            baseline = server.rss()
            with RssPeak(server.ps) as sampled:
                result = await attack(server)
                released = await released_by(server, result.ports)
            final = server.rss()
            peak = max(sampled.peak, final)
            report.append(
                f"  {run}: {result.summary()}; RSS {baseline / 2**20:.1f} MiB, peak "
                f"{(peak - baseline) / 1024:+.0f} KiB, after {(final - baseline) / 1024:+.0f} KiB"
            )
            run_problems = result.all_problems()
            if not released:
                held = server.holds(result.ports)
                run_problems.append(f"the server still holds {held} attacking socket(s)")
            growth = (peak if rss == "peak" else final) - baseline
            if run == "measured" and growth >= MAX_RSS_GROWTH:
                run_problems.append(f"RSS grew by {growth / 1024:.0f} KiB ({rss})")
            problems += [f"{run}: {p}" for p in run_problems]
            if run_problems:
                break  # a server that failed once may be stuck: no more runs
        window = await bystander.window(start, time.monotonic())
        report.append(f"  {window}")
        problems += window.problems()
        if not server.alive():
            problems.append(f"the server exited: {server.output()}")
        text = "\n".join(report)
        print(text)
        assert not problems, text + "\nproblems:\n  " + "\n  ".join(problems[:30])


@pytest.fixture(scope="module", params=["direct", "asgi"])
def path_stage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stage]:
    stage = Stage(tmp_path_factory.mktemp(f"dos-{request.param}"), request.param == "direct")
    try:
        yield stage
    finally:
        stage.stop()


@pytest.fixture
async def stage(path_stage: Stage, request: pytest.FixtureRequest) -> AsyncIterator[Stage]:
    failed = request.session.testsfailed
    await asyncio.to_thread(path_stage.ready)
    yield path_stage
    # The session counts failures as their reports come in, before teardown.
    if request.session.testsfailed > failed:
        # The server may be stuck or bloated after a failed attack: the next test
        # starts a fresh one rather than inheriting it.
        await asyncio.to_thread(path_stage.stop)


# --- the attacks --------------------------------------------------------------------


async def fragment_flood(server: Server, count: int, payload: bytes) -> Result:
    """A text frame without FIN, then ``count`` continuations carrying ``payload`` each."""
    peer, _ = await Peer.websocket(server.port)
    peer.watch()
    try:
        # Up to the cap (MAX_FRAGMENTS fragments, the first included) is legal.
        legal = frame(OP_TEXT, payload, fin=False) + b"".join(
            frame(OP_CONT, payload, fin=False) for _ in range(MAX_FRAGMENTS - 1)
        )
        rest = b"".join(
            frame(OP_CONT, payload, fin=False) for _ in range(count - MAX_FRAGMENTS + 1)
        )
        await peer.send(legal)
        await peer.barrier()
        offending_at = await peer.stream(rest)  # its first frame is one fragment too many
        closing = await peer.closing("fragment flood", offending_at, 1009)
        return Result({peer.port}, [closing], notes=[f"{len(legal) + len(rest)} bytes"])
    finally:
        peer.abort()


async def test_fragment_flood_is_closed_at_the_cap(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        return await fragment_flood(server, 65_000, b"x")

    await stage.trial("65,000 one-byte continuation frames", attack)


async def test_empty_continuation_flood_is_closed_at_the_cap(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        return await fragment_flood(server, 100_000, b"")

    await stage.trial("100,000 zero-length continuation frames", attack)


async def test_ping_declaring_a_gibibyte_is_closed_after_its_header(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        peer, _ = await Peer.websocket(server.port)
        peer.watch()
        try:
            offending_at = await peer.send(frame(OP_PING, length=1 << 30))
            await peer.stream(os.urandom(1 << 16) * 128)  # 8 MiB of what it promised
            closing = await peer.closing("ping declaring 1 GiB", offending_at, 1009)
            return Result({peer.port}, [closing])
        finally:
            peer.abort()

    await stage.trial("a ping whose header declares 1 GiB", attack)


async def test_huge_cookie_gets_431(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        peer = (await Peer.open(server.port)).watch()
        try:
            head = (upgrade_request(server.port) + "Cookie: session=").encode()
            legal = MAX_REQUEST_HEAD_SIZE - len(head)  # the head is legal up to the limit
            await peer.send(head + b"a" * legal)
            offending_at = await peer.stream(b"a" * (10 * 2**20 - legal) + b"\r\n\r\n")
            closing = await peer.closing("10 MiB cookie", offending_at, 431)
            return Result({peer.port}, [closing])
        finally:
            peer.abort()

    await stage.trial("an upgrade request with a 10 MiB cookie", attack)


async def test_too_many_header_lines_get_431(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        peer = (await Peer.open(server.port)).watch()
        try:
            head = upgrade_request(server.port)
            lines = head.count("\r\n") - 1  # not the request line
            legal = "".join(f"X-Pad-{i}: {i}\r\n" for i in range(MAX_REQUEST_HEADERS - lines))
            # 200 more short lines and the end of the head: far under the size limit.
            more = "".join(f"X-More-{i}: {i}\r\n" for i in range(200)) + "\r\n"
            assert len(head + legal + more) < MAX_REQUEST_HEAD_SIZE // 2
            await peer.send((head + legal).encode())
            offending_at = await peer.send(more.encode())
            closing = await peer.closing("300 header lines", offending_at, 431)
            return Result({peer.port}, [closing])
        finally:
            peer.abort()

    await stage.trial("an upgrade request with 300 header lines", attack)


async def test_unfinished_requests_are_closed_after_the_head_timeout(stage: Stage) -> None:
    request = (upgrade_request(12345) + "\r\n").encode()
    half = request[: len(request) // 2]

    async def attack(server: Server) -> Result:
        opened = await asyncio.gather(
            *(Peer.open(server.port) for _ in range(500)), return_exceptions=True
        )
        peers = [p for p in opened if isinstance(p, Peer)]
        try:
            assert len(peers) == 500, [e for e in opened if not isinstance(e, Peer)][:3]
            sent = [await peer.watch().send(half) for peer in peers]
            await until(
                lambda: all(p.ended_at is not None for p in peers), REQUEST_HEAD_TIMEOUT + WAIT
            )
            # The offending moment is the timeout's end, counted from the request's
            # first byte at the latest (as the closings are timed), or from the
            # connection at the earliest: nothing may close before that.
            # 500 deadlines fall together, and this one client times 500 sockets
            # in one Python loop: twice the usual margin, for this row only.
            closings = [
                await peer.closing(
                    "unfinished request",
                    at + REQUEST_HEAD_TIMEOUT,
                    None,
                    wait=0,
                    within=2 * CLOSE_WITHIN,
                )
                for peer, at in zip(peers, sent, strict=True)
            ]
            early = [
                p
                for p in peers
                if p.ended_at is not None and p.ended_at < p.connecting_at + REQUEST_HEAD_TIMEOUT
            ]
            problems = [f"{len(early)} closed before the timeout"] if early else []
            statuses = sorted({str(c.got) for c in closings})
            return Result(
                {p.port for p in peers}, closings, problems, [f"statuses {'/'.join(statuses)}"]
            )
        finally:
            for peer in peers:
                peer.abort()

    # 500 open connections cost memory while they last: the limit is on what is
    # left once they are closed.
    await stage.trial("500 sockets sending half an upgrade request", attack, rss="final")


def unread_by_server(server_port: int, peer_port: int) -> int | None:
    """Bytes in the server's receive queue for the connection from ``peer_port`` (Linux)."""
    local, remote = f":{server_port:04X}", f":{peer_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(local) and fields[2].endswith(remote):
                return int(fields[4].split(":")[1], 16)
    return None


async def test_ping_flood_from_a_client_that_never_reads_is_not_buffered(stage: Stage) -> None:
    pings = 100_000
    batch = 1000

    async def attack(server: Server) -> Result:
        # A small receive buffer, and nothing read after the upgrade: the pongs
        # back up in the server, not in this process or its kernel.
        peer, _ = await Peer.websocket(server.port, rcvbuf=4096)
        try:
            pings_frames = b"".join(frame(OP_PING, b"p" * 125) for _ in range(batch))
            loop = asyncio.get_running_loop()
            taken = 0
            for _ in range(pings // batch):
                try:
                    await asyncio.wait_for(loop.sock_sendall(peer.sock, pings_frames), 1.0)
                except TimeoutError:
                    break  # the kernels' buffers are full: the server stopped reading
                taken += batch
            # Stay connected until the server has read all it will: its receive
            # queue is empty, or stays as it is (it stopped reading). Meanwhile
            # the RSS is sampled: whatever it keeps for this client shows.
            unread: list[int] = []
            for _ in range(int(WAIT / 0.05)):
                unread.append(unread_by_server(server.port, peer.port) or 0)
                if unread[-1] == 0 or unread[-6:] == [unread[-1]] * 6:
                    break
                await asyncio.sleep(0.05)
            state = (
                f"the server stopped reading with {unread[-1]} bytes unread"
                if unread[-1]
                else "the server read them all"
            )
            notes = [f"{taken} of {pings} pings taken by the kernels; {state}"]
            return Result({peer.port}, notes=notes)
        finally:
            peer.abort()

    # The contract: pongs are never buffered without limit. Whether the server
    # stops reading (pongs it cannot write) or keeps reading (pongs it need not
    # write: one per read answers every ping before it), its RSS tells.
    await stage.trial("100,000 pings from a client that never reads", attack)


CLOSE_CASES = [
    ("close with a 1-byte payload", b"\x03", 1002),
    *((f"close code {c}", struct.pack("!H", c), 1002) for c in (0, 999, 1004, 1005, 1006)),
    *((f"close code {c}", struct.pack("!H", c), 1002) for c in (1015, 1016, 2999, 5000)),
    ("close reason not UTF-8", struct.pack("!H", 1000) + b"\xff\xfe", 1007),
]


async def test_invalid_close_frames_get_1002_or_1007(stage: Stage) -> None:
    async def attack(server: Server) -> Result:
        result = Result(set())
        for what, payload, expected in CLOSE_CASES:
            peer, _ = await Peer.websocket(server.port)
            peer.watch()
            result.ports.add(peer.port)
            try:
                offending_at = await peer.send(frame(OP_CLOSE, payload))
                result.closings.append(await peer.closing(what, offending_at, expected))
            finally:
                peer.abort()
        return result

    await stage.trial("invalid close frames", attack)


async def test_rsv1_on_a_continuation_gets_1002(stage: Stage) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(b'{"id": 1, "connect": {}}') + compressor.flush(zlib.Z_SYNC_FLUSH)
    data = data.removesuffix(b"\x00\x00\xff\xff")

    async def attack(server: Server) -> Result:
        peer, head = await Peer.websocket(
            server.port, "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        )
        peer.watch()
        try:
            assert "permessage-deflate" in head.lower(), f"deflate not negotiated: {head}"
            await peer.send(frame(OP_TEXT, data[:4], fin=False, rsv1=True))  # legal: the first
            await peer.barrier()
            offending_at = await peer.send(frame(OP_CONT, data[4:], rsv1=True))
            closing = await peer.closing("RSV1 on a continuation", offending_at, 1002)
            return Result({peer.port}, [closing])
        finally:
            peer.abort()

    await stage.trial("RSV1 on a continuation frame, deflate on", attack)


async def test_megabyte_message_is_closed_with_1009_at_once(stage: Stage) -> None:
    message = b"x" * 2**20
    chunk = 16 * 1024

    async def attack(server: Server) -> Result:
        result = Result(set())
        # In one frame, whose header is the offending part.
        peer, _ = await Peer.websocket(server.port)
        peer.watch()
        result.ports.add(peer.port)
        try:
            offending_at = await peer.stream(frame(OP_TEXT, message))
            result.closings.append(await peer.closing("1 MiB in one frame", offending_at, 1009))
        finally:
            peer.abort()
        # In 16 KiB fragments: legal up to the size limit; the next fragment is not.
        peer, _ = await Peer.websocket(server.port)
        peer.watch()
        result.ports.add(peer.port)
        try:
            pieces = [message[i : i + chunk] for i in range(0, len(message), chunk)]
            frames = [
                frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)
                for i, piece in enumerate(pieces)
            ]
            legal = MAX_MESSAGE_SIZE // chunk
            await peer.send(b"".join(frames[:legal]))
            await peer.barrier()
            offending_at = await peer.stream(b"".join(frames[legal:]))
            result.closings.append(
                await peer.closing("1 MiB in 16 KiB fragments", offending_at, 1009)
            )
        finally:
            peer.abort()
        return result

    await stage.trial("a 1 MiB message", attack)
