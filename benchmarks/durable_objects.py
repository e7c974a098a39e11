"""Durable Object RPC round trips per second: from the object's own PoP and from a far PoP, with the
edge's simulated latency off and on.

The edge runs in process with two PoPs (LHR and SFO, ~8,600 km apart). One object lives at LHR (its
first caller); calls come through ``env.COUNTER.getByName(...)`` of the LHR PoP (same PoP) or of the SFO
PoP (cross-PoP: one simulated round trip per call when latency is on). Each call is ``increment()``:
a storage get and put inside the object, so the figures include the input gate, the invocation
(env, limits, tail), RPC's argument and result copies and SQLite.

- sequential: one call at a time (round trips per second = 1 / latency);
- concurrent: ``--in-flight`` calls at a time (what one object serves when many callers wait).

Prints a table and writes benchmarks/results/durable_objects.json.

    python benchmarks/durable_objects.py [--calls 2000] [--far-calls 20] [--in-flight 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from edge_runtime.config import load_config  # noqa: E402
from edge_runtime.edge import Edge  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "durable_objects.json"
WRANGLER = """\
name = "do-bench"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[edgewise]
pops = ["LHR", "SFO"]
{latency}

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]
"""
WORKER = """\
from workers import DurableObject

class Counter(DurableObject):
    async def increment(self):
        value = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", value)
        return value
"""


async def sequential(stub: Any, calls: int) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        begun = time.perf_counter()
        await stub.increment()
        latencies.append(time.perf_counter() - begun)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"calls_per_s": calls / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}


async def concurrent(stub: Any, calls: int, in_flight: int) -> dict[str, float]:
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await stub.increment()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return {"calls_per_s": calls / (time.perf_counter() - started)}


async def measure(folder: Path, latency_on: bool, args: argparse.Namespace) -> dict[str, Any]:
    project = folder / ("latency-on" if latency_on else "latency-off")
    (project / "src").mkdir(parents=True)
    (project / "wrangler.toml").write_text(WRANGLER.format(latency="" if latency_on else "latency = false"))
    (project / "src" / "entry.py").write_text(WORKER)
    edge = Edge(load_config(project), persist_to=project / "state")
    await edge.start()
    try:
        near = edge.script().instance("LHR")[1].COUNTER.getByName("bench")
        far = edge.script().instance("SFO")[1].COUNTER.getByName("bench")
        await near.increment()  # placed at LHR, and warm
        far_calls = args.far_calls if latency_on else args.calls
        runs: dict[str, list[dict[str, float]]] = {"same_pop": [], "cross_pop": [], "same_pop_concurrent": [],
                                                   "cross_pop_concurrent": []}
        for _ in range(args.rounds):  # interleaved, so drift in the machine's speed hits every case alike
            runs["same_pop"].append(await sequential(near, args.calls))
            runs["cross_pop"].append(await sequential(far, far_calls))
            runs["same_pop_concurrent"].append(await concurrent(near, args.calls, args.in_flight))
            runs["cross_pop_concurrent"].append(await concurrent(far, args.calls, args.in_flight))
        rtt_ms = edge.pop_rtt_s("LHR", "SFO") * 1000
    finally:
        await edge.aclose()
    summary = {case: {key: round(statistics.median(run[key] for run in samples), 3) for key in samples[0]}
               for case, samples in runs.items()}
    return {"simulated_rtt_lhr_sfo_ms": round(rtt_ms, 3), "cases": summary}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and case")
    parser.add_argument("--far-calls", type=int, default=20, help="sequential cross-PoP calls with latency on")
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {"latency_off": await measure(Path(folder), False, args),
                   "latency_on": await measure(Path(folder), True, args)}
    report = {
        "benchmark": "durable_objects", "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "config": {"calls": args.calls, "far_calls_latency_on": args.far_calls, "in_flight": args.in_flight,
                   "rounds": args.rounds, "pops": ["LHR", "SFO"], "object_home": "LHR",
                   "latency_on": "edgewise defaults: 2 ms per hop + 10 ms per 1000 km",
                   "call": "increment(): storage get + put", "statistic": "median of rounds"},
        "results": results, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    print(f"{'latency':<12} {'case':<22} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for latency, result in results.items():
        for case, figures in result["cases"].items():
            print(f"{latency:<12} {case:<22} {figures['calls_per_s']:>10.0f} {figures.get('p50_ms', float('nan')):>8.3f} "
                  f"{figures.get('p99_ms', float('nan')):>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
