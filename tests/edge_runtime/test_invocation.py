"""Invocations that are not requests (edge_runtime/invocation.py), the edge's shared services and PoP-to-PoP delay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from config_projects import BASE_TOML, make_project

from edge_runtime.config import load_config
from edge_runtime.edge import Edge
from edge_runtime.invocation import InvocationTimeout

WORKER = '''\
import asyncio
from workers import WorkerEntrypoint, Response, wait_until
from js import console


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")


async def who_am_i():
    from workers import env
    console.warn("running for", env.NAME)
    return env.NAME


async def slow():
    await asyncio.sleep(5)
'''


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    toml = BASE_TOML + '\n[vars]\nNAME = "first"\n\n[edgewise]\npops = ["LHR", "SIN"]\n\n[edgewise.limits]\nwall_time_s = 0.2\n'
    edge = Edge(load_config(make_project(tmp_path, {"wrangler.toml": toml, "src/entry.py": WORKER})))
    yield edge


async def test_an_invocation_sees_its_workers_env_and_its_logs_reach_the_tail(edge: Edge) -> None:
    script = edge.script()
    with edge.hub.subscribe() as events:
        result = await edge.invoke(script, "SIN", lambda worker, env, ctx: worker.module.who_am_i(),
                                   event="rpc", detail={"method": "who_am_i"})
        event = events.get_nowait()
    assert result == "first"
    assert event["event"] == {"type": "rpc", "method": "who_am_i"} and event["outcome"] == "ok"
    assert event["edgewise"]["colo"] == "SIN"
    assert [entry["message"] for entry in event["logs"]] == [["running for first"]]


async def test_an_invocation_past_its_wall_time_is_stopped_and_says_so(edge: Edge) -> None:
    with pytest.raises(InvocationTimeout, match="did not finish within 0.2 s"):
        await edge.invoke(edge.script(), "LHR", lambda worker, env, ctx: worker.module.slow(), event="queue")


async def test_the_callees_error_propagates_unchanged(edge: Edge) -> None:
    def boom(worker, env, ctx):
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        await edge.invoke(edge.script(), "LHR", boom, event="alarm")


class Service:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def aclose(self) -> None:
        self.calls.append("aclose")


async def test_shared_services_are_made_once_started_with_the_edge_and_closed_with_it(edge: Edge) -> None:
    early = edge.shared("early", Service)
    assert edge.shared("early", Service) is early and early.calls == []
    await edge.start()
    late = edge.shared("late", Service)  # made after the start: started at once
    await asyncio.sleep(0)
    assert early.calls == ["start"] and late.calls == ["start"]
    await edge.aclose()
    assert early.calls == ["start", "aclose"] and late.calls == ["start", "aclose"]


async def test_pop_to_pop_round_trips_grow_with_distance_and_vanish_without_latency(edge: Edge) -> None:
    assert edge.pop_rtt_s("LHR", "LHR") == 0.0
    far = edge.pop_rtt_s("LHR", "SIN")  # about 10,900 km: 2 ms + 10 ms per 1,000 km
    assert 0.10 < far < 0.12 and far == edge.pop_rtt_s("SIN", "LHR")


async def test_an_unknown_worker_name_lists_the_running_ones(edge: Edge) -> None:
    with pytest.raises(LookupError, match="no Worker named 'other' runs in this edge \\(running: hello\\)"):
        edge.script("other")


async def test_the_callees_own_timeout_error_is_not_taken_for_the_wall_time_bound(edge: Edge) -> None:
    async def times_out(worker, env, ctx):
        raise TimeoutError("the upstream did not answer")

    with pytest.raises(TimeoutError, match="the upstream did not answer") as error:
        await edge.invoke(edge.script(), "LHR", times_out, event="rpc")
    assert not isinstance(error.value, InvocationTimeout)
