"""Join and leave pushes, sent together while a channel has a storm of them.

Every subscriber that wants join/leave gets every join, so N clients joining
a channel make about N²/2 pushes. One at a time, each costs a delivery (and,
on a quiet server, a system call) per subscriber: a thousand clients
entering a room at once kept the server busy for seconds. Here the first
join or leave in a quiet channel goes out at once, and those that follow
within ``WINDOW`` wait for its end and go out together, several pushes to a
frame: one delivery per subscriber per window instead of one per event.
Every push is still sent; the protocol has one push per join.

A publication on the channel sends what waits first, so a client never sees
someone's message before their join.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..protocol.messages import JoinPush, LeavePush

JoinOrLeave = JoinPush | LeavePush

# Long enough to gather a storm, short enough that a join shown late by it goes unnoticed.
WINDOW = 0.05


class JoinLeaveBatcher:
    """Per channel: sends a lone event at once, and gathers the ones that follow it."""

    def __init__(self, send: Callable[[str, list[JoinOrLeave]], None]) -> None:
        self._send = send
        # Channels within a window: the events waiting for its end.
        self._waiting: dict[str, list[JoinOrLeave]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, channel: str, event: JoinOrLeave) -> None:
        waiting = self._waiting.get(channel)
        if waiting is not None:
            waiting.append(event)
            return
        self._open_window(channel)
        self._send(channel, [event])

    def send_waiting(self, channel: str) -> None:
        """Send ``channel``'s waiting events now (before a publication, to keep the order)."""
        if not self._waiting:
            return
        waiting = self._waiting.get(channel)
        if waiting:
            self._waiting[channel] = []
            self._send(channel, waiting)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()

    def _open_window(self, channel: str) -> None:
        self._waiting[channel] = []
        loop = asyncio.get_running_loop()
        self._timers[channel] = loop.call_later(WINDOW, self._end_window, channel)

    def _end_window(self, channel: str) -> None:
        self._timers.pop(channel, None)
        waiting = self._waiting.pop(channel, None)
        if waiting:
            self._open_window(channel)  # still busy: gather for another window
            self._send(channel, waiting)
