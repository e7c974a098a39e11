"""The Vectorize binding (``vectorize``): a vector index with Cloudflare's V2 calls, on SQLite and usearch.

Each index lives in ``<state>/vectorize/<index_name>/``: ``config.json`` (``vectorize_config.py``),
and ``vectors.sqlite`` with usearch's HNSW graph beside it (``vectorize_store.py``); metadata filters
become SQL in ``vectorize_filters.py``. This module checks what a Worker passes and opens the index.

Every PoP shares one binding; its work runs on worker threads under one lock, never on the event
loop. Mutations are applied before the call returns (Cloudflare applies them asynchronously).
Another process (the CLI) may write the same index meanwhile: each call first applies the mutations
the log holds beyond those this process has seen.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from edgewise_sdk.workers import JsDict

from ..config_error import ConfigError
from . import StateDir
from .vectorize_config import (
    CONFIG_FILE,
    DEFAULT_TOP_K,
    MAX_BATCH,
    MAX_ID_BYTES,
    MAX_METADATA_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_TOP_K,
    MAX_TOP_K_WITH_DATA,
    METADATA_LEVELS,
    QUERY_OPTIONS,
    VECTOR_KEYS,
    IndexConfig,
    VectorizeIndexNotFoundError,
    VectorizeTypeError,
    check_index_name,
    index_folder,
    iso_time,
    read_index_config,
    vectorize_error,
    write_atomically,
)
from .vectorize_filters import compile_filter
from .vectorize_store import IndexStore, StoreQuery, Vector

if TYPE_CHECKING:
    from ..config import BindingSpec


T = TypeVar("T")


def _values(values: Any, dimensions: int, operation: str, what: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
        raise vectorize_error(operation, f"{what} must be a list of numbers, got {type(values).__name__}", VectorizeTypeError)
    if len(values) != dimensions:
        raise vectorize_error(operation, f"{what} has {len(values)} dimensions, but the index has {dimensions}: use the "
                                f"embedding model the index was created for")
    array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise vectorize_error(operation, f"{what} holds NaN or an infinite value (or one too large for float32)")
    return array


def _text(value: Any, max_bytes: int, operation: str, what: str) -> str:
    if not isinstance(value, str):
        raise vectorize_error(operation, f"{what} must be a str, got {type(value).__name__}", VectorizeTypeError)
    size = len(value.encode())
    if not 0 < size <= max_bytes:
        raise vectorize_error(operation, f"{what} must be 1 to {max_bytes} bytes of UTF-8, got {size}: {value[:80]!r}")
    return value


def _vector(item: Any, dimensions: int, operation: str, position: int) -> Vector:
    if not isinstance(item, Mapping):
        raise vectorize_error(operation, f"vector {position} must be a dict with id and values, got {type(item).__name__}",
                     VectorizeTypeError)
    unknown = [key for key in item if key not in VECTOR_KEYS]
    if unknown or "id" not in item or "values" not in item:
        detail = f"unknown key {unknown[0]!r}" if unknown else "id and values are required"
        raise vectorize_error(operation, f"vector {position}: {detail} (a vector has {', '.join(VECTOR_KEYS)})",
                     VectorizeTypeError)
    vector_id = _text(item["id"], MAX_ID_BYTES, operation, f"vector {position}'s id")
    values = _values(item["values"], dimensions, operation, f"vector {vector_id!r}")
    namespace = item.get("namespace")
    if namespace is not None:
        _text(namespace, MAX_NAMESPACE_BYTES, operation, f"vector {vector_id!r}'s namespace")
    return Vector(vector_id, values, namespace, _metadata(item.get("metadata"), operation, vector_id))


def _metadata(metadata: Any, operation: str, vector_id: str) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise vectorize_error(operation, f"vector {vector_id!r}'s metadata must be a dict, got {type(metadata).__name__}",
                     VectorizeTypeError)
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise vectorize_error(operation, f"vector {vector_id!r}'s metadata is not JSON: {error}", VectorizeTypeError) from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise vectorize_error(operation, f"vector {vector_id!r}'s metadata is {len(text.encode())} bytes as JSON, over the "
                                f"limit of {MAX_METADATA_BYTES} (10 KiB): keep large text elsewhere (D1, R2, KV)")
    return text


def _vectors(vectors: Any, dimensions: int, operation: str) -> list[Vector]:
    if not isinstance(vectors, list):
        raise vectorize_error(operation, f"takes a list of vectors, got {type(vectors).__name__}", VectorizeTypeError)
    if len(vectors) > MAX_BATCH:
        raise vectorize_error(operation, f"{len(vectors)} vectors in one call, over the limit of {MAX_BATCH}: send them "
                                f"in batches of {MAX_BATCH}")
    return [_vector(item, dimensions, operation, position) for position, item in enumerate(vectors)]


def _ids(ids: Any, operation: str) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise vectorize_error(operation, f"takes a list of ids (str), got {type(ids).__name__}", VectorizeTypeError)
    return ids


class VectorizeIndex:
    """``env.INDEX``: the calls of Cloudflare's Vectorize (V2) binding. The index opens on first use."""

    def __init__(self, binding: str, folder: Path, config: IndexConfig | None = None) -> None:
        self.binding, self.folder, self._config = binding, folder, config
        self._store: IndexStore | None = None
        self._opening = threading.Lock()
        self.is_closed = False

    async def describe(self) -> JsDict:
        """``{id, name, config: {dimensions, metric}, dimensions, vectorCount, processedUpToDatetime,
        processedUpToMutation}``: V2's fields with V1's ``id``, ``name`` and ``config``."""
        return await self._call("INDEX_GET", lambda store: store.describe())

    async def insert(self, vectors: list[Mapping[str, Any]]) -> JsDict:
        """Add vectors; ids already in the index are skipped (``ids`` lists those added)."""
        return await self._write("INSERT", vectors, replace=False)

    async def upsert(self, vectors: list[Mapping[str, Any]]) -> JsDict:
        """Add vectors, replacing whole any with the same id."""
        return await self._write("UPSERT", vectors, replace=True)

    async def deleteByIds(self, ids: list[str]) -> JsDict:
        ids = _ids(ids, "DELETE")
        mutation_id, deleted = await self._call("DELETE", lambda store: store.delete(ids))
        return JsDict(mutationId=mutation_id, count=len(deleted), ids=deleted)

    async def getByIds(self, ids: list[str]) -> list[JsDict]:
        """The stored vectors of those ids that exist, in the order asked, with values and metadata."""
        ids = _ids(ids, "GET")
        return await self._call("GET", lambda store: store.get(ids))

    async def query(self, vector: list[float], options: Mapping[str, Any] | None = None, /, **keywords: Any) -> JsDict:
        """``{matches: [{id, score, values?, metadata?, namespace?}], count}``, nearest first."""
        return await self._query(vector, None, options, keywords)

    async def queryById(self, vector_id: str, options: Mapping[str, Any] | None = None, /, **keywords: Any) -> JsDict:
        """As ``query``, with the stored vector of ``vector_id`` (which is among the matches)."""
        _text(vector_id, MAX_ID_BYTES, "QUERY", "the vector id")
        return await self._query(None, vector_id, options, keywords)

    async def _query(self, vector: Any, vector_id: str | None, options: Mapping[str, Any] | None,
                     keywords: dict[str, Any]) -> JsDict:
        options = _options(options, keywords)

        def run(store: IndexStore) -> JsDict:
            values = None if vector is None else _values(vector, store.config.dimensions, "QUERY", "the query vector")
            return store.query(_query_options(values, vector_id, options))
        return await self._call("QUERY", run)

    async def _write(self, operation: str, vectors: Any, replace: bool) -> JsDict:
        def run(store: IndexStore) -> tuple[str, list[str]]:
            checked = _vectors(vectors, store.config.dimensions, operation)  # all checked before any is written
            return store.write(checked, replace)
        mutation_id, written = await self._call(operation, run)
        return JsDict(mutationId=mutation_id, count=len(written), ids=written)

    async def _call(self, operation: str, work: Callable[[IndexStore], T]) -> T:
        return await asyncio.to_thread(lambda: work(self._opened(operation)))

    def _opened(self, operation: str) -> IndexStore:
        with self._opening:
            if self.is_closed:
                raise vectorize_error(operation, f"env.{self.binding} is closed (the dev run that opened it has ended or "
                                        f"reloaded its bindings)")
            if self._store is None:
                self._store = IndexStore(self.folder, self._index_config(operation))
            return self._store

    def _index_config(self, operation: str) -> IndexConfig:
        saved = read_index_config(self.folder)
        if saved is not None:
            if self._config is not None and (saved.dimensions, saved.metric) != (self._config.dimensions,
                                                                                 self._config.metric):
                raise vectorize_error(operation, f"index {saved.name!r} was created with {saved.dimensions} dimensions and "
                                        f"metric {saved.metric}, but env.{self.binding}'s config says "
                                        f"{self._config.dimensions} and {self._config.metric}: fix the config, or "
                                        f"delete {self.folder} to start the index afresh")
            return saved
        if self._config is None:
            name = self.folder.name
            raise vectorize_error(operation, f"index {name!r} (env.{self.binding}) does not exist yet: create it with "
                                    f"`edgewise vectorize create {name} --dimensions N --metric cosine`, or set "
                                    f"dimensions and metric in its [[vectorize]] entry", VectorizeIndexNotFoundError)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomically(self.folder / CONFIG_FILE, json.dumps(asdict(self._config), indent=2).encode())
        return self._config

    def close(self) -> None:
        with self._opening:
            self.is_closed = True
            if self._store is not None:
                self._store.close()

    def __repr__(self) -> str:
        return f"<VectorizeIndex {self.binding} at {self.folder}>"


def _options(options: Mapping[str, Any] | None, keywords: dict[str, Any]) -> dict[str, Any]:
    """The JS options object: a dict in the options position and/or keyword arguments."""
    if options is not None and not isinstance(options, Mapping):
        raise vectorize_error("QUERY", f"options are a dict or keyword arguments, got {type(options).__name__}",
                     VectorizeTypeError)
    merged = {**(options or {}), **keywords}
    for key in merged:
        if key not in QUERY_OPTIONS:
            raise vectorize_error("QUERY", f"unknown option {key!r} (Vectorize knows {', '.join(QUERY_OPTIONS)})",
                         VectorizeTypeError)
    return merged


def _query_options(vector: np.ndarray | None, vector_id: str | None, options: dict[str, Any]) -> StoreQuery:
    return_metadata = options.get("returnMetadata", "none")
    if isinstance(return_metadata, bool):  # as workerd: true is "all", false is "none"
        return_metadata = "all" if return_metadata else "none"
    if return_metadata not in METADATA_LEVELS:
        raise vectorize_error("QUERY", f'Invalid returnMetadata option. Expected: true, false, "none", "indexed" or "all"; '
                              f"got: {return_metadata!r}")
    return_values = options.get("returnValues", False)
    if not isinstance(return_values, bool):
        raise vectorize_error("QUERY", f"returnValues must be True or False, got {return_values!r}", VectorizeTypeError)
    top_k = options.get("topK", DEFAULT_TOP_K)
    limit = MAX_TOP_K_WITH_DATA if return_values or return_metadata == "all" else MAX_TOP_K
    if type(top_k) is not int or not 1 <= top_k <= limit:
        raise vectorize_error("QUERY", f"topK must be a whole number from 1 to {limit} "
                              f"{'with' if limit == MAX_TOP_K_WITH_DATA else 'without'} returnValues or "
                              f'returnMetadata="all", got {top_k!r}')
    return StoreQuery(vector, vector_id, top_k, return_values, return_metadata, _where(options))


def _where(options: dict[str, Any]) -> tuple[str, list[Any]] | None:
    sql: list[str] = []
    params: list[Any] = []
    if options.get("namespace") is not None:
        sql.append("namespace = ?")
        params.append(_text(options["namespace"], MAX_NAMESPACE_BYTES, "QUERY", "namespace"))
    if options.get("filter") is not None:
        condition, condition_params = compile_filter(options["filter"])
        sql.append(condition)
        params.extend(condition_params)
    return (" AND ".join(sql), params) if sql else None


def _config_from_settings(spec: BindingSpec, name: str) -> IndexConfig | None:
    """edgewise's extension: ``dimensions`` and ``metric`` in the ``[[vectorize]]`` entry create the index."""
    settings = spec.settings
    if "dimensions" not in settings and "metric" not in settings:
        return None
    if "dimensions" not in settings:
        raise ConfigError(None, "vectorize", f"binding {spec.name!r}: metric is set but dimensions is not: set both "
                                             f"(or neither, and create the index with edgewise vectorize create)")
    try:
        return IndexConfig(name, settings["dimensions"], settings.get("metric", "cosine"), str(uuid.uuid4()),
                           iso_time(time.time_ns() // 1_000_000))
    except ValueError as error:
        raise ConfigError(None, "vectorize", f"binding {spec.name!r}: {error}") from None


def open_binding(spec: BindingSpec, state: StateDir) -> VectorizeIndex:
    name = spec.settings.get("index_name")
    if name is None:
        raise ConfigError(None, "vectorize", f"binding {spec.name!r}: index_name is required")
    try:
        check_index_name(name)
    except ValueError as error:
        raise ConfigError(None, "vectorize", f"binding {spec.name!r}: index_name: {error}") from None
    return VectorizeIndex(str(spec.name), index_folder(state, name), _config_from_settings(spec, name))


def open_index(state: StateDir | Path, name: str) -> VectorizeIndex:
    """An index by name, for the CLI: ``asyncio.run(open_index(state, "docs").describe())``; close() it after."""
    return VectorizeIndex(name, index_folder(state, name))
