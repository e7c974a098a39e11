"""One Vectorize index's store: its SQLite file (ids, namespaces, float32 values, metadata, and a log of
every mutation) and usearch's in-memory HNSW graph, caught up from that log.

``ann.usearch`` is a cache of the SQLite data stamped by ``ann.json`` with the last mutation it holds:
a missing or stale graph is caught up from the log, or rebuilt. Up to ``EXACT_MAX_VECTORS`` vectors a
query is exact (brute force); above, approximate. The sync methods run on worker threads, one at a time.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgewise_sdk.workers import JsDict, to_jsdict
from usearch.index import Index

from .vectorize_config import (
    METRICS,
    IndexConfig,
    iso_time,
    vectorize_error,
    write_atomically,
)

EXACT_MAX_VECTORS = 10_000  # an index of up to this many vectors is searched exactly (every vector scored)
FILTERED_EXACT_MAX_VECTORS = 2_000  # in a larger index, a filter passing up to this many is scored exactly too
CONNECTIVITY = 16  # HNSW edges per node
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128  # candidates a search keeps: recall@10 >= 0.95 at 100k x 384 (benchmarks/vectorize_query.py)
BUSY_TIMEOUT_S = 30.0
MAX_CACHED_FILTERS = 64  # (namespace, filter) pairs whose passing keys are kept until the next mutation

DATABASE_FILE, ANN_FILE, ANN_STAMP = "vectors.sqlite", "ann.usearch", "ann.json"

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


@dataclass(frozen=True)
class Vector:
    id: str
    values: np.ndarray  # float32, the index's dimensions
    namespace: str | None
    metadata: str | None  # compact JSON


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


@dataclass(frozen=True)
class StoreQuery:
    vector: np.ndarray | None  # None: the stored vector of ``vector_id``
    vector_id: str | None
    top_k: int
    return_values: bool
    return_metadata: str
    where: tuple[str, list[Any]] | None  # namespace and filter as SQL


class IndexStore:
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
        write_atomically(self.folder / ANN_STAMP, json.dumps(stamp).encode())
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
                raise vectorize_error(operation, f"index {self.config.name!r} is closed (the dev run that opened it has "
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

    def write(self, vectors: list[Vector], replace: bool) -> tuple[str, list[str]]:
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
                      processedUpToDatetime=iso_time(last[1]) if last else None,
                      processedUpToMutation=last[0] if last else None)

    def query(self, query: StoreQuery) -> JsDict:
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
            raise vectorize_error("QUERY", f"no vector with id {vector_id!r} in index {self.config.name!r}: queryById takes "
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
