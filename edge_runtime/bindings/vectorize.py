"""The Vectorize binding (``vectorize``): a vector index with Cloudflare's V2 calls, on SQLite and usearch.

Each index lives in ``<state>/vectorize/<index_name>/``: ``config.json`` (dimensions and metric),
``vectors.sqlite`` (ids, namespaces, float32 values, metadata, and a log of every mutation) and
``ann.usearch`` (usearch's HNSW graph, a cache of the SQLite data stamped by ``ann.json`` with the
last mutation it holds). SQLite is the truth: a missing or stale graph is caught up from the log, or
rebuilt. Up to ``EXACT_MAX_VECTORS`` vectors a query is exact (brute force); above, approximate.

Every PoP shares one binding; its work runs on worker threads under one lock, never on the event
loop. Mutations are applied before the call returns (Cloudflare applies them asynchronously).
Another process (the CLI) may write the same index meanwhile: each call first applies the mutations
the log holds beyond those this process has seen.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from usearch.index import Index
from edgewise_sdk.workers import JsDict, to_jsdict

from ..config_error import ConfigError
from . import StateDir

if TYPE_CHECKING:
    from ..config import BindingSpec

# Cloudflare's limits (developers.cloudflare.com/vectorize/platform/limits)
MAX_DIMENSIONS = 1536
MAX_ID_BYTES = 64
MAX_NAMESPACE_BYTES = 64
MAX_INDEX_NAME_BYTES = 64
MAX_METADATA_BYTES = 10 * 1024
MAX_TOP_K = 100  # without values and with metadata "none" or "indexed"
MAX_TOP_K_WITH_DATA = 50  # with returnValues or returnMetadata="all"
MAX_BATCH = 1000  # vectors per insert/upsert from a Worker
MAX_FILTER_BYTES = 2048
MAX_FILTER_KEY_CHARS = 512
DEFAULT_TOP_K = 5

METRICS = {"cosine": "cos", "euclidean": "l2sq", "dot-product": "ip"}  # Cloudflare's name -> usearch's
METADATA_LEVELS = ("none", "indexed", "all")
QUERY_OPTIONS = ("topK", "returnValues", "returnMetadata", "filter", "namespace")
VECTOR_KEYS = ("id", "values", "metadata", "namespace")

EXACT_MAX_VECTORS = 10_000  # an index of up to this many vectors is searched exactly (every vector scored)
FILTERED_EXACT_MAX_VECTORS = 2_000  # in a larger index, a filter passing up to this many is scored exactly too
CONNECTIVITY = 16  # HNSW edges per node
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128  # candidates a search keeps: recall@10 >= 0.95 at 100k x 384 (benchmarks/vectorize_query.py)
BUSY_TIMEOUT_S = 30.0
MAX_CACHED_FILTERS = 64  # (namespace, filter) pairs whose passing keys are kept until the next mutation
CONFIG_FILE, DATABASE_FILE, ANN_FILE, ANN_STAMP = "config.json", "vectors.sqlite", "ann.usearch", "ann.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key INTEGER PRIMARY KEY AUTOINCREMENT,  -- the vector's key in the HNSW graph; never reused
    id TEXT NOT NULL UNIQUE,
    namespace TEXT,
    vector BLOB NOT NULL,                   -- float32, little-endian
    metadata TEXT                           -- JSON; NULL: none
);
CREATE INDEX IF NOT EXISTS vectors_by_namespace ON vectors (namespace) WHERE namespace IS NOT NULL;
CREATE TABLE IF NOT EXISTS mutations (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER NOT NULL, key INTEGER NOT NULL);  -- keys each mutation touched
CREATE INDEX IF NOT EXISTS changes_by_seq ON changes (seq);
"""


T = TypeVar("T")


class VectorizeError(Exception):
    """A call Vectorize refuses; the message starts as workerd's does: ``VECTOR_QUERY_ERROR: ...``."""


class VectorizeTypeError(VectorizeError, TypeError):
    """An argument of the wrong Python type (a tuple where a list goes, an unknown option)."""


class VectorizeIndexNotFoundError(VectorizeError):
    """The binding names an index that was never created and the config gives no dimensions."""


def _error(operation: str, detail: str, kind: type[VectorizeError] = VectorizeError) -> VectorizeError:
    return kind(f"VECTOR_{operation}_ERROR: {detail}")


# --- the index's config ----------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexConfig:
    """What an index is created with; kept as ``config.json`` in its folder."""

    name: str
    dimensions: int
    metric: str
    id: str = ""
    created_on: str = ""

    def __post_init__(self) -> None:
        check_index_name(self.name)
        if type(self.dimensions) is not int or not 1 <= self.dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be a whole number from 1 to {MAX_DIMENSIONS}, got {self.dimensions!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")


def check_index_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name.encode()) > MAX_INDEX_NAME_BYTES:
        raise ValueError(f"an index name is letters, digits, '-', '_' or '.', starting with a letter or digit, "
                         f"at most {MAX_INDEX_NAME_BYTES} bytes (it names a folder), got {name!r}")
    return name


def _state_root(state: StateDir | Path) -> Path:
    return state.root if isinstance(state, StateDir) else Path(state)


def index_folder(state: StateDir | Path, name: str) -> Path:
    """``<state>/vectorize/<name>``; ``state`` is a StateDir or its root (``.wrangler/state/v3``)."""
    return _state_root(state) / "vectorize" / check_index_name(name)


def read_index_config(folder: Path) -> IndexConfig | None:
    try:
        return IndexConfig(**json.loads((folder / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as error:
        raise VectorizeError(f"VECTOR_INDEX_GET_ERROR: {folder / CONFIG_FILE} is not an index config ({error}): "
                             f"delete the folder and create the index again") from error


def create_index(state: StateDir | Path, name: str, dimensions: int, metric: str = "cosine") -> IndexConfig:
    """Create an empty index, as ``wrangler vectorize create NAME --dimensions N --metric M`` does.

    ``state`` is a StateDir or its root folder. Raises ValueError for bad settings or an existing index.
    """
    config = IndexConfig(name, dimensions, metric, str(uuid.uuid4()), _iso(time.time_ns() // 1_000_000))
    folder = index_folder(state, name)
    if read_index_config(folder) is not None:
        raise ValueError(f"index {name!r} already exists in {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / CONFIG_FILE, json.dumps(asdict(config), indent=2).encode())
    return config


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- checking what a Worker passes -----------------------------------------------------------------

@dataclass(frozen=True)
class _Vector:
    id: str
    values: np.ndarray  # float32, the index's dimensions
    namespace: str | None
    metadata: str | None  # compact JSON


def _values(values: Any, dimensions: int, operation: str, what: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
        raise _error(operation, f"{what} must be a list of numbers, got {type(values).__name__}", VectorizeTypeError)
    if len(values) != dimensions:
        raise _error(operation, f"{what} has {len(values)} dimensions, but the index has {dimensions}: use the "
                                f"embedding model the index was created for")
    array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        raise _error(operation, f"{what} holds NaN or an infinite value (or one too large for float32)")
    return array


def _text(value: Any, max_bytes: int, operation: str, what: str) -> str:
    if not isinstance(value, str):
        raise _error(operation, f"{what} must be a str, got {type(value).__name__}", VectorizeTypeError)
    size = len(value.encode())
    if not 0 < size <= max_bytes:
        raise _error(operation, f"{what} must be 1 to {max_bytes} bytes of UTF-8, got {size}: {value[:80]!r}")
    return value


def _vector(item: Any, dimensions: int, operation: str, position: int) -> _Vector:
    if not isinstance(item, Mapping):
        raise _error(operation, f"vector {position} must be a dict with id and values, got {type(item).__name__}",
                     VectorizeTypeError)
    unknown = [key for key in item if key not in VECTOR_KEYS]
    if unknown or "id" not in item or "values" not in item:
        detail = f"unknown key {unknown[0]!r}" if unknown else "id and values are required"
        raise _error(operation, f"vector {position}: {detail} (a vector has {', '.join(VECTOR_KEYS)})",
                     VectorizeTypeError)
    vector_id = _text(item["id"], MAX_ID_BYTES, operation, f"vector {position}'s id")
    values = _values(item["values"], dimensions, operation, f"vector {vector_id!r}")
    namespace = item.get("namespace")
    if namespace is not None:
        _text(namespace, MAX_NAMESPACE_BYTES, operation, f"vector {vector_id!r}'s namespace")
    return _Vector(vector_id, values, namespace, _metadata(item.get("metadata"), operation, vector_id))


def _metadata(metadata: Any, operation: str, vector_id: str) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise _error(operation, f"vector {vector_id!r}'s metadata must be a dict, got {type(metadata).__name__}",
                     VectorizeTypeError)
    try:
        text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise _error(operation, f"vector {vector_id!r}'s metadata is not JSON: {error}", VectorizeTypeError) from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise _error(operation, f"vector {vector_id!r}'s metadata is {len(text.encode())} bytes as JSON, over the "
                                f"limit of {MAX_METADATA_BYTES} (10 KiB): keep large text elsewhere (D1, R2, KV)")
    return text


def _vectors(vectors: Any, dimensions: int, operation: str) -> list[_Vector]:
    if not isinstance(vectors, list):
        raise _error(operation, f"takes a list of vectors, got {type(vectors).__name__}", VectorizeTypeError)
    if len(vectors) > MAX_BATCH:
        raise _error(operation, f"{len(vectors)} vectors in one call, over the limit of {MAX_BATCH}: send them "
                                f"in batches of {MAX_BATCH}")
    return [_vector(item, dimensions, operation, position) for position, item in enumerate(vectors)]


def _ids(ids: Any, operation: str) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _error(operation, f"takes a list of ids (str), got {type(ids).__name__}", VectorizeTypeError)
    return ids


# --- metadata filters -> SQL -----------------------------------------------------------------------

COMPARISONS = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
FILTER_OPERATORS = ("$eq", "$ne", "$in", "$nin", *COMPARISONS)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_number(value: Any) -> bool:
    if type(value) is int:
        return INT64_MIN <= value <= INT64_MAX  # SQLite compares 64-bit integers
    return type(value) is float and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def _equals(path: str, value: Any) -> tuple[str, list[Any]]:
    """SQL true (1) where the metadata at ``path`` is ``value`` with its JSON type (5 is not "5")."""
    if value is None:  # null matches a null or a missing key
        return "COALESCE(json_type(metadata, ?), 'null') = 'null'", [path]
    if isinstance(value, bool):
        return "COALESCE(json_type(metadata, ?), '') = ?", [path, "true" if value else "false"]
    kinds = "= 'text'" if isinstance(value, str) else "IN ('integer', 'real')"
    return f"(COALESCE(json_type(metadata, ?), '') {kinds} AND json_extract(metadata, ?) = ?)", [path, path, value]


def _condition(path: str, key: str, operator: str, value: Any) -> tuple[str, list[Any]]:
    if operator in ("$eq", "$ne"):
        if not (value is None or _is_scalar(value)):
            raise _filter_error(f"{key}: {operator} takes a string, number, boolean or null, got {value!r}")
        sql, params = _equals(path, value)
        return (sql, params) if operator == "$eq" else (f"NOT {sql}", params)
    if operator in ("$in", "$nin"):
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            raise _filter_error(f"{key}: {operator} takes a non-empty list of strings, numbers or booleans, got {value!r}")
        parts = [_equals(path, v) for v in value]
        sql = "(" + " OR ".join(part for part, _ in parts) + ")"
        return (sql if operator == "$in" else f"NOT {sql}"), [p for _, params in parts for p in params]
    if isinstance(value, str) or _is_number(value):
        kinds = "= 'text'" if isinstance(value, str) else "IN ('integer', 'real')"
        sql = f"(COALESCE(json_type(metadata, ?), '') {kinds} AND json_extract(metadata, ?) {COMPARISONS[operator]} ?)"
        return sql, [path, path, value]
    raise _filter_error(f"{key}: {operator} compares with a string or a number, got {value!r}")


def _filter_error(detail: str) -> VectorizeError:
    return _error("QUERY", f"invalid filter: {detail} (a filter maps metadata keys to a value or to "
                           f"{{operator: value}} with operators {', '.join(FILTER_OPERATORS)})")


def _json_path(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_FILTER_KEY_CHARS or key.startswith("$") or '"' in key:
        raise _filter_error(f"key {key!r} must be a non-empty string of at most {MAX_FILTER_KEY_CHARS} characters, "
                            f"without '\"' and not starting with '$' (Vectorize combines keys with AND only)")
    parts = key.split(".")  # a dot reaches into nested metadata
    if not all(parts):
        raise _filter_error(f"key {key!r} has an empty part between dots")
    return "$" + "".join(f'."{part}"' for part in parts)


def compile_filter(filter_: Any) -> tuple[str, list[Any]]:
    """A Vectorize metadata filter as a SQL condition on ``vectors.metadata`` and its parameters.

    Keys are ANDed; a dot in a key reaches into nested metadata; a bare value means ``$eq``. A vector
    without the key never matches ``$eq``, ``$in`` or a comparison, and always matches ``$ne``/``$nin``.
    """
    if not isinstance(filter_, Mapping) or not filter_:
        raise _filter_error(f"the filter must be a non-empty dict, got {filter_!r}")
    try:
        size = len(json.dumps(filter_, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as error:
        raise _filter_error(f"the filter is not JSON ({error})") from None
    if size >= MAX_FILTER_BYTES:
        raise _filter_error(f"the filter is {size} bytes as JSON, over the limit of {MAX_FILTER_BYTES - 1}")
    sql: list[str] = []
    params: list[Any] = []
    for key, condition in filter_.items():
        path = _json_path(key)
        if not isinstance(condition, Mapping):
            condition = {"$eq": condition}
        if not condition:
            raise _filter_error(f"{key}: an empty operator dict")
        for operator, value in condition.items():
            if operator not in FILTER_OPERATORS:
                raise _filter_error(f"{key}: unknown operator {operator!r}")
            part, part_params = _condition(path, key, operator, value)
            sql.append(part)
            params.extend(part_params)
    return " AND ".join(sql), params


# --- scores ----------------------------------------------------------------------------------------

def exact_scores(matrix: np.ndarray, query: np.ndarray, metric: str, dtype: type = np.float64) -> np.ndarray:
    """Cloudflare's score of each row of ``matrix`` for ``query``: cosine similarity and dot product
    (higher is closer) or euclidean distance (lower is closer)."""
    matrix, query = matrix.astype(dtype, copy=False), query.astype(dtype)
    if metric == "euclidean":
        return np.sqrt(((matrix - query) ** 2).sum(axis=1))
    dots = matrix @ query
    if metric == "dot-product":
        return dots
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)  # a zero vector is similar to nothing


def _best(scores: np.ndarray, top_k: int, metric: str) -> np.ndarray:
    """Positions of the ``top_k`` best scores, best first."""
    ranked = -scores if metric != "euclidean" else scores
    if len(ranked) > top_k:
        keep = np.argpartition(ranked, top_k - 1)[:top_k]
        return keep[np.argsort(ranked[keep], kind="stable")]
    return np.argsort(ranked, kind="stable")


# --- the store: SQLite, the HNSW graph, one lock -----------------------------------------------------

@dataclass(frozen=True)
class _Query:
    vector: np.ndarray | None  # None: the stored vector of ``vector_id``
    vector_id: str | None
    top_k: int
    return_values: bool
    return_metadata: str
    where: tuple[str, list[Any]] | None  # namespace and filter as SQL


class _Store:
    """One index: its SQLite file (the truth) and an in-memory HNSW graph caught up from its mutation log.

    The sync methods run on worker threads, one at a time (``lock``).
    """

    def __init__(self, folder: Path, config: IndexConfig) -> None:
        self.folder, self.config = folder, config
        self.lock = threading.Lock()
        self.exact_max_vectors = EXACT_MAX_VECTORS
        self.connection = sqlite3.connect(folder / DATABASE_FILE, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                          check_same_thread=False)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.executescript(SCHEMA)
        self.applied_seq, self.is_dirty, self.is_closed = 0, False, False
        self.allowed_by_where: dict[tuple[str, tuple[Any, ...]], np.ndarray] = {}  # until the next mutation
        self.ann = self._load_ann()

    # graph upkeep

    def _new_ann(self) -> Index:
        return Index(ndim=self.config.dimensions, metric=METRICS[self.config.metric], dtype="f32",
                     connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)

    def _load_ann(self) -> Index:
        """The saved graph caught up from the log, or, if it is missing or does not fit, one rebuilt."""
        try:
            stamp = json.loads((self.folder / ANN_STAMP).read_text())
            if (stamp["dimensions"], stamp["metric"]) != (self.config.dimensions, self.config.metric):
                raise ValueError("saved for another config")
            ann = self._new_ann()
            ann.load(str(self.folder / ANN_FILE))
            if stamp["mutation_seq"] > self._latest_seq() or len(ann) != stamp["vectors"] \
                    or (self.folder / ANN_FILE).stat().st_size != stamp["file_bytes"]:
                raise ValueError("saved from other data")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return self._rebuild()
        self.ann, self.applied_seq = ann, stamp["mutation_seq"]
        self.catch_up()
        if len(self.ann) != self._count():
            return self._rebuild()
        return self.ann

    def _rebuild(self) -> Index:
        self.ann = self._new_ann()
        with self._reading():
            self.applied_seq = self._latest_seq()
            rows = self.connection.execute("SELECT key, vector FROM vectors")
            while batch := rows.fetchmany(10_000):
                self._add(batch)
        self.save()
        return self.ann

    def _add(self, rows: list[tuple[int, bytes]]) -> None:
        if rows:
            keys = np.fromiter((key for key, _ in rows), dtype=np.uint64, count=len(rows))
            matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(len(rows), -1)
            self.ann.add(keys, matrix)

    def catch_up(self) -> None:
        """Apply to the graph the mutations logged since it last looked (its own and other processes')."""
        latest = self._latest_seq()
        if latest == self.applied_seq:
            return
        changed = [key for (key,) in self.connection.execute(
            "SELECT DISTINCT key FROM changes WHERE seq > ?", (self.applied_seq,))]
        for start in range(0, len(changed), 10_000):
            keys = np.asarray(changed[start:start + 10_000], dtype=np.uint64)
            present = keys[np.asarray(self.ann.contains(keys), dtype=bool).reshape(-1)]
            if len(present):
                self.ann.remove(present)
            self._add(self.connection.execute(
                "SELECT key, vector FROM vectors WHERE key IN (SELECT value FROM json_each(?))",
                (json.dumps(keys.tolist()),)).fetchall())
        self.applied_seq, self.is_dirty = latest, True
        self.allowed_by_where.clear()

    def save(self) -> None:
        """Write the graph and its stamp (the last mutation it holds), each file replaced whole."""
        temporary = self.folder / f".{ANN_FILE}.{os.getpid()}.tmp"
        self.ann.save(str(temporary))
        os.replace(temporary, self.folder / ANN_FILE)
        # the size tells this graph from one another process saved at the same moment
        stamp = {"mutation_seq": self.applied_seq, "vectors": len(self.ann), "dimensions": self.config.dimensions,
                 "metric": self.config.metric, "file_bytes": (self.folder / ANN_FILE).stat().st_size}
        _write_atomically(self.folder / ANN_STAMP, json.dumps(stamp).encode())
        self.is_dirty = False

    def close(self) -> None:
        with self.lock:
            if not self.is_closed:
                self.is_closed = True
                if self.is_dirty:
                    self.save()
                self.connection.close()

    @contextmanager
    def _locked(self, operation: str) -> Iterator[None]:
        with self.lock:
            if self.is_closed:
                raise _error(operation, f"index {self.config.name!r} is closed (the dev run that opened it has "
                                        f"ended or reloaded its bindings)")
            yield

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """One snapshot of the file for a whole call (WAL: writers of other processes go on)."""
        self.connection.execute("BEGIN")
        try:
            yield
        finally:
            self.connection.execute("COMMIT")

    def _latest_seq(self) -> int:
        return self.connection.execute("SELECT COALESCE(MAX(seq), 0) FROM mutations").fetchone()[0]

    def _count(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    # calls

    def write(self, vectors: list[_Vector], replace: bool) -> tuple[str, list[str]]:
        """Insert (existing ids skipped, as Vectorize does) or upsert (replaced whole), logged as one mutation."""
        mutation_id = str(uuid.uuid4())
        verb = ("INSERT INTO vectors (id, namespace, vector, metadata) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO "
                + ("UPDATE SET namespace = excluded.namespace, vector = excluded.vector, metadata = excluded.metadata"
                   if replace else "NOTHING") + " RETURNING key")
        with self._locked("UPSERT" if replace else "INSERT"):
            written: dict[str, int] = {}
            with self._writing(mutation_id) as seq:
                for vector in vectors:
                    row = self.connection.execute(verb, (vector.id, vector.namespace, vector.values.astype("<f4")
                                                         .tobytes(), vector.metadata)).fetchone()
                    if row is not None:
                        written[vector.id] = row[0]
                self.connection.executemany("INSERT INTO changes VALUES (?, ?)", [(seq, k) for k in written.values()])
            self.catch_up()
        return mutation_id, list(written)

    def delete(self, ids: list[str]) -> tuple[str, list[str]]:
        mutation_id = str(uuid.uuid4())
        with self._locked("DELETE"):
            with self._writing(mutation_id) as seq:
                deleted = self.connection.execute(
                    "DELETE FROM vectors WHERE id IN (SELECT value FROM json_each(?)) RETURNING id, key",
                    (json.dumps(ids),)).fetchall()
                self.connection.executemany("INSERT INTO changes VALUES (?, ?)", [(seq, k) for _, k in deleted])
            self.catch_up()
        return mutation_id, [vector_id for vector_id, _ in deleted]

    @contextmanager
    def _writing(self, mutation_id: str) -> Iterator[int]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            seq = self.connection.execute("INSERT INTO mutations (id, at_ms) VALUES (?, ?) RETURNING seq",
                                          (mutation_id, time.time_ns() // 1_000_000)).fetchone()[0]
            yield seq
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    def get(self, ids: list[str]) -> list[JsDict]:
        with self._locked("GET"):
            rows = self.connection.execute(
                "SELECT id, namespace, vector, metadata FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),)).fetchall()
        by_id = {row[0]: row for row in rows}
        return [self._record(by_id[i], None, True, True) for i in dict.fromkeys(ids) if i in by_id]

    def describe(self) -> JsDict:
        with self._locked("INDEX_GET"), self._reading():
            last = self.connection.execute("SELECT id, at_ms FROM mutations ORDER BY seq DESC LIMIT 1").fetchone()
            count = self._count()
        config = self.config
        return JsDict(id=config.id, name=config.name, config=JsDict(dimensions=config.dimensions, metric=config.metric),
                      dimensions=config.dimensions, vectorCount=count,
                      processedUpToDatetime=_iso(last[1]) if last else None,
                      processedUpToMutation=last[0] if last else None)

    def query(self, query: _Query) -> JsDict:
        with self._locked("QUERY"), self._reading():
            self.catch_up()
            vector = query.vector if query.vector is not None else self._stored_vector(query.vector_id)
            keys, scores = self._search(vector, query.top_k, query.where)
            rows = self.connection.execute(
                "SELECT key, id, namespace, vector, metadata FROM vectors WHERE key IN (SELECT value FROM json_each(?))",
                (json.dumps(keys),)).fetchall()
        by_key = {row[0]: row[1:] for row in rows}
        matches = [self._record(by_key[key], score, query.return_values, query.return_metadata != "none")
                   for key, score in zip(keys, scores) if key in by_key]
        return JsDict(matches=matches, count=len(matches))

    def _stored_vector(self, vector_id: str | None) -> np.ndarray:
        row = self.connection.execute("SELECT vector FROM vectors WHERE id = ?", (vector_id,)).fetchone()
        if row is None:
            raise _error("QUERY", f"no vector with id {vector_id!r} in index {self.config.name!r}: queryById takes "
                                  f"the id of a stored vector")
        return np.frombuffer(row[0], dtype="<f4")

    def _search(self, vector: np.ndarray, top_k: int, where: tuple[str, list[Any]] | None) -> tuple[list[int], list[float]]:
        """The keys of the ``top_k`` nearest vectors that pass ``where``, with their exact scores, best first."""
        if where is None:
            if len(self.ann) == 0:
                return [], []
            found = self.ann.search(vector, min(top_k, len(self.ann)), exact=len(self.ann) <= self.exact_max_vectors)
            return self._rescored(np.asarray(found.keys, dtype=np.uint64), vector, top_k)
        allowed = self._allowed(where)
        if len(self.ann) <= self.exact_max_vectors or len(allowed) <= FILTERED_EXACT_MAX_VECTORS:
            return self._rescored(allowed, vector, top_k)
        # approximate: search wider until enough of the nearest pass the filter, else score them all
        wanted, count = set(allowed.tolist()), top_k * max(2, math.ceil(2 * len(self.ann) / len(allowed)))
        while count < len(self.ann):
            found = [key for key in self.ann.search(vector, count).keys.tolist() if key in wanted]
            if len(found) >= top_k:
                return self._rescored(np.asarray(found, dtype=np.uint64), vector, top_k)
            count *= 4
        return self._rescored(allowed, vector, top_k)

    def _allowed(self, where: tuple[str, list[Any]]) -> np.ndarray:
        """The keys of the vectors that pass ``where``; kept until the next mutation, as filters repeat."""
        cache_key = (where[0], tuple(where[1]))
        allowed = self.allowed_by_where.get(cache_key)
        if allowed is None:
            if len(self.allowed_by_where) >= MAX_CACHED_FILTERS:
                self.allowed_by_where.clear()
            rows = self.connection.execute(f"SELECT key FROM vectors WHERE {where[0]}", where[1])
            allowed = self.allowed_by_where[cache_key] = np.fromiter((key for (key,) in rows), dtype=np.uint64)
        return allowed

    def _rescored(self, keys: np.ndarray, vector: np.ndarray, top_k: int) -> tuple[list[int], list[float]]:
        if len(keys) == 0:
            return [], []
        matrix = np.asarray(self.ann.get(keys), dtype=np.float32).reshape(len(keys), -1)
        metric = self.config.metric
        if len(keys) > 2 * top_k + 10:  # rank in float32, then score the few best in float64
            nearest = _best(exact_scores(matrix, vector, metric, np.float32), 2 * top_k + 10, metric)
            keys, matrix = keys[nearest], matrix[nearest]
        scores = exact_scores(matrix, vector, metric)
        best = _best(scores, top_k, metric)
        return keys[best].tolist(), scores[best].tolist()

    @staticmethod
    def _record(row: tuple[Any, ...], score: float | None, values: bool, metadata: bool) -> JsDict:
        vector_id, namespace, blob, metadata_json = row
        record = JsDict(id=vector_id)
        if score is not None:
            record["score"] = score
        if values:
            record["values"] = np.frombuffer(blob, dtype="<f4").tolist()
        if namespace is not None:
            record["namespace"] = namespace
        if metadata and metadata_json is not None:
            record["metadata"] = to_jsdict(json.loads(metadata_json))
        return record


# --- what a Worker calls ---------------------------------------------------------------------------

class VectorizeIndex:
    """``env.INDEX``: the calls of Cloudflare's Vectorize (V2) binding. The index opens on first use."""

    def __init__(self, binding: str, folder: Path, config: IndexConfig | None = None) -> None:
        self.binding, self.folder, self._config = binding, folder, config
        self._store: _Store | None = None
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

        def run(store: _Store) -> JsDict:
            values = None if vector is None else _values(vector, store.config.dimensions, "QUERY", "the query vector")
            return store.query(_query_options(values, vector_id, options))
        return await self._call("QUERY", run)

    async def _write(self, operation: str, vectors: Any, replace: bool) -> JsDict:
        def run(store: _Store) -> tuple[str, list[str]]:
            checked = _vectors(vectors, store.config.dimensions, operation)  # all checked before any is written
            return store.write(checked, replace)
        mutation_id, written = await self._call(operation, run)
        return JsDict(mutationId=mutation_id, count=len(written), ids=written)

    async def _call(self, operation: str, work: Callable[[_Store], T]) -> T:
        return await asyncio.to_thread(lambda: work(self._opened(operation)))

    def _opened(self, operation: str) -> _Store:
        with self._opening:
            if self.is_closed:
                raise _error(operation, f"env.{self.binding} is closed (the dev run that opened it has ended or "
                                        f"reloaded its bindings)")
            if self._store is None:
                self._store = _Store(self.folder, self._index_config(operation))
            return self._store

    def _index_config(self, operation: str) -> IndexConfig:
        saved = read_index_config(self.folder)
        if saved is not None:
            if self._config is not None and (saved.dimensions, saved.metric) != (self._config.dimensions,
                                                                                 self._config.metric):
                raise _error(operation, f"index {saved.name!r} was created with {saved.dimensions} dimensions and "
                                        f"metric {saved.metric}, but env.{self.binding}'s config says "
                                        f"{self._config.dimensions} and {self._config.metric}: fix the config, or "
                                        f"delete {self.folder} to start the index afresh")
            return saved
        if self._config is None:
            name = self.folder.name
            raise _error(operation, f"index {name!r} (env.{self.binding}) does not exist yet: create it with "
                                    f"`edgewise vectorize create {name} --dimensions N --metric cosine`, or set "
                                    f"dimensions and metric in its [[vectorize]] entry", VectorizeIndexNotFoundError)
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.folder / CONFIG_FILE, json.dumps(asdict(self._config), indent=2).encode())
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
        raise _error("QUERY", f"options are a dict or keyword arguments, got {type(options).__name__}",
                     VectorizeTypeError)
    merged = {**(options or {}), **keywords}
    for key in merged:
        if key not in QUERY_OPTIONS:
            raise _error("QUERY", f"unknown option {key!r} (Vectorize knows {', '.join(QUERY_OPTIONS)})",
                         VectorizeTypeError)
    return merged


def _query_options(vector: np.ndarray | None, vector_id: str | None, options: dict[str, Any]) -> _Query:
    return_metadata = options.get("returnMetadata", "none")
    if isinstance(return_metadata, bool):  # as workerd: true is "all", false is "none"
        return_metadata = "all" if return_metadata else "none"
    if return_metadata not in METADATA_LEVELS:
        raise _error("QUERY", f'Invalid returnMetadata option. Expected: true, false, "none", "indexed" or "all"; '
                              f"got: {return_metadata!r}")
    return_values = options.get("returnValues", False)
    if not isinstance(return_values, bool):
        raise _error("QUERY", f"returnValues must be True or False, got {return_values!r}", VectorizeTypeError)
    top_k = options.get("topK", DEFAULT_TOP_K)
    limit = MAX_TOP_K_WITH_DATA if return_values or return_metadata == "all" else MAX_TOP_K
    if type(top_k) is not int or not 1 <= top_k <= limit:
        raise _error("QUERY", f"topK must be a whole number from 1 to {limit} "
                              f"{'with' if limit == MAX_TOP_K_WITH_DATA else 'without'} returnValues or "
                              f'returnMetadata="all", got {top_k!r}')
    return _Query(vector, vector_id, top_k, return_values, return_metadata, _where(options))


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


# --- opening -------------------------------------------------------------------------------------

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
                           _iso(time.time_ns() // 1_000_000))
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
