"""Run a coroutine at once, in the caller's callback, until it first has to wait.

A client's command mostly finishes without waiting for anything (a publish on
the memory broker, a ping, presence): run in a task, it would cost the task
and a turn of the event loop before its reply could leave, which is most of
a round trip's cost on loopback. :func:`start` runs it on the spot; only a
command that does wait (Redis, an application handler) is handed, suspended
where it is, to a task, through :class:`Suspended`. Python 3.12's eager tasks
do the same; this works on 3.11 too.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class Suspended:
    """A coroutine that was started by hand and now waits: await this to finish it.

    It hands what the coroutine yielded (the future it waits on) to the task
    that awaits it, and passes back what the task sends or throws (a result,
    a cancellation), as ``await`` on the coroutine itself would have.
    """

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self._coro = coro
        self._waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return


def start(coro: Coroutine[Any, Any, None]) -> Suspended | None:
    """Run ``coro`` until it finishes (None) or waits (what to await to finish it).

    Exceptions it raises before waiting propagate to the caller.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return Suspended(coro, waiting)
