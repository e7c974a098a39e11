"""`[edgewise] kv_propagation_ms`: a KV write is seen at once at its own PoP and only after the delay at
the others (Cloudflare's eventual consistency); off by default, when every PoP sees it at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from edge_runtime.bindings.kv import DATABASE_FILE, KvNamespace
from edge_runtime.bindings.kv_propagation import KvPropagation
from edge_runtime.bindings.kv_store import KvStore
from edge_runtime.config import ConfigError, load_config
from edge_runtime.config_schema import EdgewiseConfig
from edge_runtime.edge import Edge

DELAY_S = 2.0


class Clock:
    """Monotonic time the test moves forward."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[KvNamespace]:
    namespace = KvNamespace("CACHE", KvStore(tmp_path / DATABASE_FILE))
    yield namespace
    namespace.close()


@pytest.fixture
def pops(shared: KvNamespace, clock: Clock) -> tuple[KvNamespace, KvNamespace]:
    propagation = KvPropagation(DELAY_S, clock)
    return propagation.for_pop(shared, "LHR"), propagation.for_pop(shared, "SIN")


async def test_a_put_is_seen_at_its_pop_at_once_and_elsewhere_after_the_delay(pops, clock: Clock) -> None:
    lhr, sin = pops
    await lhr.put("k", "v1", metadata={"n": 1})
    assert await lhr.get("k") == "v1"
    assert await sin.get("k") is None
    assert (await sin.list())["keys"] == []
    clock.now += DELAY_S - 0.01
    assert await sin.get("k") is None
    clock.now += 0.02
    assert await sin.get("k") == "v1"
    assert (await sin.getWithMetadata("k")).metadata == {"n": 1}
    assert [key.name for key in (await sin.list())["keys"]] == ["k"]


async def test_an_overwrite_elsewhere_shows_the_previous_value_and_metadata(pops, clock: Clock) -> None:
    lhr, sin = pops
    await lhr.put("k", "old", metadata={"v": "old"})
    clock.now += DELAY_S
    await lhr.put("k", "new", metadata={"v": "new"})
    await lhr.put("other", "x")
    assert await lhr.get("k") == "new"
    seen = await sin.getWithMetadata("k")
    assert (seen.value, seen.metadata) == ("old", {"v": "old"})
    bulk = await sin.get(["k", "other"])
    assert (bulk["k"], bulk["other"]) == ("old", None)
    assert [(key.name, key.metadata) for key in (await sin.list())["keys"]] == [("k", {"v": "old"})]
    clock.now += DELAY_S
    assert await sin.get(["k", "other"]) == {"k": "new", "other": "x"}


async def test_a_delete_is_seen_elsewhere_after_the_delay(pops, clock: Clock) -> None:
    lhr, sin = pops
    await sin.put("k", "v")
    clock.now += DELAY_S
    await sin.delete("k")
    assert await sin.get("k") is None
    assert await lhr.get("k") == "v"
    clock.now += DELAY_S
    assert await lhr.get("k") is None


async def test_the_last_writer_sees_its_write_and_the_first_sees_what_it_replaced(pops, clock: Clock) -> None:
    lhr, sin = pops
    await lhr.put("k", "from LHR")
    await sin.put("k", "from SIN")
    assert await sin.get("k") == "from SIN"
    assert await lhr.get("k") == "from LHR"
    clock.now += DELAY_S
    assert await lhr.get("k") == "from SIN"


def test_the_setting_is_off_by_default_and_must_be_a_number_at_least_zero() -> None:
    assert EdgewiseConfig().kv_propagation_ms == 0
    assert EdgewiseConfig(kv_propagation_ms=250).kv_propagation_ms == 250.0
    for bad in (-1, "2000", True, float("nan")):
        with pytest.raises(ConfigError, match="kv_propagation_ms"):
            EdgewiseConfig(kv_propagation_ms=bad)


WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "PUT":
            await self.env.CACHE.put("greeting", await request.text())
        elif request.method == "DELETE":
            await self.env.CACHE.delete("greeting")
        return Response.json({"colo": request.cf.colo, "value": await self.env.CACHE.get("greeting")})
"""
KV = '\n[[kv_namespaces]]\nbinding = "CACHE"\nid = "propagation"\n'


def at(colo: str) -> dict[str, str]:
    return {"edgewise-client-location": colo}


async def read(client: httpx.AsyncClient, colo: str, method: str = "GET", content: str | None = None) -> str | None:
    response = await client.request(method, "/", headers=at(colo), content=content)
    assert response.status_code == 200, response.text
    assert response.json()["colo"] == colo
    return response.json()["value"]


def kv_edge(worker_project: Callable[..., Path], **edgewise: float) -> Edge:
    root = worker_project(WORKER, pops=("LHR", "SIN"), edgewise=edgewise)
    with (root / "wrangler.toml").open("a") as toml:
        toml.write(KV)
    return Edge(load_config(root))


async def test_off_by_default_a_worker_write_is_seen_at_every_pop_at_once(worker_project, open_client) -> None:
    edge = kv_edge(worker_project)
    try:
        client = open_client(edge)
        assert await read(client, "LHR", "PUT", "hello") == "hello"
        assert await read(client, "SIN") == "hello"
    finally:
        await edge.aclose()


async def test_a_worker_write_reaches_the_other_pop_after_the_delay(worker_project, open_client) -> None:
    edge = kv_edge(worker_project, kv_propagation_ms=300)
    try:
        client = open_client(edge)
        assert await read(client, "LHR", "PUT", "hello") == "hello"
        assert await read(client, "SIN") is None
        await asyncio.sleep(0.35)
        assert await read(client, "SIN") == "hello"
        assert await read(client, "SIN", "DELETE") is None
        assert await read(client, "LHR") == "hello"
        await asyncio.sleep(0.35)
        assert await read(client, "LHR") is None
    finally:
        await edge.aclose()
