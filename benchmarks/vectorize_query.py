"""Vectorize query latency and recall: 100,000 vectors of 384 dimensions (cosine) through env.VECTORIZE's calls.

The vectors are clustered, as sentence embeddings are (seeded: centres plus Gaussian spread), with a
metadata field `shard` (0-9). The index is built with `upsert` in batches of 1000 (Cloudflare's batch
limit), closed (which saves the HNSW graph) and reopened from its files. Then `query(vector, topK=10)`
runs once per query vector, timed around the awaited call (thread hop, SQLite reads and the HNSW
search included), and recall@10 is measured against exact search in numpy. A second, smaller set of
queries carries `filter={"shard": 3}`: 10% of the vectors pass, too many to score them all, so the graph
is searched wider; the first such query reads the passing set from SQLite, the others reuse it.
Prints the results and writes benchmarks/results/vectorize_query.json.

    python benchmarks/vectorize_query.py [--vectors 100000] [--dimensions 384] [--queries 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_runtime.bindings import vectorize, vectorize_config, vectorize_store  # noqa: E402
from llama_shapes import cpu_name  # noqa: E402  (benchmarks/ is on the path: this script's folder)

RESULTS = ROOT / "benchmarks" / "results" / "vectorize_query.json"
TARGET_P50_MS, TARGET_RECALL = 5.0, 0.95


def clustered(rng: np.random.Generator, count: int, centres: np.ndarray, spread: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), count)
    return (centres[picks] + spread * rng.standard_normal((count, centres.shape[1]))).astype(np.float32)


def exact_top_k(data: np.ndarray, queries: np.ndarray, top_k: int) -> np.ndarray:
    """Row indices of the top_k cosine neighbours of each query, by brute force."""
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    found = []
    for start in range(0, len(queries), 100):
        block = queries[start:start + 100]
        scores = (block / np.linalg.norm(block, axis=1, keepdims=True)) @ unit.T
        found.append(np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k])
    return np.concatenate(found)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def timed_queries(index: vectorize.VectorizeIndex, queries: np.ndarray, top_k: int,
                        **options: object) -> tuple[list[float], list[list[str]]]:
    latencies_ms, found = [], []
    for query in queries:
        values = query.tolist()
        started = time.perf_counter()
        result = await index.query(values, topK=top_k, **options)
        latencies_ms.append((time.perf_counter() - started) * 1000)
        found.append([match.id for match in result.matches])
    return latencies_ms, found


def recall(found: list[list[str]], truth: np.ndarray, ids: np.ndarray) -> float:
    hits = [len(set(got) & set(ids[row].tolist())) / len(row) for got, row in zip(found, truth)]
    return float(np.mean(hits))


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dimensions)).astype(np.float32)
    data = clustered(rng, args.vectors, centres, args.spread)
    queries = clustered(rng, args.queries, centres, args.spread)
    ids = np.asarray([f"doc-{i}" for i in range(args.vectors)])
    shards = np.arange(args.vectors) % 10

    state = Path(tempfile.mkdtemp(prefix="vectorize-bench-"))
    vectorize_config.create_index(state, "bench", args.dimensions, "cosine")
    index = vectorize.open_index(state, "bench")
    started = time.perf_counter()
    for start in range(0, args.vectors, vectorize_config.MAX_BATCH):
        batch = [{"id": str(ids[i]), "values": data[i].tolist(), "metadata": {"shard": int(shards[i])}}
                 for i in range(start, min(start + vectorize_config.MAX_BATCH, args.vectors))]
        await index.upsert(batch)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    index.close()  # saves the graph
    save_s = time.perf_counter() - started

    started = time.perf_counter()
    index = vectorize.open_index(state, "bench")
    described = await index.describe()  # opens the store: loads the saved graph
    reopen_s = time.perf_counter() - started
    assert described.vectorCount == args.vectors, described

    await timed_queries(index, queries[:20], args.top_k)  # warm-up
    latencies_ms, found = await timed_queries(index, queries, args.top_k)
    truth = exact_top_k(data, queries, args.top_k)

    filtered = queries[:args.filtered_queries]
    filtered_ms, filtered_found = await timed_queries(index, filtered, args.top_k, filter={"shard": 3})
    in_shard = np.flatnonzero(shards == 3)
    filtered_truth = in_shard[exact_top_k(data[in_shard], filtered, args.top_k)]
    index.close()

    files = {path.name: path.stat().st_size for path in (state / "vectorize" / "bench").iterdir()}
    return {
        "device": f"{cpu_name()}, {os.cpu_count()} cores (CPU only)",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in ("edgewise", "usearch", "numpy")},
        "config": {
            "vectors": args.vectors, "dimensions": args.dimensions, "metric": "cosine", "top_k": args.top_k,
            "queries": args.queries, "filtered_queries": args.filtered_queries, "seed": args.seed,
            "data": f"{args.clusters} Gaussian clusters (unit-normal centres, spread {args.spread}), queries "
                    f"drawn the same way, not in the index",
            "hnsw": {"connectivity": vectorize_store.CONNECTIVITY, "expansion_add": vectorize_store.EXPANSION_ADD,
                     "expansion_search": vectorize_store.EXPANSION_SEARCH, "dtype": "f32"},
            "exact_max_vectors": vectorize_store.EXACT_MAX_VECTORS,
            "filtered_exact_max_vectors": vectorize_store.FILTERED_EXACT_MAX_VECTORS,
            "build": f"upsert in batches of {vectorize_config.MAX_BATCH} through the binding",
            "timing": "perf_counter around each awaited index.query(...) call, one at a time, after 20 warm-up "
                      "queries",
        },
        "build_s": round(build_s, 2),
        "build_vectors_per_s": round(args.vectors / build_s),
        "save_s": round(save_s, 3),
        "reopen_s": round(reopen_s, 3),
        "files_bytes": files,
        "query": {
            "p50_ms": round(percentile(latencies_ms, 50), 3),
            "p99_ms": round(percentile(latencies_ms, 99), 3),
            "mean_ms": round(statistics.fmean(latencies_ms), 3),
            "recall_at_10": round(recall(found, truth, ids), 4),
        },
        "filtered_query": {
            "filter": {"shard": 3},
            "passing_vectors": int(len(in_shard)),
            "first_ms": round(filtered_ms[0], 3),  # the filter's passing set is read from SQLite, then kept
            "p50_ms": round(percentile(filtered_ms, 50), 3),
            "p99_ms": round(percentile(filtered_ms, 99), 3),
            "recall_at_10": round(recall(filtered_found, filtered_truth, ids), 4),
        },
        "targets": {"p50_ms_below": TARGET_P50_MS, "recall_at_10_at_least": TARGET_RECALL},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--filtered-queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    query, filtered = results["query"], results["filtered_query"]
    results["meets_targets"] = query["p50_ms"] < TARGET_P50_MS and query["recall_at_10"] >= TARGET_RECALL
    print(json.dumps(results, indent=2))
    print(f"\n{args.vectors} x {args.dimensions} cosine: build {results['build_s']} s, reopen {results['reopen_s']} s; "
          f"query p50 {query['p50_ms']} ms, p99 {query['p99_ms']} ms, recall@10 {query['recall_at_10']}; "
          f"filtered p50 {filtered['p50_ms']} ms, recall@10 {filtered['recall_at_10']}")
    if not args.no_write:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
