"""When the direct path writes a frame at once, and when it gathers frames into one write."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from tidings.brokers.memory import MemoryBroker
from tidings.hub.hub import Hub
from tidings.transport.direct import (
    WRITE_AT_ONCE_FROM,
    DirectWebSocket,
    Flusher,
)
from tidings.websocket.frames import frame_header

from ..conftest import test_settings, wait_for


class RecordingTransport:
    """Stands for uvloop's transport: records each write, i.e. each system call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.times: list[float] = []
        self.cost = 0.0  # how long a write blocks, as a system call on a busy box would

    def write(self, data: bytes) -> None:
        if self.cost:
            time.sleep(self.cost)
        self.writes.append(bytes(data))
        self.times.append(time.perf_counter())

    def is_closing(self) -> bool:
        return False


def connections(
    tmp_path: Path, count: int
) -> tuple[Flusher, list[RecordingTransport], list[DirectWebSocket]]:
    hub = Hub(test_settings(tmp_path), MemoryBroker())
    flusher = Flusher()
    server_state = SimpleNamespace(connections=set())
    transports, sockets = [], []
    for _ in range(count):
        ws = DirectWebSocket(hub, asyncio.Protocol, flusher, None, server_state)
        transport = RecordingTransport()
        ws.connection_made(transport)  # type: ignore[arg-type]
        transports.append(transport)
        sockets.append(ws)
    return flusher, transports, sockets


def framed(payload: bytes) -> bytes:
    return frame_header(0x1, len(payload)) + payload


async def next_turn() -> None:
    await asyncio.sleep(0)


async def test_a_quiet_server_writes_each_frame_before_the_loop_turns(tmp_path: Path) -> None:
    _, transports, sockets = connections(tmp_path, 3)
    for ws in sockets:
        assert ws.write_now(b'{"n":1}')
    # No flush has run: every subscriber already has its frame (lowest latency).
    assert [t.writes for t in transports] == [[framed(b'{"n":1}')]] * 3


async def two_bursts(sockets: list[DirectWebSocket]) -> None:
    """Two publications in a row: what sustained load looks like to the flusher."""
    for payload in (b"first", b"second"):
        for ws in sockets:
            ws.write_now(payload)
        await next_turn()  # the burst ends


async def test_under_load_frames_are_gathered_into_one_write_each(tmp_path: Path) -> None:
    flusher, transports, sockets = connections(tmp_path, 2)
    await two_bursts(sockets)
    assert [len(t.writes) for t in transports] == [2, 2]
    for n in range(5):
        for ws in sockets:
            ws.write_now(b"m%d" % n)
    # Within the pause after the second burst nothing more went out...
    assert [len(t.writes) for t in transports] == [2, 2]

    # ...and then one system call per connection carries all five, in order.
    await wait_for(lambda: all(len(t.writes) == 3 for t in transports), timeout=2)
    expected = b"".join(framed(b"m%d" % n) for n in range(5))
    assert [t.writes[2] for t in transports] == [expected, expected]
    # Quiet again once the pause has passed (a new burst): the next frame goes out at once.
    await wait_for(flusher.write_at_once, timeout=2)
    sockets[0].write_now(b"later")
    assert transports[0].writes[-1] == framed(b"later")


async def test_one_late_publication_right_after_a_burst_is_not_held(tmp_path: Path) -> None:
    # A publisher at a steady rate that fell behind sends two in a row: the
    # second is no sign of load, and holding it would only add latency.
    _, transports, sockets = connections(tmp_path, 2)
    for ws in sockets:
        ws.write_now(b"first")
    await next_turn()
    for ws in sockets:
        assert ws.write_now(b"late")
    assert [t.writes[-1] for t in transports] == [framed(b"late")] * 2


async def test_the_pause_grows_with_how_long_the_burst_took(tmp_path: Path) -> None:
    # Writing to thousands of clients takes tens of milliseconds; a pause of a
    # few would let only one publication in, and each write would carry one
    # message again. The pause lasts as long as the burst did.
    _, transports, sockets = connections(tmp_path, 2)
    transports[0].cost = 0.06
    await two_bursts(sockets)  # the second one (>= 60 ms) has just ended
    burst_ended = time.perf_counter()
    transports[0].cost = 0.0
    sockets[1].write_now(b"third")
    await wait_for(lambda: len(transports[1].writes) == 3, timeout=2)
    assert transports[1].times[2] - burst_ended >= 0.05


async def test_a_connection_with_enough_gathered_is_written_without_waiting(
    tmp_path: Path,
) -> None:
    # Large messages to many clients: a pause would hold every client's
    # gathered bytes at once, for no gain (one system call is well spent on 64 KiB).
    _, transports, sockets = connections(tmp_path, 1)
    await two_bursts(sockets)
    big = b"x" * (WRITE_AT_ONCE_FROM // 4)
    for _ in range(3):
        sockets[0].write_now(big)
    assert len(transports[0].writes) == 2  # gathered: 48 KiB
    sockets[0].write_now(big)
    assert transports[0].writes[2] == framed(big) * 4  # 64 KiB: out now, in one piece
    sockets[0].write_now(b"after")  # gathered again, sent by the pending flush
    await wait_for(lambda: len(transports[0].writes) == 4, timeout=2)
    assert transports[0].writes[3] == framed(b"after")


async def test_a_paused_socket_refuses_the_fast_path(tmp_path: Path) -> None:
    _, transports, sockets = connections(tmp_path, 1)
    sockets[0].pause_writing()
    assert not sockets[0].write_now(b"x")  # the session queues it instead
    assert transports[0].writes == []
    sockets[0].resume_writing()
    assert sockets[0].write_now(b"x")
