"""The Vectorize binding: creating indexes, Cloudflare's V2 calls and shapes, scores per metric against numpy, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vectorize_fixtures import Opener, reference_top_k, unit, upsert_all
from workers import JsDict

from edge_runtime.bindings import OPENERS, OpenBindings, StateDir, vectorize_store
from edge_runtime.bindings.vectorize import VectorizeIndex, open_binding
from edge_runtime.bindings.vectorize_config import (
    VectorizeError,
    VectorizeIndexNotFoundError,
    VectorizeTypeError,
    create_index,
)
from edge_runtime.config import BindingSpec
from edge_runtime.config_error import ConfigError


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
