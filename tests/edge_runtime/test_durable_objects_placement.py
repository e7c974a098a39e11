"""Where Durable Objects live: the first caller's PoP or the locationHint, the latency of far calls, and
how that shows in the objects route and the tail."""

from __future__ import annotations

import asyncio
import time

import pytest
from durable_objects_fixtures import Edges, directory, env_at

COUNTER = """
    from workers import DurableObject

    class Counter(DurableObject):
        async def increment(self):
            value = (await self.ctx.storage.get("count") or 0) + 1
            await self.ctx.storage.put("count", value)
            return value
"""
LATENCY = {"base_ms": 2.0, "ms_per_1000km": 10.0}


@pytest.fixture
async def edges(tmp_path):
    factory = Edges(tmp_path)
    yield factory
    await factory.aclose()


async def _seconds(call, times: int = 3) -> float:
    """The fastest of a few runs of ``call``: the simulated delay, without the scheduler's noise."""
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        await call()
        best = min(best, time.perf_counter() - started)
    return best


async def test_an_object_lives_at_its_first_callers_pop_and_far_calls_pay_the_round_trip(edges: Edges) -> None:
    edge = await edges.make(COUNTER, pops=("LHR", "SFO"), latency=LATENCY)
    from_sfo = env_at(edge, "SFO").COUNTER.getByName("west")
    await from_sfo.increment()  # first caller: SFO
    from_lhr = env_at(edge, "LHR").COUNTER.getByName("west")
    rtt_s = edge.pop_rtt_s("LHR", "SFO")
    assert rtt_s > 0.05  # ~8,600 km apart
    near_s = await _seconds(from_sfo.increment)
    far_s = await _seconds(from_lhr.increment)
    assert far_s >= rtt_s
    assert far_s - near_s == pytest.approx(rtt_s, abs=0.03)
    assert await from_sfo.increment() == 8  # one object, whichever PoP calls it


async def test_latency_off_makes_far_calls_as_fast_as_near_ones(edges: Edges) -> None:
    edge = await edges.make(COUNTER, pops=("LHR", "SFO"))
    await env_at(edge, "SFO").COUNTER.getByName("west").increment()
    assert edge.pop_rtt_s("LHR", "SFO") == 0.0
    far_s = await _seconds(env_at(edge, "LHR").COUNTER.getByName("west").increment)
    assert far_s < 0.05


@pytest.mark.parametrize(("hint", "home"), [("oc", "SYD"), ("wnam", "SFO"), ("weur", "LHR"), ("apac", "SYD")])
async def test_a_location_hint_places_the_object_at_the_nearest_pop(edges: Edges, hint: str, home: str) -> None:
    edge = await edges.make(COUNTER, pops=("LHR", "SFO", "SYD"))
    namespace = env_at(edge, "LHR").COUNTER
    stub = namespace.get(namespace.idFromName("hinted"), locationHint=hint)
    await stub.increment()
    await env_at(edge, "SFO").COUNTER.getByName("hinted").increment()  # a later caller does not move it
    [placed] = directory(edge).describe()
    assert placed["home"] == home


async def test_the_objects_route_lists_each_object_with_its_home(edges: Edges, open_client) -> None:
    edge = await edges.make(COUNTER, pops=("LHR", "SFO"))
    named = env_at(edge, "SFO").COUNTER.getByName("listed")
    await named.increment()
    namespace = env_at(edge, "LHR").COUNTER
    unnamed = namespace.get(namespace.newUniqueId())
    await unnamed.increment()
    reply = await open_client(edge).get("/cdn-cgi/edgewise/objects")
    assert reply.status_code == 200
    by_id = {entry["id"]: entry for entry in reply.json()}
    assert by_id[named.id.toString()] == {
        "namespace": "objects-Counter", "script": "objects", "class": "Counter", "id": named.id.toString(),
        "name": "listed", "home": "SFO", "live": True, "websockets": 0}
    assert by_id[unnamed.id.toString()]["home"] == "LHR" and "name" not in by_id[unnamed.id.toString()]


async def test_each_delivered_call_is_a_tail_event_naming_the_object_home_and_caller(edges: Edges) -> None:
    edge = await edges.make(COUNTER, pops=("LHR", "SFO"))
    stub = env_at(edge, "SFO").COUNTER.getByName("tailed")
    await stub.increment()
    with edge.hub.subscribe() as events:
        await env_at(edge, "LHR").COUNTER.getByName("tailed").increment()
        event = await asyncio.wait_for(events.get(), 5)
    assert event["outcome"] == "ok"
    assert event["entrypoint"] == "Counter"
    assert event["event"] == {"type": "durable_object", "entrypoint": "Counter", "handler": "increment",
                              "objectId": stub.id.toString(), "home": "SFO", "callerColo": "LHR",
                              "objectName": "tailed"}
    assert event["edgewise"]["colo"] == "SFO"
