"""The Vectorize binding: Cloudflare's V2 calls and shapes on SQLite and usearch, scores per metric checked
against numpy, metadata filters checked against a Python reference, limits, persistence and rebuilds,
writers from many PoPs and other processes, and a Worker on the edge."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from config_projects import BASE_TOML, make_project
from workers import JsDict

from edge_runtime.bindings import (
    OPENERS,
    OpenBindings,
    StateDir,
    vectorize_filters,
    vectorize_store,
)
from edge_runtime.bindings.vectorize import VectorizeIndex, open_binding, open_index
from edge_runtime.bindings.vectorize_config import (
    VectorizeError,
    VectorizeIndexNotFoundError,
    VectorizeTypeError,
    create_index,
)
from edge_runtime.config import BindingSpec, load_config
from edge_runtime.config_error import ConfigError
from edge_runtime.edge import Edge

Opener = Callable[..., VectorizeIndex]


@pytest.fixture
async def open_docs(tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens index "docs" under tmp_path (created first with the given dimensions and metric)."""
    opened: list[VectorizeIndex] = []

    def open_(dimensions: int | None = 3, metric: str = "cosine") -> VectorizeIndex:
        if dimensions is not None and not (tmp_path / "vectorize" / "docs" / "config.json").exists():
            create_index(StateDir(tmp_path), "docs", dimensions, metric)
        opened.append(open_index(tmp_path, "docs"))
        return opened[-1]

    yield open_
    for index in opened:
        index.close()


def unit(rng: np.random.Generator, count: int, dimensions: int) -> np.ndarray:
    return rng.standard_normal((count, dimensions)).astype(np.float32)


async def upsert_all(index: VectorizeIndex, data: np.ndarray, metadata: list[dict[str, Any]] | None = None) -> None:
    for start in range(0, len(data), 1000):
        await index.upsert([{"id": f"v{i}", "values": data[i].tolist(),
                             **({"metadata": metadata[i]} if metadata else {})}
                            for i in range(start, min(start + 1000, len(data)))])


def reference_top_k(data: np.ndarray, query: np.ndarray, metric: str, top_k: int) -> tuple[list[str], list[float]]:
    """numpy's exact answer, in Cloudflare's terms."""
    data64, query64 = data.astype(np.float64), np.asarray(query, dtype=np.float32).astype(np.float64)
    if metric == "cosine":
        scores = data64 @ query64 / (np.linalg.norm(data64, axis=1) * np.linalg.norm(query64))
    elif metric == "dot-product":
        scores = data64 @ query64
    else:
        scores = np.linalg.norm(data64 - query64, axis=1)
    order = np.argsort(scores if metric == "euclidean" else -scores, kind="stable")[:top_k]
    return [f"v{i}" for i in order], scores[order].tolist()


# --- creating and describing -----------------------------------------------------------------------

async def test_create_index_keeps_its_config_and_describe_gives_cloudflares_fields(tmp_path: Path,
                                                                                   open_docs: Opener) -> None:
    config = create_index(tmp_path, "docs", 384, "dot-product")  # the state root as a Path works too
    assert json.loads((tmp_path / "vectorize" / "docs" / "config.json").read_text())["dimensions"] == 384
    info = await open_docs().describe()
    assert isinstance(info, JsDict) and info.config == {"dimensions": 384, "metric": "dot-product"}
    assert (info.id, info.name, info.dimensions, info.vectorCount) == (config.id, "docs", 384, 0)
    assert info.processedUpToMutation is None and info.processedUpToDatetime is None
    with pytest.raises(ValueError, match="index 'docs' already exists"):
        create_index(StateDir(tmp_path), "docs", 384, "cosine")


@pytest.mark.parametrize(("name", "dimensions", "metric", "message"), [
    ("docs", 0, "cosine", "dimensions must be a whole number from 1 to 1536"),
    ("docs", 1537, "cosine", "dimensions must be a whole number from 1 to 1536"),
    ("docs", 3.0, "cosine", "dimensions must be a whole number"),
    ("docs", 3, "l1", "metric must be one of cosine, euclidean, dot-product"),
    ("../up", 3, "cosine", "an index name is letters, digits"),
])
def test_create_index_refuses_bad_settings(tmp_path: Path, name: str, dimensions: Any, metric: str,
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_index(tmp_path, name, dimensions, metric)
    assert not (tmp_path / "vectorize" / "docs").exists()


# --- writing ---------------------------------------------------------------------------------------

async def test_insert_skips_existing_ids_and_upsert_replaces_the_whole_vector(open_docs: Opener) -> None:
    index = open_docs()
    inserted = await index.insert([{"id": "a", "values": [1, 0, 0], "metadata": {"genre": "drama"}},
                                   {"id": "b", "values": [0, 1, 0]}])
    assert isinstance(inserted.mutationId, str) and (inserted.count, inserted.ids) == (2, ["a", "b"])
    again = await index.insert([{"id": "a", "values": [0, 0, 1]}, {"id": "c", "values": [0, 0, 1]}])
    assert (again.count, again.ids) == (1, ["c"]) and again.mutationId != inserted.mutationId
    assert (await index.getByIds(["a"]))[0] == {"id": "a", "values": [1, 0, 0], "metadata": {"genre": "drama"}}

    upserted = await index.upsert([{"id": "a", "values": [0, 0, 1], "namespace": "films"}])
    assert (upserted.count, upserted.ids) == (1, ["a"])
    # replaced whole: the old metadata is gone, the new namespace is there
    assert await index.getByIds(["a"]) == [{"id": "a", "values": [0, 0, 1], "namespace": "films"}]
    assert (await index.describe()).vectorCount == 3
    best = await index.query([0, 0, 1], topK=3)
    assert {m.id for m in best.matches[:2]} == {"a", "c"} and best.matches[0].score == pytest.approx(1.0)


async def test_get_and_delete_by_ids_and_describe_follows_mutations(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": name, "values": [float(i + 1), 1, 0]} for i, name in enumerate("abcd")])
    got = await index.getByIds(["d", "missing", "a", "d"])
    assert [vector.id for vector in got] == ["d", "a"] and got[0]["values"] == [4, 1, 0]
    deleted = await index.deleteByIds(["b", "missing", "c"])
    assert (deleted.count, deleted.ids) == (2, ["b", "c"])
    info = await index.describe()
    assert info.vectorCount == 2 and info.processedUpToMutation == deleted.mutationId
    assert info.processedUpToDatetime.endswith("Z") and info.processedUpToDatetime.startswith("20")
    assert [m.id for m in (await index.query([1, 1, 0], topK=10)).matches] == ["a", "d"]
    assert await index.getByIds([]) == [] and (await index.deleteByIds([])).count == 0
    with pytest.raises(VectorizeTypeError, match="takes a list of ids"):
        await index.deleteByIds("a")


# --- scores and options ----------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot-product"])
async def test_scores_and_order_follow_the_metric_as_numpy_computes_them(open_docs: Opener, metric: str) -> None:
    rng = np.random.default_rng(7)
    data = unit(rng, 300, 13)
    index = open_docs(13, metric)
    await upsert_all(index, data)
    for query in unit(rng, 5, 13):
        result = await index.query(query.tolist(), topK=20)
        ids, scores = reference_top_k(data, query, metric, 20)
        assert [m.id for m in result.matches] == ids and result.count == 20
        assert [m.score for m in result.matches] == pytest.approx(scores, rel=1e-5, abs=1e-5)
    ordered = [m.score for m in result.matches]
    assert ordered == (sorted(ordered) if metric == "euclidean" else sorted(ordered, reverse=True))


async def test_query_options_as_keywords_or_a_dict_and_what_they_return(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0], "metadata": {"n": {"deep": True}}, "namespace": "x"},
                        {"id": "b", "values": [0.5, 0.5, 0]}])
    plain = await index.query([1, 0, 0])
    assert plain.matches[0] == {"id": "a", "score": pytest.approx(1.0), "namespace": "x"}
    full = await index.query([1, 0, 0], {"topK": 1, "returnValues": True, "returnMetadata": "all"})
    assert full == {"matches": [{"id": "a", "score": pytest.approx(1.0), "values": [1, 0, 0], "namespace": "x",
                                 "metadata": {"n": {"deep": True}}}], "count": 1}
    assert full.matches[0].metadata.n.deep is True  # JsDicts all the way down
    for level in (True, "indexed"):
        assert (await index.query([1, 0, 0], topK=1, returnMetadata=level)).matches[0].metadata == {"n": {"deep": True}}
    for level in (False, "none"):
        assert "metadata" not in (await index.query([1, 0, 0], topK=1, returnMetadata=level)).matches[0]
    assert (await index.query([1, 0, 0], None, topK=2)).count == 2
    with pytest.raises(VectorizeTypeError, match="unknown option 'top_k'"):
        await index.query([1, 0, 0], top_k=3)
    with pytest.raises(VectorizeError, match='Invalid returnMetadata option. Expected: true, false, "none", '
                                             '"indexed" or "all"; got: \'some\''):
        await index.query([1, 0, 0], returnMetadata="some")


async def test_query_by_id_searches_with_the_stored_vector(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0]}, {"id": "b", "values": [0.9, 0.1, 0]},
                        {"id": "c", "values": [0, 0, 1]}])
    result = await index.queryById("b", topK=2, returnValues=True)
    assert [m.id for m in result.matches] == ["b", "a"] and result.matches[0]["values"] == pytest.approx([0.9, 0.1, 0])
    with pytest.raises(VectorizeError, match=r"^VECTOR_QUERY_ERROR: no vector with id 'zz' in index 'docs'"):
        await index.queryById("zz")


@pytest.mark.parametrize(("options", "limit"), [
    ({"topK": 101}, "from 1 to 100 without"), ({"topK": 0}, "from 1 to 100"), ({"topK": 5.0}, "from 1 to 100"),
    ({"topK": 51, "returnValues": True}, "from 1 to 50 with"),
    ({"topK": 51, "returnMetadata": "all"}, "from 1 to 50 with"),
    ({"topK": 51, "returnMetadata": True}, "from 1 to 50 with"),
])
async def test_top_k_has_cloudflares_limits(open_docs: Opener, options: dict[str, Any], limit: str) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0]}])
    with pytest.raises(VectorizeError, match=f"^VECTOR_QUERY_ERROR: topK must be a whole number {limit}"):
        await index.query([1, 0, 0], **options)


async def test_the_largest_top_k_each_level_allows_is_taken(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": f"v{i}", "values": [1, i, 0]} for i in range(120)])
    assert (await index.query([1, 0, 0], topK=100, returnMetadata="indexed")).count == 100
    assert (await index.query([1, 0, 0], topK=50, returnValues=True, returnMetadata="all")).count == 50


# --- bad input changes nothing ---------------------------------------------------------------------

@pytest.mark.parametrize(("bad", "error", "message"), [
    ({"id": "x", "values": [1, 0]}, VectorizeError, "vector 'x' has 2 dimensions, but the index has 3"),
    ({"id": "é" * 33, "values": [1, 0, 0]}, VectorizeError, "id must be 1 to 64 bytes of UTF-8, got 66"),
    ({"id": "", "values": [1, 0, 0]}, VectorizeError, "id must be 1 to 64 bytes"),
    ({"id": 5, "values": [1, 0, 0]}, VectorizeTypeError, "id must be a str, got int"),
    ({"id": "x", "values": (1, 0, 0)}, VectorizeTypeError, "must be a list of numbers, got tuple"),
    ({"id": "x", "values": [1, float("nan"), 0]}, VectorizeError, "NaN or an infinite value"),
    ({"id": "x", "values": [1, 0, 0], "metadata": {"text": "x" * 10_240}}, VectorizeError,
     r"metadata is 10251 bytes as JSON, over the limit of 10240"),
    ({"id": "x", "values": [1, 0, 0], "metadata": {"when": object()}}, VectorizeTypeError, "metadata is not JSON"),
    ({"id": "x", "values": [1, 0, 0], "namespace": "n" * 65}, VectorizeError, "namespace must be 1 to 64 bytes"),
    ({"id": "x", "vector": [1, 0, 0]}, VectorizeTypeError, "unknown key 'vector'"),
    ("x", VectorizeTypeError, "must be a dict with id and values"),
])
async def test_a_bad_vector_is_refused_and_its_batch_changes_nothing(open_docs: Opener, bad: Any,
                                                                     error: type[Exception], message: str) -> None:
    index = open_docs()
    for write in (index.insert, index.upsert):
        with pytest.raises(error, match=message):
            await write([{"id": "good", "values": [1, 0, 0]}, bad])
    info = await index.describe()
    assert info.vectorCount == 0 and info.processedUpToMutation is None


async def test_too_many_vectors_in_one_call_and_bad_queries_are_refused(open_docs: Opener) -> None:
    index = open_docs()
    with pytest.raises(VectorizeError, match="1001 vectors in one call, over the limit of 1000"):
        await index.upsert([{"id": f"v{i}", "values": [1, 0, 0]} for i in range(1001)])
    with pytest.raises(VectorizeTypeError, match="takes a list of vectors, got dict"):
        await index.insert({"id": "a", "values": [1, 0, 0]})
    with pytest.raises(VectorizeError, match="^VECTOR_QUERY_ERROR: the query vector has 4 dimensions, but the index "
                                             "has 3"):
        await index.query([1, 0, 0, 0])
    with pytest.raises(VectorizeError, match="the vector id must be 1 to 64 bytes"):
        await index.queryById("x" * 65)
    assert (await index.describe()).vectorCount == 0


# --- metadata filters ------------------------------------------------------------------------------

FILMS = [
    ("alien", {"genre": "horror", "year": 1979, "info": {"rating": 8.5, "studio": "fox"}, "color": True}),
    ("heat", {"genre": "drama", "year": 1995, "info": {"rating": 8.3}, "color": True}),
    ("psycho", {"genre": "horror", "year": 1960, "info": {"rating": 8.5, "studio": "paramount"}, "color": False}),
    ("rocky", {"genre": "drama", "year": "1976", "color": True}),  # a year as text
    ("up", {"genre": "animation", "year": 2009, "info": {"rating": 8.3, "studio": "pixar"}}),
    ("blank", None),
]


@pytest.mark.parametrize(("filter_", "expected"), [
    ({"genre": "drama"}, {"heat", "rocky"}),  # implicit $eq
    ({"genre": {"$eq": "horror"}}, {"alien", "psycho"}),
    ({"genre": {"$ne": "horror"}}, {"heat", "rocky", "up", "blank"}),  # $ne matches vectors without the key
    ({"genre": {"$in": ["drama", "animation"]}}, {"heat", "rocky", "up"}),
    ({"genre": {"$nin": ["drama", "animation"]}}, {"alien", "psycho", "blank"}),
    ({"year": {"$gte": 1979}}, {"alien", "heat", "up"}),  # numbers compare with numbers only
    ({"year": {"$gt": 1960, "$lt": 2000}}, {"alien", "heat"}),
    ({"year": {"$lte": "1980"}}, {"rocky"}),  # strings compare with strings
    ({"year": 1976}, set()), ({"year": "1976"}, {"rocky"}),
    ({"info.rating": 8.5}, {"alien", "psycho"}),  # a dot reaches into nested metadata
    ({"info.studio": {"$in": ["pixar", "fox"]}, "info.rating": {"$lt": 8.4}}, {"up"}),  # keys are ANDed
    ({"color": True}, {"alien", "heat", "rocky"}), ({"color": False}, {"psycho"}),
    ({"color": {"$ne": True}}, {"psycho", "up", "blank"}),
    ({"color": 1}, set()),  # a boolean is not the number 1
    ({"info": None}, {"rocky", "blank"}),  # null: the key is missing or null
    ({"genre": "horror", "color": True}, {"alien"}),
])
async def test_metadata_filters(open_docs: Opener, filter_: dict[str, Any], expected: set[str]) -> None:
    index = open_docs()
    await index.upsert([{"id": name, "values": [1, i, 0], **({"metadata": meta} if meta else {})}
                        for i, (name, meta) in enumerate(FILMS)])
    result = await index.query([1, 1, 0], topK=10, filter=filter_)
    assert {m.id for m in result.matches} == expected
    assert (await index.query([1, 1, 0], {"topK": 10, "filter": filter_})).count == len(expected)


MISSING = object()


def lookup(metadata: dict[str, Any] | None, key: str) -> Any:
    value: Any = metadata
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def same(stored: Any, wanted: Any) -> bool:
    if wanted is None:
        return stored is MISSING or stored is None
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return type(stored) is type(wanted) and stored == wanted
    if isinstance(wanted, str):
        return isinstance(stored, str) and stored == wanted
    return type(stored) in (int, float) and stored == wanted


def passes(metadata: dict[str, Any] | None, filter_: dict[str, Any]) -> bool:
    """The reference: a filter evaluated on Python values."""
    for key, condition in filter_.items():
        stored = lookup(metadata, key)
        for operator, wanted in (condition if isinstance(condition, dict) else {"$eq": condition}).items():
            if operator in ("$eq", "$ne"):
                ok = same(stored, wanted) == (operator == "$eq")
            elif operator in ("$in", "$nin"):
                ok = any(same(stored, w) for w in wanted) == (operator == "$in")
            else:
                kind_ok = (isinstance(stored, str) if isinstance(wanted, str)
                           else type(stored) in (int, float))
                compare = {"$lt": lambda a, b: a < b, "$lte": lambda a, b: a <= b, "$gt": lambda a, b: a > b,
                           "$gte": lambda a, b: a >= b}[operator]
                ok = kind_ok and compare(stored, wanted)
            if not ok:
                return False
    return True


POOLS: dict[str, list[Any]] = {
    "genre": ["drama", "horror", "Drama", "", 5, True, None],
    "year": [1960, 1979, 1995, 2009, 1979.5, "1979", False],
    "info.rating": [7.0, 8.3, 8.5, 9, "8.5", None],
    "info.studio": ["fox", "pixar", "ñu", "zz", 0],
    "flag": [True, False, 1, 0, "true"],
}


def random_metadata(rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.1:
        return None
    metadata: dict[str, Any] = {}
    for key, pool in POOLS.items():
        if rng.random() < 0.8:
            target = metadata
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = rng.choice(pool)
    return metadata


def random_condition(rng: random.Random, pool: list[Any]) -> Any:
    operator = rng.choice(["=", "$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte"])
    if operator == "=":
        return rng.choice(pool)
    if operator in ("$eq", "$ne"):
        return {operator: rng.choice(pool)}
    if operator in ("$in", "$nin"):
        return {operator: rng.sample([v for v in pool if v is not None], rng.randint(1, 3))}
    return {operator: rng.choice([v for v in pool if isinstance(v, (str, int, float)) and not isinstance(v, bool)])}


async def test_filters_select_what_a_python_reference_selects_on_random_metadata(open_docs: Opener) -> None:
    rng = random.Random(11)
    metadata = [random_metadata(rng) for _ in range(300)]
    index = open_docs()
    await index.upsert([{"id": f"v{i}", "values": [1, i, 0], **({"metadata": m} if m else {})}
                        for i, m in enumerate(metadata)])
    for _ in range(120):
        keys = rng.sample(sorted(POOLS), rng.randint(1, 2))
        filter_ = {key: random_condition(rng, POOLS[key]) for key in keys}
        expected = {f"v{i}" for i, m in enumerate(metadata) if passes(m, filter_)}
        assert vectorize_filters.compile_filter(filter_)  # compiles on its own
        got = await index.query([1, 0, 0], topK=100, filter=filter_)
        assert len(expected) > 100 or {m.id for m in got.matches} == expected, filter_


@pytest.mark.parametrize(("filter_", "message"), [
    ({}, "the filter must be a non-empty dict"),
    ([("genre", "drama")], "the filter must be a non-empty dict"),
    ({"$or": [{"a": 1}]}, r"key '\$or' must be a non-empty string .* not starting with '\$'"),
    ({"genre": {"$regex": "dr"}}, r"genre: unknown operator '\$regex'"),
    ({"genre": {}}, "genre: an empty operator dict"),
    ({"genre": {"$in": "drama"}}, r"genre: \$in takes a non-empty list"),
    ({"genre": {"$nin": []}}, r"genre: \$nin takes a non-empty list"),
    ({"genre": {"$in": [None]}}, r"genre: \$in takes a non-empty list"),
    ({"year": {"$lt": None}}, r"year: \$lt compares with a string or a number, got None"),
    ({"year": {"$gte": True}}, r"year: \$gte compares with a string or a number"),
    ({"genre": ["drama"]}, r"genre: \$eq takes a string, number, boolean or null, got \['drama'\]"),
    ({"year": {"$eq": 2**64}}, r"\$eq takes a string, number"),
    ({"info..rating": 1}, "has an empty part between dots"),
    ({'say"what': 1}, "without '\"'"),
    ({"k" * 513: 1}, "at most 512 characters"),
    ({"genre": {"$in": ["x" * 60] * 40}}, "over the limit of 2047"),
])
async def test_a_bad_filter_is_a_clear_error(open_docs: Opener, filter_: Any, message: str) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0], "metadata": {"genre": "drama"}}])
    with pytest.raises(VectorizeError, match=f"^VECTOR_QUERY_ERROR: invalid filter: .*{message}"):
        await index.query([1, 0, 0], filter=filter_)


async def test_namespaces_narrow_a_query_and_come_back_in_matches(open_docs: Opener) -> None:
    index = open_docs()
    await index.upsert([{"id": "a", "values": [1, 0, 0], "namespace": "en", "metadata": {"k": 1}},
                        {"id": "b", "values": [1, 0.1, 0], "namespace": "fr", "metadata": {"k": 1}},
                        {"id": "c", "values": [1, 0.2, 0]}])
    assert [m.id for m in (await index.query([1, 0, 0])).matches] == ["a", "b", "c"]
    in_fr = await index.query([1, 0, 0], namespace="fr")
    assert in_fr.matches == [{"id": "b", "score": pytest.approx(0.995, abs=1e-3), "namespace": "fr"}]
    assert (await index.query([1, 0, 0], namespace="en", filter={"k": 1})).matches[0].id == "a"
    assert (await index.query([1, 0, 0], namespace="de")).count == 0


# --- approximate search above the exact threshold --------------------------------------------------

async def test_above_the_exact_threshold_search_is_approximate_and_filters_still_fill_top_k(
        open_docs: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectorize_store, "EXACT_MAX_VECTORS", 100)
    monkeypatch.setattr(vectorize_store, "FILTERED_EXACT_MAX_VECTORS", 50)
    rng = np.random.default_rng(3)
    data = unit(rng, 3000, 24)
    groups = [{"group": i % 20, "rare": i % 500 == 0} for i in range(len(data))]
    index = open_docs(24, "cosine")
    await upsert_all(index, data, groups)
    hits, filtered_hits = 0, 0
    queries = unit(rng, 20, 24)
    for query in queries:
        got = await index.query(query.tolist(), topK=10)
        hits += len({m.id for m in got.matches} & set(reference_top_k(data, query, "cosine", 10)[0]))
        # 150 vectors pass: more than the exact threshold, so the graph is searched wider until 10 pass
        in_group = await index.query(query.tolist(), topK=10, filter={"group": 7}, returnMetadata="all")
        assert in_group.count == 10 and all(m.metadata["group"] == 7 for m in in_group.matches)
        members = np.arange(7, len(data), 20)
        expected = {f"v{members[int(i[1:])]}" for i in reference_top_k(data[members], query, "cosine", 10)[0]}
        filtered_hits += len({m.id for m in in_group.matches} & expected)
        # 6 pass: scored exactly
        rare = await index.query(query.tolist(), topK=10, filter={"rare": True})
        assert {m.id for m in rare.matches} == {f"v{i}" for i in range(0, 3000, 500)}
    assert hits / (10 * len(queries)) >= 0.9
    assert filtered_hits / (10 * len(queries)) >= 0.9


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


# --- where the index's config comes from -----------------------------------------------------------

async def test_an_index_never_created_says_how_to_create_it(tmp_path: Path) -> None:
    index = open_binding(BindingSpec("vectorize", "INDEX", {"binding": "INDEX", "index_name": "docs"}),
                         StateDir(tmp_path))
    try:
        with pytest.raises(VectorizeIndexNotFoundError, match=r"index 'docs' \(env.INDEX\) does not exist yet: "
                                                              r"create it with `edgewise vectorize create docs "
                                                              r"--dimensions N --metric cosine`"):
            await index.query([1, 0, 0])
        create_index(StateDir(tmp_path), "docs", 3, "cosine")  # as the CLI would, while dev runs
        await index.upsert([{"id": "a", "values": [1, 0, 0]}])
        assert (await index.describe()).vectorCount == 1
    finally:
        index.close()


async def test_dimensions_and_metric_in_the_config_create_the_index(tmp_path: Path) -> None:
    settings = {"binding": "INDEX", "index_name": "docs", "dimensions": 2, "metric": "euclidean"}
    index = open_binding(BindingSpec("vectorize", "INDEX", settings), StateDir(tmp_path))
    await index.upsert([{"id": "a", "values": [3, 4]}])
    assert (await index.query([0, 0])).matches[0].score == pytest.approx(5.0)  # a euclidean distance
    index.close()
    assert json.loads((tmp_path / "vectorize" / "docs" / "config.json").read_text())["metric"] == "euclidean"

    clash = open_binding(BindingSpec("vectorize", "INDEX", {**settings, "dimensions": 3}), StateDir(tmp_path))
    with pytest.raises(VectorizeError, match="index 'docs' was created with 2 dimensions and metric euclidean, but "
                                             "env.INDEX's config says 3 and euclidean"):
        await clash.describe()
    clash.close()


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "index_name is required"),
    ({"index_name": "../docs"}, "index_name: an index name is letters"),
    ({"index_name": "docs", "dimensions": "384"}, "dimensions must be a whole number"),
    ({"index_name": "docs", "dimensions": 384, "metric": "manhattan"}, "metric must be one of"),
    ({"index_name": "docs", "metric": "cosine"}, "metric is set but dimensions is not"),
])
def test_bad_vectorize_settings_are_config_errors(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_binding(BindingSpec("vectorize", "INDEX", {"binding": "INDEX", **settings}), StateDir(tmp_path))


def test_vectorize_is_a_kind_edgewise_runs(tmp_path: Path) -> None:
    assert OPENERS["vectorize"] == "vectorize"
    declared = OpenBindings((BindingSpec("vectorize", "INDEX", {"binding": "INDEX", "index_name": "docs"}),),
                            StateDir(tmp_path))
    assert isinstance(declared.by_name["INDEX"], VectorizeIndex) and declared.unsupported == []
    declared.close()


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
