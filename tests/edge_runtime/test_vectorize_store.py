"""Vectorize's store: persistence and rebuilds, writers from many PoPs and other processes, and a Worker on the edge."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from config_projects import BASE_TOML, make_project
from vectorize_fixtures import Opener, reference_top_k, unit, upsert_all

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.vectorize import open_index
from edge_runtime.bindings.vectorize_config import VectorizeError, create_index
from edge_runtime.config import load_config
from edge_runtime.edge import Edge


# --- persistence -----------------------------------------------------------------------------------

async def test_the_index_survives_reopening_and_a_missing_or_stale_graph_is_rebuilt(open_docs: Opener,
                                                                                    tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = unit(rng, 400, 8)
    index = open_docs(8, "euclidean")
    await upsert_all(index, data[:300])
    query = data[0].tolist()
    before = await index.query(query, topK=10, returnValues=True)
    index.close()
    folder = tmp_path / "vectorize" / "docs"
    assert {path.name for path in folder.iterdir()} >= {"config.json", "vectors.sqlite", "ann.usearch", "ann.json"}
    with pytest.raises(VectorizeError, match="env.docs is closed"):
        await index.query(query)

    assert await open_docs().query(query, topK=10, returnValues=True) == before
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("ann.usearch", "ann.json"):
        shutil.copy(folder / name, stale / name)
    (folder / "ann.usearch").unlink()
    reopened = open_docs()
    assert await reopened.query(query, topK=10, returnValues=True) == before  # rebuilt from SQLite
    await upsert_all(reopened, data)  # 100 more vectors, and the first 300 again
    await reopened.deleteByIds(["v1"])
    reopened.close()

    for name in ("ann.usearch", "ann.json"):  # a graph saved before those writes
        shutil.copy(stale / name, folder / name)
    caught_up = open_docs()
    ids, _ = reference_top_k(np.delete(data, 1, axis=0), data[350], "euclidean", 5)
    renamed = [f"v{int(i[1:]) + (int(i[1:]) >= 1)}" for i in ids]  # positions after the deleted row
    assert [m.id for m in (await caught_up.query(data[350].tolist(), topK=5)).matches] == renamed
    assert (await caught_up.describe()).vectorCount == 399
    caught_up.close()

    (folder / "ann.usearch").write_bytes(b"not a graph")
    assert (await open_docs().describe()).vectorCount == 399
    assert [m.id for m in (await open_docs().query(data[350].tolist(), topK=5)).matches] == renamed


async def test_writes_of_another_process_are_seen_at_the_next_call(open_docs: Opener) -> None:
    dev, cli = open_docs(), open_docs()  # as `edgewise dev` and the CLI, on the same files
    await dev.upsert([{"id": "a", "values": [1, 0, 0]}])
    assert (await cli.query([1, 0, 0])).matches[0].id == "a"
    await cli.insert([{"id": "b", "values": [0, 1, 0]}])
    await cli.deleteByIds(["a"])
    assert [m.id for m in (await dev.query([1, 0, 0])).matches] == ["b"]
    assert (await dev.describe()).vectorCount == 1


def test_the_cli_can_use_an_index_through_asyncio_run(tmp_path: Path) -> None:
    create_index(tmp_path, "docs", 2, "dot-product")
    index = open_index(tmp_path, "docs")
    try:
        assert asyncio.run(index.insert([{"id": "a", "values": [2, 1]}, {"id": "b", "values": [1, 3]}])).count == 2
        best = asyncio.run(index.query([1, 0], topK=2))
        assert [(m.id, m.score) for m in best.matches] == [("a", 2.0), ("b", 1.0)]  # dot products
        assert asyncio.run(index.describe()).vectorCount == 2
    finally:
        index.close()


# --- concurrency -----------------------------------------------------------------------------------

async def test_six_pops_of_fifty_writers_lose_nothing(open_docs: Opener) -> None:
    shared, other = open_docs(), open_docs()  # every PoP's binding, and another process's

    async def write(pop: int, writer: int) -> None:
        target = other if pop % 3 == 0 else shared
        await target.upsert([{"id": f"p{pop}-w{writer}", "values": [1, pop, writer],
                              "metadata": {"pop": pop}}])

    await asyncio.gather(*(write(pop, writer) for pop in range(6) for writer in range(50)))
    assert (await shared.describe()).vectorCount == 300 and (await other.describe()).vectorCount == 300
    ids = [f"p{pop}-w{writer}" for pop in range(6) for writer in range(50)]
    assert [vector.id for vector in await shared.getByIds(ids)] == ids
    for pop in range(6):
        in_pop = await shared.query([1, pop, 25], topK=100, filter={"pop": pop})
        assert in_pop.count == 50
    assert (await other.query([1, 5, 49], topK=1)).matches[0].id == "p5-w49"


async def test_work_runs_off_the_event_loop(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0]}])
    store = index._store
    assert store is not None
    store.lock.acquire()  # as a long search holding the index would
    threading.Timer(0.3, store.lock.release).start()
    query = asyncio.create_task(index.query([1, 0, 0]))
    started, ticks = time.perf_counter(), 0
    while not query.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert (await query).matches[0].id == "a"
    assert ticks >= 10, f"only {ticks} ticks in {time.perf_counter() - started:.3f} s"


# --- end to end: a Worker on the edge, then a restart ------------------------------------------------

SEARCH_WORKER = """\
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method == "POST":
            mutation = await self.env.INDEX.upsert(await request.json())
            return Response.json({"mutationId": mutation.mutationId})
        found = await self.env.INDEX.query([1.0, 0.0, 0.0, 0.0], topK=2, returnMetadata="all",
                                           filter={"lang": "en"})
        return Response.json({"count": found.count, "matches": found.matches})
"""

SEARCH_TOML = BASE_TOML + """
[[vectorize]]
binding = "INDEX"
index_name = "docs"
"""


async def call_edge(project: Path, method: str, body: Any = None) -> httpx.Response:
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.request(method, "/", json=body)
    finally:
        await edge.aclose()


async def test_a_worker_upserts_and_queries_and_a_restarted_edge_reads_the_same_index(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": SEARCH_TOML, "src/entry.py": SEARCH_WORKER})
    create_index(StateDir.for_config(load_config(project)), "docs", 4, "cosine")
    vectors = [{"id": "intro", "values": [1, 0, 0, 0], "metadata": {"lang": "en", "title": "Intro"}},
               {"id": "einfuehrung", "values": [1, 0, 0, 0], "metadata": {"lang": "de"}},
               {"id": "setup", "values": [1, 1, 0, 0], "metadata": {"lang": "en", "title": "Setup"}},
               {"id": "faq", "values": [0, 0, 1, 0], "metadata": {"lang": "en"}}]
    written = await call_edge(project, "POST", vectors)
    assert written.status_code == 200, written.text
    assert isinstance(written.json()["mutationId"], str)

    restarted = await call_edge(project, "GET")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json() == {"count": 2, "matches": [
        {"id": "intro", "score": pytest.approx(1.0), "metadata": {"lang": "en", "title": "Intro"}},
        {"id": "setup", "score": pytest.approx(0.7071, abs=1e-4), "metadata": {"lang": "en", "title": "Setup"}}]}
    assert (tmp_path / ".wrangler" / "state" / "v3" / "vectorize" / "docs" / "vectors.sqlite").is_file()
