"""How the direct path gathers each loop iteration's frames into one write per connection."""

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

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


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


async def test_frames_leave_at_the_end_of_the_loop_iteration(tmp_path: Path) -> None:
    _, transports, sockets = connections(tmp_path, 3)
    for ws in sockets:
        assert ws.write_now(b'{"n":1}')
    assert [t.writes for t in transports] == [[], [], []]  # gathered during the iteration
    await next_turn()
    # The flush ran before anything else of the next iteration: one write each.
    assert [t.writes for t in transports] == [[framed(b'{"n":1}')]] * 3


async def test_what_one_iteration_wrote_goes_out_in_one_write(tmp_path: Path) -> None:
    # A client's publish reply and its own publication, or several publications
    # handled in one iteration: one system call per connection, in order.
    _, transports, sockets = connections(tmp_path, 2)
    for n in range(5):
        for ws in sockets:
            ws.write_now(b"m%d" % n)
    await next_turn()
    expected = b"".join(framed(b"m%d" % n) for n in range(5))
    assert [t.writes for t in transports] == [[expected], [expected]]


async def test_no_timer_holds_frames_under_load(tmp_path: Path) -> None:
    # Iteration after iteration of writes (sustained load): each iteration's
    # frames leave with the next one, never held for a pause.
    _, transports, sockets = connections(tmp_path, 2)
    for n in range(20):
        for ws in sockets:
            ws.write_now(b"m%d" % n)
        await next_turn()
        assert [len(t.writes) for t in transports] == [n + 1, n + 1]


async def test_write_delay_holds_frames_for_a_bigger_batch(tmp_path: Path) -> None:
    hub = Hub(test_settings(tmp_path, write_delay=30), MemoryBroker())
    flusher = Flusher(hub.settings.write_delay / 1000)
    ws = DirectWebSocket(hub, asyncio.Protocol, flusher, None, SimpleNamespace(connections=set()))
    transport = RecordingTransport()
    ws.connection_made(transport)  # type: ignore[arg-type]
    started = time.perf_counter()
    ws.write_now(b"a")
    await next_turn()
    ws.write_now(b"b")
    assert transport.writes == []  # held, across iterations
    await wait_for(lambda: transport.writes, timeout=2)
    assert transport.writes == [framed(b"a") + framed(b"b")]
    assert transport.times[0] - started >= 0.025


async def test_a_connection_with_enough_gathered_is_written_at_once(tmp_path: Path) -> None:
    # Large messages to many clients: holding every client's gathered bytes
    # until the iteration ends is no gain (one system call is well spent on 64 KiB).
    _, transports, sockets = connections(tmp_path, 1)
    big = b"x" * (WRITE_AT_ONCE_FROM // 4)
    for _ in range(3):
        sockets[0].write_now(big)
    assert transports[0].writes == []  # gathered: 48 KiB
    sockets[0].write_now(big)
    assert transports[0].writes == [framed(big) * 4]  # 64 KiB: out now, in one piece
    sockets[0].write_now(b"after")  # gathered again, sent by the pending flush
    await next_turn()
    assert transports[0].writes[1] == framed(b"after")


async def test_a_paused_socket_refuses_the_fast_path(tmp_path: Path) -> None:
    _, transports, sockets = connections(tmp_path, 1)
    sockets[0].pause_writing()
    assert not sockets[0].write_now(b"x")  # the session queues it instead
    assert transports[0].writes == []
    sockets[0].resume_writing()
    assert sockets[0].write_now(b"x")
