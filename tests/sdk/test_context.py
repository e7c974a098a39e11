"""``Context.waitUntil`` and ``drain``, plus the module-level ``workers.env`` / ``workers.wait_until``."""

from __future__ import annotations

import asyncio
import logging

import pytest

import workers
from workers import Context, _state


async def test_wait_until_starts_at_once_and_drain_waits() -> None:
    ctx = Context()
    events: list[str] = []
    release = asyncio.Event()

    async def background() -> None:
        events.append("started")
        await release.wait()
        events.append("finished")

    ctx.waitUntil(background())
    await asyncio.sleep(0)
    assert events == ["started"]  # running before anyone drains: the response need not wait for it
    release.set()
    await ctx.drain(timeout_s=1.0)
    assert events == ["started", "finished"]


async def test_drain_waits_for_work_registered_while_draining() -> None:
    ctx = Context()
    done: list[str] = []

    async def second() -> None:
        await asyncio.sleep(0.01)
        done.append("second")

    async def first() -> None:
        await asyncio.sleep(0.01)
        ctx.waitUntil(second())
        done.append("first")

    ctx.wait_until(first())
    await ctx.drain(timeout_s=1.0)
    assert done == ["first", "second"]


async def test_wait_until_accepts_tasks_and_futures() -> None:
    ctx = Context()
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(asyncio.sleep(0, result="t"))
    ctx.waitUntil(future)
    ctx.waitUntil(task)
    future.set_result(1)
    await ctx.drain(timeout_s=1.0)
    assert task.result() == "t"


async def test_failing_task_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ctx = Context()

    async def fails() -> None:
        raise ValueError("boom in background")

    ctx.waitUntil(fails())
    with caplog.at_level(logging.ERROR, logger="edgewise.worker"):
        await ctx.drain(timeout_s=1.0, label="ray=abc")
    [record] = [r for r in caplog.records if r.name == "edgewise.worker"]
    assert record.levelno == logging.ERROR
    assert "waitUntil task failed" in record.getMessage() and "ray=abc" in record.getMessage()
    assert isinstance(record.exc_info[1], ValueError)


async def test_slow_task_is_cancelled_at_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    ctx = Context()
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    ctx.waitUntil(slow())
    task = ctx._tasks[0]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="edgewise.worker"):
        await ctx.drain(timeout_s=0.05)
    assert loop.time() - started < 1.0
    assert task.cancelled()  # drain returns only once the work has actually stopped
    assert seen == ["cancelled"]
    assert any(r.levelno == logging.WARNING and "cancelled after" in r.getMessage() for r in caplog.records)


async def test_drain_with_nothing_registered_returns() -> None:
    await Context().drain(timeout_s=0.01)


@pytest.mark.parametrize("value", [None, 42, lambda: None, "text"])
def test_non_awaitable_is_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="waitUntil"):
        Context().waitUntil(value)  # type: ignore[arg-type]


def test_props_and_pass_through() -> None:
    ctx = Context({"user": {"id": 7}})
    assert ctx.props.user == {"id": 7}
    assert ctx.pass_through_on_exception is False
    ctx.passThroughOnException()
    assert ctx.pass_through_on_exception is True


async def test_module_level_wait_until_uses_current_ctx() -> None:
    from workers import waitUntil, wait_until

    ctx = Context()
    ran: list[str] = []

    async def job(name: str) -> None:
        ran.append(name)

    token = _state.current.set(_state.Invocation(ctx=ctx))
    try:
        wait_until(job("snake"))
        waitUntil(job("camel"))
    finally:
        _state.current.reset(token)
    assert len(ctx._tasks) == 2
    await ctx.drain(timeout_s=1.0)
    assert ran == ["snake", "camel"]


async def test_module_level_wait_until_without_ctx_is_runtime_error() -> None:
    from workers import wait_until

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="outside a request"):
        wait_until(future)


def test_env_reads_current_env() -> None:
    env = {"MESSAGE": "My env var"}
    assert workers.env is None
    token = _state.current.set(_state.Invocation(env))
    try:
        assert workers.env is env
        from workers import env as imported

        assert imported is env
    finally:
        _state.current.reset(token)
    assert workers.env is None


def test_unknown_module_attribute() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = workers.no_such_name  # type: ignore[attr-defined]
