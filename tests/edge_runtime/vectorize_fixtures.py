"""Shared pieces of the Vectorize tests: opening index "docs", random vectors, and numpy's exact answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.vectorize import VectorizeIndex, open_index
from edge_runtime.bindings.vectorize_config import create_index

Opener = Callable[..., VectorizeIndex]


@contextmanager
def docs_opener(tmp_path: Path) -> Iterator[Opener]:
    """Opens index "docs" under tmp_path (created first with the given dimensions and metric)."""
    opened: list[VectorizeIndex] = []

    def open_(dimensions: int | None = 3, metric: str = "cosine") -> VectorizeIndex:
        if dimensions is not None and not (tmp_path / "vectorize" / "docs" / "config.json").exists():
            create_index(StateDir(tmp_path), "docs", dimensions, metric)
        opened.append(open_index(tmp_path, "docs"))
        return opened[-1]

    try:
        yield open_
    finally:
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
