"""Durable Object alarms: they fire at their time, are retried with backoff when alarm() raises, and
outlive an edge restart."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from durable_objects_fixtures import FAST, Edges, directory, env_at

ALARMS = """
    import time
    from workers import DurableObject

    class Counter(DurableObject):
        async def arm(self, in_ms, failures=0, again=0):
            await self.ctx.storage.put({"failures": failures, "again": again, "runs": []})
            await self.ctx.storage.setAlarm(int(time.time() * 1000) + in_ms)

        async def alarm(self, info):
            runs = await self.ctx.storage.get("runs")
            runs.append({"retryCount": info.retryCount, "isRetry": info.isRetry,
                         "pending": await self.ctx.storage.getAlarm()})
            await self.ctx.storage.put("runs", runs)
            if len(runs) <= await self.ctx.storage.get("failures"):
                raise RuntimeError("alarm failed on purpose")
            again = await self.ctx.storage.get("again")
            if again:
                await self.ctx.storage.put("again", again - 1)
                await self.ctx.storage.setAlarm(int(time.time() * 1000) + 20)

        async def runs(self):
            return await self.ctx.storage.get("runs")

        async def pending(self):
            return await self.ctx.storage.getAlarm()
"""


@pytest.fixture
async def edges(tmp_path):
    factory = Edges(tmp_path)
    yield factory
    await factory.aclose()


async def _runs_when(stub, count: int, timeout_s: float = 5.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = await stub.runs()
        if len(runs) >= count:
            return runs
        await asyncio.sleep(0.02)
    raise TimeoutError(f"alarm() ran {len(await stub.runs())} times, not {count}, within {timeout_s} s")


async def test_an_alarm_fires_at_its_time_and_is_cleared_while_it_runs(edges: Edges) -> None:
    edge = await edges.make(ALARMS)
    stub = env_at(edge, "LHR").COUNTER.getByName("a")
    armed_at = time.monotonic()
    await stub.arm(150)
    assert await stub.pending() is not None
    runs = await _runs_when(stub, 1)
    assert time.monotonic() - armed_at >= 0.14
    assert runs == [{"retryCount": 0, "isRetry": False, "pending": None}]
    assert await stub.pending() is None
    await asyncio.sleep(0.2)
    assert len(await stub.runs()) == 1  # once


async def test_an_alarm_that_raises_is_retried_with_backoff(edges: Edges) -> None:
    edge = await edges.make(ALARMS)
    stub = env_at(edge, "LHR").COUNTER.getByName("retried")
    await stub.arm(10, failures=1)
    runs = await _runs_when(stub, 2)
    assert [(run.retryCount, run.isRetry) for run in runs] == [(0, False), (1, True)]
    await asyncio.sleep(0.3)
    assert len(await stub.runs()) == 2  # the retry succeeded: no more runs


async def test_retries_stop_after_the_limit(edges: Edges) -> None:
    settings = dataclasses.replace(FAST, alarm_retry_base_s=0.02, alarm_max_retries=2)
    edge = await edges.make(ALARMS, settings=settings)
    stub = env_at(edge, "LHR").COUNTER.getByName("hopeless")
    started = time.monotonic()
    await stub.arm(0, failures=99)
    runs = await _runs_when(stub, 3)
    assert [run.retryCount for run in runs] == [0, 1, 2]
    assert time.monotonic() - started >= 0.02 + 0.04  # backoff doubles: 20 ms, then 40 ms
    await asyncio.sleep(0.3)
    assert len(await stub.runs()) == 3
    assert await stub.pending() is None


async def test_an_alarm_set_inside_alarm_stands(edges: Edges) -> None:
    edge = await edges.make(ALARMS)
    stub = env_at(edge, "LHR").COUNTER.getByName("recurring")
    await stub.arm(0, again=2)
    runs = await _runs_when(stub, 3)
    assert [run.retryCount for run in runs] == [0, 0, 0]


async def test_an_alarm_set_before_a_restart_fires_after_it(edges: Edges) -> None:
    edge = await edges.make(ALARMS)
    stub = env_at(edge, "LHR").COUNTER.getByName("restarted")
    await stub.arm(300)
    edge = await edges.restart(edge, ALARMS)
    key = ("objects-Counter", stub.id.toString())
    assert key not in directory(edge).live
    again = env_at(edge, "SFO").COUNTER.getByName("restarted")
    await asyncio.sleep(0.5)  # no call: the scheduler builds the object for alarm()
    assert key in directory(edge).live
    assert await again.runs() == [{"retryCount": 0, "isRetry": False, "pending": None}]
