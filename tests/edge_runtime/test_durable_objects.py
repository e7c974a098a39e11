"""Durable Objects: ids, stubs (fetch and RPC), one live instance per id, input gates, abort, bad input, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import textwrap

import pytest
from durable_objects_fixtures import FAST, Edges, directory, env_at
from edgewise_sdk.pyodide.ffi import JsException
from edgewise_sdk.workers import JsDict, Response

from edge_runtime.bindings.durable_objects.storage import StorageLimits
from edge_runtime.config import load_config

COUNTER = """
    import asyncio
    from workers import DurableObject, Response, WorkerEntrypoint

    BUILT = []

    class Counter(DurableObject):
        def __init__(self, ctx, env):
            super().__init__(ctx, env)
            BUILT.append(ctx.id.toString())

        async def increment(self, by=1):
            value = (await self.ctx.storage.get("count") or 0) + by
            await self.ctx.storage.put("count", value)
            return value

        async def count(self):
            return await self.ctx.storage.get("count") or 0

        async def fetch(self, request):
            body = await request.text()
            return Response(f"{request.method} {request.url} {body} count={await self.count()}")

        def who(self):
            return {"id": self.ctx.id.toString(), "name": self.ctx.id.name, "tags": ["a"]}

        async def fail(self, why):
            raise ValueError(why)

        async def store(self, key, value):
            await self.ctx.storage.put(key, value)

        async def load(self, key):
            return await self.ctx.storage.get(key)

        def echo(self, value):
            return value

        async def stop(self, reason):
            await self.ctx.storage.put("stopped", reason)
            self.ctx.abort(reason)

        def _private(self):
            return "never"

        note = "not a method"

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            stub = self.env.COUNTER.getByName("front")
            await stub.increment()
            reply = await stub.fetch("https://object/x", method="POST", body="hi")
            return Response(await reply.text())
"""


@pytest.fixture
async def edges(tmp_path):
    factory = Edges(tmp_path)
    yield factory
    await factory.aclose()


async def test_ids_are_64_hex_digits_deterministic_by_name_and_checked(edges: Edges) -> None:
    edge = await edges.make(COUNTER, bindings=[{"name": "COUNTER", "class_name": "Counter"},
                                               {"name": "OTHER", "class_name": "Other"}],
                            migrations=[{"tag": "v1", "new_sqlite_classes": ["Counter", "Other"]}],
                            start=False)
    env = env_at(edge, "LHR")
    first, again = env.COUNTER.idFromName("room"), env_at(edge, "SFO").COUNTER.idFromName("room")
    assert re.fullmatch(r"[0-9a-f]{64}", first.toString())
    assert first.equals(again) and first == again and first.name == "room"
    assert env.OTHER.idFromName("room").toString() != first.toString()  # ids are per namespace
    assert env.COUNTER.idFromString(first.toString()).equals(first)
    assert env.COUNTER.idFromString(first.toString()).name is None
    unique = env.COUNTER.newUniqueId()
    assert unique.name is None and unique != env.COUNTER.newUniqueId()
    with pytest.raises(TypeError, match="not 64 hex digits"):
        env.COUNTER.idFromString("abc")
    with pytest.raises(TypeError, match="not made by this namespace"):
        env.COUNTER.idFromString(env.OTHER.idFromName("room").toString())
    with pytest.raises(TypeError, match="cannot be used with another"):
        env.COUNTER.get(env.OTHER.newUniqueId())
    eu = env.COUNTER.jurisdiction("eu")
    assert eu.idFromName("room") != first and eu.newUniqueId().jurisdiction == "eu"
    assert env.COUNTER.idFromString(eu.idFromName("room").toString()).jurisdiction == "eu"
    assert env.COUNTER.newUniqueId(jurisdiction="fedramp").jurisdiction == "fedramp"
    with pytest.raises(TypeError, match="Unknown jurisdiction 'mars'"):
        env.COUNTER.jurisdiction("mars")
    with pytest.raises(TypeError, match="Unknown locationHint"):
        env.COUNTER.get(first, locationHint="moon")


async def test_fetch_and_rpc_through_the_front_door(edges: Edges, open_client) -> None:
    edge = await edges.make(COUNTER)
    reply = await open_client(edge).get("/")
    assert reply.status_code == 200
    assert reply.text == "POST https://object/x hi count=1"
    stub = env_at(edge, "LHR").COUNTER.getByName("front")
    assert await stub.increment(2) == 3
    who = await stub.who()
    assert isinstance(who, JsDict) and who.name == "front" and who.id == stub.id.toString() and who.tags == ["a"]
    assert stub.name == "front"


async def test_a_hundred_concurrent_increments_from_six_pops_count_exactly_a_hundred(edges: Edges) -> None:
    pops = ("LHR", "SFO", "DFW", "NRT", "SYD", "GRU")
    edge = await edges.make(COUNTER, pops=pops)
    stubs = [env_at(edge, colo).COUNTER.getByName("shared") for colo in pops]
    results = await asyncio.gather(*(stubs[i % len(pops)].increment() for i in range(100)))
    assert sorted(results) == list(range(1, 101))
    assert await stubs[3].count() == 100
    assert edge.script().instance("LHR")[0].module.BUILT.count(stubs[0].id.toString()) == 1  # one live instance


async def test_one_instance_built_with_its_home_pops_env_and_ctx_set_without_super(edges: Edges) -> None:
    edge = await edges.make("""
        from workers import DurableObject

        class Counter(DurableObject):
            def __init__(self, ctx, env):
                self.started_with = (ctx, env)  # no super().__init__

            def check(self):
                return self.ctx is self.started_with[0] and self.env is self.started_with[1]
    """)
    stub = env_at(edge, "SFO").COUNTER.getByName("x")
    assert await stub.check() is True
    live = directory(edge).live[("objects-Counter", stub.id.toString())]
    assert live.home == "SFO"
    assert live.instance.env is env_at(edge, "SFO")
    assert type(live.instance) is edge.script().find_class("SFO", "Counter")
    assert await env_at(edge, "LHR").COUNTER.getByName("x").check() is True
    assert directory(edge).live[("objects-Counter", stub.id.toString())] is live


async def test_block_concurrency_while_in_the_constructor_holds_early_calls(edges: Edges) -> None:
    edge = await edges.make("""
        import asyncio
        from workers import DurableObject

        class Counter(DurableObject):
            def __init__(self, ctx, env):
                super().__init__(ctx, env)
                self.loaded = None
                ctx.blockConcurrencyWhile(self.load)

            async def load(self):
                await asyncio.sleep(0.1)
                self.loaded = await self.ctx.storage.get("seed") or "seeded"

            def seen(self):
                return self.loaded

            async def hold(self, seconds):
                async def slow():
                    await asyncio.sleep(seconds)
                    return "held"
                return await self.ctx.blockConcurrencyWhile(slow)
    """)
    stub = env_at(edge, "LHR").COUNTER.getByName("slow")
    assert await asyncio.gather(*(stub.seen() for _ in range(5))) == ["seeded"] * 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    hold = asyncio.ensure_future(stub.hold(0.2))
    await asyncio.sleep(0.02)
    assert await stub.seen() == "seeded"
    assert loop.time() - started >= 0.18  # the second call waited for the blockConcurrencyWhile
    assert await hold == "held"


async def test_abort_fails_the_call_and_the_next_call_builds_a_fresh_instance(edges: Edges) -> None:
    edge = await edges.make(COUNTER)
    stub = env_at(edge, "LHR").COUNTER.getByName("a")
    built = edge.script().instance("LHR")[0].module.BUILT
    await stub.increment()
    with pytest.raises(JsException, match="DurableObjectAbort: Durable Object aborted: enough"):
        await stub.stop("enough")
    assert await stub.load("stopped") == "enough"
    assert await stub.increment() == 2
    assert built.count(stub.id.toString()) == 2


async def test_rpc_errors_are_clear_and_lose_nothing(edges: Edges) -> None:
    edge = await edges.make(COUNTER)
    stub = env_at(edge, "LHR").COUNTER.getByName("errors")
    await stub.store("kept", "value")
    with pytest.raises(TypeError, match='does not implement the method "missing"'):
        await stub.missing()
    with pytest.raises(TypeError, match='does not implement the method "note"'):
        await stub.note()
    with pytest.raises(AttributeError):
        stub._private  # noqa: B018
    with pytest.raises(TypeError, match='does not implement the method "alarm"'):
        await stub.alarm()
    with pytest.raises(JsException, match="ValueError: disk full"):
        await stub.fail("disk full")
    for bad, kind in (((1, 2), "tuple"), (bytearray(b"x"), "bytearray"), (object(), "object")):
        with pytest.raises(TypeError, match=f"{kind} cannot be sent over RPC"):
            await stub.store("kept", bad)
    too_big = "x" * (StorageLimits().max_value_bytes + 1)
    with pytest.raises(JsException, match="Values cannot be larger than"):
        await stub.store("kept", too_big)
    assert await stub.load("kept") == "value"
    assert await stub.echo({"nested": [1, {"b": b"\x00"}]}) == {"nested": [1, {"b": b"\x00"}]}


async def test_stub_fetch_needs_a_response_and_passes_errors(edges: Edges) -> None:
    edge = await edges.make("""
        from workers import DurableObject, Response

        class Counter(DurableObject):
            async def fetch(self, request):
                if request.url.endswith("/bad"):
                    return "text"
                if request.url.endswith("/raise"):
                    raise KeyError("nope")
                return Response("ok", headers={"x-from": "object"})
    """)
    stub = env_at(edge, "LHR").COUNTER.getByName("f")
    reply = await stub.fetch("https://o/")
    assert isinstance(reply, Response) and reply.headers.get("x-from") == "object"
    with pytest.raises(TypeError, match="must return a workers.Response"):
        await stub.fetch("https://o/bad")
    with pytest.raises(JsException, match="KeyError"):
        await stub.fetch("https://o/raise")


async def test_data_home_and_names_survive_an_edge_restart(edges: Edges) -> None:
    edge = await edges.make(COUNTER)
    stub = env_at(edge, "SFO").COUNTER.getByName("durable")
    assert await stub.increment(5) == 5
    edge = await edges.restart(edge, COUNTER)
    again = env_at(edge, "LHR").COUNTER.getByName("durable")
    assert await again.increment() == 6
    objects = {o["id"]: o for o in directory(edge).describe()}
    assert objects[stub.id.toString()]["home"] == "SFO"  # the home chosen before the restart
    assert objects[stub.id.toString()]["name"] == "durable"
    state_file = edges.state / "v3" / "do" / "objects-Counter" / f"{stub.id.toString()}.sqlite"
    assert state_file.is_file()  # wrangler's layout: do/<worker>-<Class>/<id>.sqlite


LIFECYCLE = """
    import asyncio
    from workers import DurableObject

    VERSION = "{version}"
    BUILT = []

    class Counter(DurableObject):
        def __init__(self, ctx, env):
            super().__init__(ctx, env)
            BUILT.append(VERSION)

        def version(self):
            return VERSION

        async def later(self, key):
            async def write():
                await asyncio.sleep(0.05)
                await self.ctx.storage.put(key, "written after the call")
            self.ctx.waitUntil(write())
            return "returned"

        async def load(self, key):
            return await self.ctx.storage.get(key)

        async def broken_block(self):
            async def fail():
                raise RuntimeError("could not load")
            return await self.ctx.blockConcurrencyWhile(fail)
"""


async def test_a_reloaded_worker_restarts_its_objects_on_the_new_code(edges: Edges) -> None:
    edge = await edges.make(LIFECYCLE.format(version="one"))
    stub = env_at(edge, "LHR").COUNTER.getByName("v")
    assert await stub.version() == "one"
    entry = edges.tmp_path / "main" / "src" / "entry.py"
    entry.write_text(textwrap.dedent(LIFECYCLE.format(version="two")))
    edge.reload(load_config(entry.parent.parent))
    assert await env_at(edge, "LHR").COUNTER.getByName("v").version() == "two"
    assert await stub.version() == "two"  # a stub made before the reload reaches the new instance


async def test_wait_until_work_outlives_the_call(edges: Edges) -> None:
    edge = await edges.make(LIFECYCLE.format(version="one"))
    stub = env_at(edge, "LHR").COUNTER.getByName("w")
    assert await stub.later("k") == "returned"
    assert await stub.load("k") is None
    for _ in range(50):
        if await stub.load("k") is not None:
            break
        await asyncio.sleep(0.02)
    assert await stub.load("k") == "written after the call"


async def test_a_failing_block_concurrency_while_resets_the_object(edges: Edges) -> None:
    edge = await edges.make(LIFECYCLE.format(version="one"))
    stub = env_at(edge, "LHR").COUNTER.getByName("b")
    built = edge.script().instance("LHR")[0].module.BUILT
    with pytest.raises(JsException, match="RuntimeError: could not load"):
        await stub.broken_block()
    assert await stub.version() == "one"
    assert len(built) == 2


async def test_idle_objects_are_evicted_and_built_again_on_their_next_call(edges: Edges) -> None:
    edge = await edges.make(LIFECYCLE.format(version="one"),
                            settings=dataclasses.replace(FAST, evict_after_s=0.1))
    stub = env_at(edge, "LHR").COUNTER.getByName("idle")
    await stub.version()
    key = ("objects-Counter", stub.id.toString())
    for _ in range(100):
        if key not in directory(edge).live:
            break
        await asyncio.sleep(0.02)
    assert key not in directory(edge).live
    assert await stub.version() == "one"
    assert edge.script().instance("LHR")[0].module.BUILT == ["one", "one"]
