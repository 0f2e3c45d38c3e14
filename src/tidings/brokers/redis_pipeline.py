"""Auto-pipelining: concurrent Redis commands share round trips and a few connections.

Why by hand: redis-py (8.x) has no auto-pipelining. Each command of
``redis.asyncio`` takes a pooled connection for its whole round trip, so N
concurrent commands want N connections: its ``ConnectionPool`` raises
``MaxConnectionsError`` past ``max_connections`` (100 by default), and its
``BlockingConnectionPool`` waits for a free one instead, but still sends one
command per round trip. Its ``Pipeline`` batches only what one caller queues,
and takes its connection when executed, after the batch is made. What is used
from redis-py: ``BlockingConnectionPool`` (a fixed number of connections, and a
wait for a free one), and a connection's own packing, writing and reading.

How: ``execute`` puts a command in a queue and waits for its future. At the end
of the event-loop iteration (``call_soon``), senders start, at most ``lanes``
of them: each takes a connection from the pool, *then* takes up to
``max_batch`` queued commands, writes them in one go, reads the replies in
order and resolves each caller's future with its own reply, or its own error:
a command Redis refuses (a ``ResponseError``) fails alone; a lost connection
fails the commands of that pipeline (their outcome is unknown). A sender goes
on while the queue is not empty, on the same connection, and keeps it one loop
iteration more when the queue runs dry. While every lane is busy, the queue grows,
and the next pipeline carries everything that came meanwhile: under load the
pipelines grow longer, the connections do not grow more numerous.

A command waits in the queue at most ``timeout`` seconds, then fails with a
``TimeoutError`` (the broker's ``BrokerUnavailable``) and is never sent, so a
publish is never both refused and made. A caller that is cancelled while its
command is queued takes it out too. Once sent, the connection's socket timeout
bounds the reply. When Redis is unreachable, a sender's connection attempt
fails at once, and so does the pipeline's worth of commands it would have
sent: an outage fails operations visibly and fast, as before.

Never retried here: a retried publish could be delivered twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from .metrics import CommandMetrics

log = logging.getLogger("tidings.brokers.redis")

# The most commands one pipeline carries (a long queue takes several lanes).
MAX_BATCH = 512


class _Command:
    __slots__ = ("args", "deadline", "future")

    def __init__(self, args: tuple[EncodableT, ...], future: asyncio.Future[Any], deadline: float):
        self.args = args
        self.future = future
        self.deadline = deadline


def _settle(
    future: asyncio.Future[Any], reply: Any = None, error: BaseException | None = None
) -> None:
    if future.done():  # its caller was cancelled (or it timed out): nobody waits
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)


class AutoPipeline:
    """Commands of concurrent callers, pipelined on at most ``lanes`` pooled connections."""

    def __init__(
        self,
        pool: BlockingConnectionPool,
        *,
        lanes: int,
        timeout: float,
        metrics: CommandMetrics | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if lanes < 1 or max_batch < 1 or timeout <= 0:
            raise ValueError("lanes and max_batch must be at least 1, timeout positive")
        self.pool = pool
        self.lanes = lanes
        self.timeout = timeout
        self.max_batch = max_batch
        self.metrics = metrics if metrics is not None else CommandMetrics()
        self._queue: deque[_Command] = deque()
        self._flush_scheduled = False
        # Expires the queue's head when its time is up (one timer for the whole
        # queue: every command gets the same timeout, so the head is the oldest).
        self._timer: asyncio.TimerHandle | None = None
        self._senders: set[asyncio.Task[None]] = set()
        # Senders not sending a pipeline (waiting for a connection, or holding one
        # for a moment after a pipeline): each takes the queue's head soon.
        self._idle = 0
        self._closed = False
        # Pipelines sent (tests compare it with the commands sent).
        self.pipelines = 0
        # (get_connection and release have no annotations in redis-py.)
        self._get_connection: Callable[[], Awaitable[AbstractConnection]] = pool.get_connection
        self._release: Callable[[AbstractConnection], Awaitable[None]] = pool.release

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command: its reply, or its own error (a redis-py exception)."""
        if self._closed:
            raise RedisConnectionError("the redis broker is closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[Any] = loop.create_future()
        command = _Command(args, future, now + self.timeout)
        self._queue.append(command)
        if self._timer is None:
            self._timer = loop.call_at(command.deadline, self._expire)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            return await future
        finally:
            metrics.in_flight -= 1
            metrics.latency.observe(loop.time() - now)

    def _flush(self) -> None:
        """Start the senders the queue needs, as many as lanes allow."""
        self._flush_scheduled = False
        queue = self._queue
        while (
            queue
            and not self._closed
            and len(self._senders) < self.lanes
            and self._idle * self.max_batch < len(queue)
        ):
            self._idle += 1
            task = asyncio.get_running_loop().create_task(self._send(), name="tidings-redis-send")
            self._senders.add(task)
            task.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        self._senders.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a redis sender failed", exc_info=task.exception())
        if self._queue and not self._closed and not self._flush_scheduled:
            # Commands that came while every lane was busy, if no sender is left for them.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _expire(self) -> None:
        """Fail the commands that waited ``timeout`` for a connection; they are never sent."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        queue = self._queue
        while queue and queue[0].deadline <= now:
            command = queue.popleft()
            if not command.future.done():
                self.metrics.timeouts += 1
                command.future.set_exception(
                    RedisTimeoutError(f"no redis connection free within {self.timeout:g}s")
                )
        if queue:
            self._timer = loop.call_at(queue[0].deadline, self._expire)

    def _take(self) -> list[_Command]:
        batch: list[_Command] = []
        queue = self._queue
        while queue and len(batch) < self.max_batch:
            command = queue.popleft()
            if not command.future.done():  # not cancelled by its caller
                batch.append(command)
        return batch

    async def _send(self) -> None:
        """One lane: a connection, then the queue's head in one pipeline; again while any.

        The lane keeps its connection while there is work, and one loop iteration
        more: a caller woken by its reply often sends its next command right then,
        which goes out without another task or another trip through the pool.
        """
        conn: AbstractConnection | None = None
        try:
            while self._queue and not self._closed:
                if conn is None:
                    try:
                        conn = await self._get_connection()
                    except Exception as e:
                        if isinstance(e, RedisError) and isinstance(e.__cause__, TimeoutError):
                            # The pool stayed full for its timeout (others use it too):
                            # the queued commands expire by their own deadlines.
                            continue
                        # Redis is unreachable (or worse): fail what this pipeline would
                        # have sent, so that each attempt takes commands out of the queue.
                        for command in self._take():
                            _settle(command.future, error=e)
                        continue
                batch = self._take()
                if batch:
                    self._idle -= 1
                    self.metrics.busy += 1
                    try:
                        await self._pipeline(conn, batch)
                    finally:
                        self.metrics.busy -= 1
                        self._idle += 1
                if not self._queue:
                    await asyncio.sleep(0)  # linger (see above)
        finally:
            self._idle -= 1
            if conn is not None:
                await self._release(conn)

    async def _pipeline(self, conn: AbstractConnection, batch: list[_Command]) -> None:
        self.pipelines += 1
        self.metrics.pipeline_size.observe(len(batch))
        done = 0
        try:
            await conn.send_packed_command(conn.pack_commands(c.args for c in batch))
            read: Callable[[], Awaitable[Any]] = conn.read_response  # untyped in redis-py
            for command in batch:
                try:
                    reply = await read()
                except ResponseError as e:  # this command's own error; the next replies follow
                    _settle(command.future, error=e)
                else:
                    _settle(command.future, reply)
                done += 1
        except BaseException as e:
            # The rest of the batch may or may not have run: each caller learns of it.
            error = (
                e
                if isinstance(e, Exception)
                else RedisConnectionError("the redis broker is closing")
            )
            for command in batch[done:]:
                _settle(command.future, error=error)
            # Replies may be left on the socket: never read them as another's. (redis-py
            # already disconnects on its own errors; the next pipeline reconnects.)
            await conn.disconnect(nowait=True)
            if not isinstance(e, Exception):
                raise

    async def close(self) -> None:
        """Fail what is queued, stop the senders (their commands fail), refuse what comes."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        closing = RedisConnectionError("the redis broker is closing")
        while self._queue:
            _settle(self._queue.popleft().future, error=closing)
        senders = list(self._senders)
        for task in senders:
            task.cancel()
        if senders:
            await asyncio.wait(senders)

    def reopen(self) -> None:
        self._closed = False
