"""The memory broker's history: offsets, size and time limits, epochs."""

from __future__ import annotations

import pytest

from tidings.brokers import HistoryOptions, create_broker
from tidings.brokers import memory as memory_module
from tidings.brokers.memory import MemoryBroker
from tidings.protocol import ClientInfo, Publication, StreamPosition


class Events:
    def __init__(self) -> None:
        self.publications: list[tuple[str, Publication]] = []
        self.joins: list[str] = []

    def on_publication(self, channel: str, publication: Publication, epoch: str) -> None:
        self.publications.append((channel, publication))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append(info.user)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        pass


KEEP = HistoryOptions(size=3, ttl=60)


def test_broker_is_picked_by_url_scheme() -> None:
    assert isinstance(create_broker("memory://"), MemoryBroker)
    with pytest.raises(ValueError, match="unknown broker"):
        create_broker("carrier-pigeon://coop")


async def test_offsets_increase_and_history_keeps_the_latest() -> None:
    broker = MemoryBroker()
    events = Events()
    await broker.start(events)
    await broker.subscribe("c")
    positions = [await broker.publish("c", b'{"n":%d}' % n, history=KEEP) for n in range(5)]
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    assert [p.offset for _, p in events.publications] == [1, 2, 3, 4, 5]

    kept, top = await broker.history("c", since=None, limit=-1)
    assert [p.offset for p in kept] == [3, 4, 5] and top == positions[-1]
    since, _ = await broker.history("c", since=StreamPosition(3, top.epoch), limit=-1)
    assert [p.offset for p in since] == [4, 5]
    newest, _ = await broker.history("c", since=None, limit=1, reverse=True)
    assert [p.offset for p in newest] == [5]
    nothing, position = await broker.history("c", since=None, limit=0)
    assert nothing == [] and position == top


async def test_history_expires_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    broker = MemoryBroker()
    await broker.publish("c", b"1", history=HistoryOptions(size=10, ttl=5))
    now[0] += 3
    await broker.publish("c", b"2", history=HistoryOptions(size=10, ttl=5))
    now[0] += 3
    kept, top = await broker.history("c", since=None, limit=-1)
    assert [p.data for p in kept] == [b"2"] and top.offset == 2


async def test_idle_streams_are_dropped_and_come_back_with_a_new_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    broker = MemoryBroker()
    first = await broker.publish("old", b"1", history=HistoryOptions(size=10, ttl=1))
    now[0] += memory_module.STREAM_IDLE_TTL + 10
    for _ in range(10_000):  # enough publishes elsewhere to trigger a sweep
        await broker.publish("busy", b"x", history=HistoryOptions(size=1, ttl=1))
    second = await broker.publish("old", b"2", history=HistoryOptions(size=10, ttl=1))
    assert second.epoch != first.epoch and second.offset == 1


async def test_without_history_there_is_no_offset_and_no_delivery_when_unsubscribed() -> None:
    broker = MemoryBroker()
    events = Events()
    await broker.start(events)
    position = await broker.publish("c", b"1")
    assert position == StreamPosition(0, "")
    assert events.publications == []  # nobody on this node subscribed


async def test_presence() -> None:
    broker = MemoryBroker()
    alice = ClientInfo("alice", "c1")
    await broker.add_presence("room", "c1", alice)
    await broker.add_presence("room", "c2", ClientInfo("bob", "c2"))
    assert set(await broker.presence("room")) == {"c1", "c2"}
    await broker.remove_presence("room", "c2")
    assert await broker.presence("room") == {"c1": alice}
