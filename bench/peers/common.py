"""What every peer shares: the wire format of a publication, the control channel, the publisher.

Control commands arrive as JSON lines on stdin; events go out as JSON lines on
stdout. Commands:

- ``{"cmd": "publish", ...}`` starts the publisher (see :class:`PublishSpec`).
- ``{"cmd": "ack", "n": N}``: the generators have N publications fully
  delivered; a windowed publisher keeps at most ``window`` beyond that.
- ``{"cmd": "stats"}`` answers ``{"event": "stats", ...}`` with the peer's counters.
- ``{"cmd": "gc"}`` runs a full collection and answers ``{"event": "gc"}``.
- ``{"cmd": "watch_slow"}``: the peer reports ``{"event": "slow_disconnect"}``
  once it has disconnected a client for being slow (only Tidings does).
- ``{"cmd": "stop"}`` (or stdin closing) ends the process.

Publications also come from clients (issue 12): a client sends the
Centrifugo ``publish`` command, ``{"id":N,"publish":{"channel":C,"data":D}}``,
one per frame, and gets the reply ``{"id":N,"publish":{}}``; and from HTTP,
``POST /api/publish`` with the header ``X-API-Key`` and the body
``{"channel":C,"data":D}``, answered ``{"result":{}}``. Every peer accepts both.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

# The server API's key (Tidings' api_key in the benchmark; the other peers check the same).
API_KEY = "bench"
PUBLISH_PATH = "/api/publish"

# publish(channel, data, seq): data is the publication's JSON payload, encoded once.
PublishFn = Callable[[str, bytes, int], Awaitable[None] | None]
StatsFn = Callable[[], dict[str, Any]]

# Every scenario's payload: {"t": send time (monotonic, system-wide on Linux), "s": seq, "p": pad}.
PAYLOAD_OVERHEAD = len(orjson.dumps({"t": 123456.123456789, "s": 1000000, "p": ""}))


def payload(seq: int, pad: str) -> bytes:
    return orjson.dumps({"t": time.monotonic(), "s": seq, "p": pad})


def pad_for(size: int) -> str:
    """Padding that brings a payload to about ``size`` bytes."""
    return "x" * max(0, size - PAYLOAD_OVERHEAD)


def push_line(channel: str, data: bytes, offset: int) -> bytes:
    """A publication as Tidings sends it; the peers send the same line."""
    return orjson.dumps(
        {"push": {"channel": channel, "pub": {"data": orjson.Fragment(data), "offset": offset}}}
    )


def hello_reply(frame: bytes | str) -> tuple[str, bytes] | None:
    """The peers' answer to the Centrifugo-style hello: (channel, reply) or None.

    The hello is ``{"id":1,"connect":{...}}\\n{"id":2,"subscribe":{"channel":C}}``.
    """
    channel = None
    for line in (frame.encode() if isinstance(frame, str) else frame).split(b"\n"):
        try:
            command = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(command, dict) and isinstance(command.get("subscribe"), dict):
            channel = command["subscribe"].get("channel")
    if not isinstance(channel, str):
        return None
    return channel, b'{"id":1,"connect":{"client":"peer"}}\n{"id":2,"subscribe":{}}'


def client_publish(frame: bytes | str) -> tuple[int, str, bytes] | None:
    """A client's publish command as (id, channel, data), or None for anything else."""
    try:
        command = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(command, dict):
        return None
    publish = command.get("publish")
    if not isinstance(publish, dict) or not isinstance(publish.get("channel"), str):
        return None
    return int(command.get("id", 0)), publish["channel"], orjson.dumps(publish.get("data"))


def publish_reply(command_id: int) -> bytes:
    return b'{"id":%d,"publish":{}}' % command_id


@dataclass(slots=True)
class PublishSpec:
    channels: list[str]
    size: int = 100
    max_messages: int = 1_000_000
    duration: float = 5.0
    mode: str = "window"  # "window" (closed loop on acks), "rate" (fixed rate) or "burst"
    window: int = 1000
    rate: float = 100.0

    @classmethod
    def parse(cls, command: dict[str, Any]) -> PublishSpec:
        fields = {k: v for k, v in command.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


class Control:
    """The stdin/stdout control channel and the publisher of one peer."""

    def __init__(
        self,
        publish: PublishFn,
        stats: StatsFn | None = None,
        slow_disconnects: Callable[[], int] | None = None,
    ) -> None:
        self._publish = publish
        self._stats = stats or (lambda: {})
        self._slow_disconnects = slow_disconnects
        self._acked = 0
        self.sent = 0
        self._ack_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()
        # Garbage collector pauses while publishing: [collections, seconds, longest] per gen.
        self._gc: list[list[float]] = [[0, 0.0, 0.0] for _ in range(3)]
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        stats = self._gc[info["generation"]]
        stats[0] += 1
        stats[1] += pause
        stats[2] = max(stats[2], pause)

    def emit(self, event: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
        sys.stdout.buffer.flush()

    async def run(self) -> None:
        """Serve commands until stdin closes or a stop command arrives."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(sys.stdin.fileno(), "rb", 0)
        )
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                command = orjson.loads(line)
                if not self._dispatch(command):
                    break
        finally:
            self.stopped.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, command: dict[str, Any]) -> bool:
        name = command.get("cmd")
        if name == "ack":
            self._acked = max(self._acked, int(command["n"]))
            self._ack_event.set()
        elif name == "publish":
            self._acked = 0
            self._spawn(self._publisher(PublishSpec.parse(command)))
        elif name == "stats":
            self.emit({"event": "stats", "published": self.sent, **self._stats()})
        elif name == "gc":
            gc.collect()
            self.emit({"event": "gc"})
        elif name == "watch_slow":
            self._spawn(self._watch_slow())
        elif name == "stop":
            return False
        return True

    async def _watch_slow(self) -> None:
        if self._slow_disconnects is None:
            return
        start = self._slow_disconnects()
        for _ in range(6000):  # 60 s at most
            if self._slow_disconnects() > start:
                self.emit({"event": "slow_disconnect", "at": time.monotonic()})
                return
            await asyncio.sleep(0.01)

    async def _publisher(self, spec: PublishSpec) -> None:
        channels = spec.channels
        n_channels = len(channels)
        pad = pad_for(spec.size)
        publish = self._publish
        start = time.monotonic()
        deadline = start + spec.duration
        sent = self.sent = 0
        stalled = False
        self._gc = [[0, 0.0, 0.0] for _ in range(3)]
        while sent < spec.max_messages:
            now = time.monotonic()
            if now >= deadline:
                break
            if spec.mode == "window":
                while sent - self._acked >= spec.window:
                    self._ack_event.clear()
                    try:
                        await asyncio.wait_for(self._ack_event.wait(), deadline - time.monotonic())
                    except TimeoutError:
                        stalled = True
                        break
                if stalled:
                    break
            elif spec.mode == "rate":
                delay = start + sent / spec.rate - now
                if delay > 0:
                    await asyncio.sleep(delay)
            sent += 1
            self.sent = sent
            result = publish(channels[sent % n_channels], payload(sent, pad), sent)
            if result is not None:
                await result
            # One publication per loop iteration, as when each comes from its own request.
            await asyncio.sleep(0)
        self.emit(
            {
                "event": "published",
                "n": sent,
                "t0": start,
                "t1": time.monotonic(),
                "window_stalled": stalled,
                "gc": {
                    f"gen{i}": {"count": int(c), "seconds": t, "longest": m}
                    for i, (c, t, m) in enumerate(self._gc)
                },
            }
        )


def raise_nofile_limit() -> None:
    """Allow as many sockets as the hard limit does."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve_under_control(server: Any, control: Control) -> None:
    """Run a uvicorn server, report "ready", obey the orchestrator, then stop it."""
    serving = asyncio.create_task(server.serve())
    for _ in range(3000):  # up to 30 s to start
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    if serving.done():
        serving.result()
    control.emit({"event": "ready", "pid": os.getpid()})
    await control.run()
    server.should_exit = True
    server.force_exit = True
    await asyncio.wait_for(serving, 15)
