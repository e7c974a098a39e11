"""Deadlines: the coarse wall-time timer, the watchdog for code that never awaits, client disconnects."""

from __future__ import annotations

import asyncio
import time

import pytest

from edge_runtime.deadlines import Deadlines, WallTimeExceeded


async def test_an_awaiting_task_is_cancelled_after_its_deadline() -> None:
    deadlines = Deadlines(tick_s=0.01)
    watch = deadlines.watch(0.05)
    started = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert watch.expired and not watch.disconnected
    assert 0.04 <= time.perf_counter() - started < 1.0
    asyncio.current_task().uncancel()


async def test_a_task_that_finishes_in_time_is_left_alone() -> None:
    deadlines = Deadlines(tick_s=0.01)
    watch = deadlines.watch(0.2)
    await asyncio.sleep(0.03)
    deadlines.unwatch(watch)
    await asyncio.sleep(0.25)  # past the deadline: nothing may fire now
    assert not watch.expired


async def test_code_that_never_awaits_gets_wall_time_exceeded() -> None:
    deadlines = Deadlines(tick_s=0.01)
    watch = deadlines.watch(0.1)
    started = time.perf_counter()
    with pytest.raises(WallTimeExceeded):
        while time.perf_counter() - started < 5:
            pass
    assert watch.expired
    assert time.perf_counter() - started < 2.0


async def test_a_slow_invocation_is_cancelled_when_its_client_disconnects() -> None:
    disconnect = asyncio.Event()

    async def receive() -> dict:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    deadlines = Deadlines(tick_s=0.01)
    watch = deadlines.watch(10, receive)
    asyncio.get_running_loop().call_later(0.05, disconnect.set)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert watch.disconnected and not watch.expired
    asyncio.current_task().uncancel()


async def test_no_listener_while_the_request_body_is_still_being_read() -> None:
    class Body:
        complete = False

    async def receive() -> dict:
        raise AssertionError("receive belongs to the Worker while it reads the body")

    deadlines = Deadlines(tick_s=0.01)
    body = Body()
    watch = deadlines.watch(10, receive, body)
    await asyncio.sleep(0.05)
    assert watch.listener is None
    body.complete = True
    await asyncio.sleep(0.05)
    assert watch.listener is not None
    deadlines.unwatch(watch)
    await asyncio.sleep(0)
    assert watch.listener.cancelled() or watch.listener.done()


def test_watches_of_a_closed_loop_never_fire_into_the_thread() -> None:
    deadlines = Deadlines(tick_s=0.01)

    async def leave_a_watch_behind() -> None:
        deadlines.watch(0.02)  # never unwatched: its loop closes with it still registered

    asyncio.run(leave_a_watch_behind())
    started = time.perf_counter()
    while time.perf_counter() - started < 0.3:  # busy, past the deadline, with no loop running
        pass
    assert not deadlines._watches
