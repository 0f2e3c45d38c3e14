"""A client that stops reading: what its connection keeps, and what it gets once it reads."""

from __future__ import annotations

from pathlib import Path

from tidings.hub.session import MAX_COALESCED_FRAME, Session, State

from .test_flusher import connections, wait_for


def frames(data: bytes) -> list[bytes]:
    """The payloads of a stream of unmasked server frames."""
    found: list[bytes] = []
    while data:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        found.append(data[start : start + length])
        data = data[start + length :]
    return found


def payloads(data: bytes) -> list[bytes]:
    """The messages in a stream of unmasked server frames (JSON lines within each)."""
    return [line for frame in frames(data) for line in frame.split(b"\n")]


async def test_a_stalled_client_backlog_is_kept_in_few_large_pieces(tmp_path: Path) -> None:
    _, transports, sockets = connections(tmp_path, 1)
    ws = sockets[0]
    session = Session(ws.hub, ws)
    session.state = State.CONNECTED
    sent = [
        b'{"push":{"channel":"c","pub":{"data":{"n":%d,"p":"%s"}}}}' % (n, b"x" * 1000)
        for n in range(300)
    ]

    ws.pause_writing()  # the client stopped reading: its socket buffer is full
    for message in sent:
        session.deliver("c", message, len(message))
    # 300 KiB waiting, but not as 300 separate objects: each one would stay pinned
    # among everyone else's short-lived allocations and grow the heap far beyond
    # the queue's own size.
    assert session.queued_bytes >= 290_000
    queue = session._queue
    assert queue is not None and len(queue) < len(sent) // 10

    ws.resume_writing()  # it reads again: everything arrives, once, in order
    await wait_for(lambda: len(payloads(b"".join(transports[0].writes))) == len(sent), timeout=5)
    assert payloads(b"".join(transports[0].writes)) == sent
    assert all(len(f) <= MAX_COALESCED_FRAME for f in frames(b"".join(transports[0].writes)))
