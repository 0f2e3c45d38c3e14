"""Commands run at once until they first wait (tidings.transport.eager)."""

from __future__ import annotations

import asyncio

import pytest

from tidings.transport import eager


async def test_a_coroutine_that_never_waits_finishes_in_the_call() -> None:
    done: list[str] = []

    async def command() -> None:
        done.append("ran")

    assert eager.start(command()) is None
    assert done == ["ran"]  # before any turn of the loop


async def test_one_that_waits_is_finished_by_awaiting_what_start_returns() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def command() -> None:
        steps.append("before")
        steps.append(await gate)
        await asyncio.sleep(0)  # a bare yield as well as a future
        steps.append("after")

    waiting = eager.start(command())
    assert waiting is not None and steps == ["before"]
    task = asyncio.create_task(_finish(waiting))
    gate.set_result("result")
    await task
    assert steps == ["before", "result", "after"]


async def test_exceptions_reach_the_coroutine_and_the_awaiter() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def command() -> None:
        try:
            await gate
        except KeyError:
            raise ValueError("seen") from None

    waiting = eager.start(command())
    assert waiting is not None
    gate.set_exception(KeyError())
    with pytest.raises(ValueError, match="seen"):
        await waiting


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    cleaned: list[bool] = []

    async def command() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # never done
        finally:
            cleaned.append(True)

    waiting = eager.start(command())
    assert waiting is not None
    task = asyncio.create_task(_finish(waiting))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


def test_an_error_before_waiting_is_raised_by_start() -> None:
    async def command() -> None:
        raise RuntimeError("early")

    with pytest.raises(RuntimeError, match="early"):
        eager.start(command())


async def _finish(waiting: eager.Suspended) -> None:
    await waiting
