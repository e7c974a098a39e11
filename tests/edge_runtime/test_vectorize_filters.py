"""Vectorize's metadata filters, checked against a Python reference, and namespaces."""

from __future__ import annotations

import random
from typing import Any

import pytest
from vectorize_fixtures import Opener

from edge_runtime.bindings import vectorize_filters
from edge_runtime.bindings.vectorize_config import VectorizeError


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
