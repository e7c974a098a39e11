"""What the KV and D1 bindings cost: operations run by a Worker through its bindings, against the
same operations on SQLite directly, interleaved in one run on this machine.

The Worker runs on an in-process edge (``Edge`` + httpx's ASGI transport: no sockets) with its
bindings' data in a temporary folder. Each request runs ``--ops`` operations in a loop inside the
Worker's fetch and times each one, so the figures are the bindings' own cost, not HTTP's:

- KV: ``put`` of a 100-byte value to one of 1,000 keys, then ``get`` of one of them;
- D1: a point query ``SELECT body FROM notes WHERE id = ?`` on a 10,000-row table.

"direct" does the same on a plain ``sqlite3`` connection (WAL and synchronous=NORMAL, as the KV
binding's file) on the calling thread: the gap is what the binding adds (its argument checks,
and the hop to its worker thread that keeps SQLite off the event loop). Prints a table and writes benchmarks/results/bindings_ops.json.

    python benchmarks/bindings_ops.py [--ops 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from edge_runtime.config import load_config  # noqa: E402
from edge_runtime.edge import Edge  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bindings_ops.json"
KEYS, ROWS, VALUE = 1_000, 10_000, "v" * 100
WRANGLER = """\
name = "bindings-ops"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]
[[kv_namespaces]]
binding = "KV"
id = "ops"
[[d1_databases]]
binding = "DB"
database_name = "ops"
database_id = "ops"
"""
WORKER = """\
import random, time
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        what, ops = request.url.rsplit("/", 2)[-2:]
        rng, timings = random.Random(7), []
        for _ in range(int(ops)):
            started = time.perf_counter()
            if what == "kv-put":
                await self.env.KV.put(f"key{rng.randrange(%(keys)d)}", "%(value)s")
            elif what == "kv-get":
                await self.env.KV.get(f"key{rng.randrange(%(keys)d)}")
            elif what == "d1-seed":
                await self.env.DB.exec("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
                statements = [self.env.DB.prepare("INSERT OR IGNORE INTO notes VALUES (?, ?)").bind(i, f"note {i}")
                              for i in range(1, %(rows)d + 1)]
                await self.env.DB.batch(statements)
                break
            else:
                await self.env.DB.prepare("SELECT body FROM notes WHERE id = ?").bind(rng.randrange(1, %(rows)d + 1)).first()
            timings.append(time.perf_counter() - started)
        return Response.json(timings)
""" % {"keys": KEYS, "value": VALUE, "rows": ROWS}


def direct(folder: Path, what: str, ops: int) -> list[float]:
    """The same operations on plain sqlite3 (one connection, WAL), timed the same way."""
    connection = sqlite3.connect(folder / f"direct-{what[:2]}.sqlite", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # as the KV binding's file
    connection.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")
    connection.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
    if what == "d1-point" and connection.execute("SELECT count(*) FROM notes").fetchone()[0] == 0:
        connection.executemany("INSERT INTO notes VALUES (?, ?)", ((i, f"note {i}") for i in range(1, ROWS + 1)))
    rng, timings = random.Random(7), []
    for _ in range(ops):
        started = time.perf_counter()
        if what == "kv-put":
            connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"key{rng.randrange(KEYS)}", VALUE.encode()))
        elif what == "kv-get":
            connection.execute("SELECT value FROM kv WHERE key = ?", (f"key{rng.randrange(KEYS)}",)).fetchone()
        else:
            connection.execute("SELECT body FROM notes WHERE id = ?", (rng.randrange(1, ROWS + 1),)).fetchone()
        timings.append(time.perf_counter() - started)
    connection.close()
    return timings


def summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {"ops_per_s": len(ordered) / sum(ordered), "p50_us": 1e6 * statistics.median(ordered),
            "p99_us": 1e6 * ordered[int(0.99 * (len(ordered) - 1))], "n": len(ordered)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per request (per round and kind)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    kinds = ("kv-put", "kv-get", "d1-point")
    measured: dict[str, dict[str, list[float]]] = {kind: {"binding": [], "direct": []} for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "src").mkdir()
        (folder / "src" / "entry.py").write_text(WORKER)
        (folder / "wrangler.toml").write_text(WRANGLER)
        edge = Edge(load_config(folder), persist_to=folder / "state")
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door),
                                         base_url="http://localhost", timeout=300) as client:
                assert (await client.get("/d1-seed/1")).status_code == 200
                for _ in range(args.rounds):
                    for kind in kinds:
                        reply = await client.get(f"/{kind}/{args.ops}")
                        reply.raise_for_status()
                        measured[kind]["binding"] += reply.json()
                        measured[kind]["direct"] += direct(folder, kind, args.ops)
        finally:
            await edge.aclose()
    results = {kind: {way: summary(timings) for way, timings in ways.items()} for kind, ways in measured.items()}
    for kind, ways in results.items():
        ways["binding_over_direct_p50"] = ways["binding"]["p50_us"] / ways["direct"]["p50_us"]
    record: dict[str, Any] = {
        "benchmark": "bindings_ops",
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "config": {"ops_per_request": args.ops, "rounds": args.rounds, "kv_keys": KEYS, "value_bytes": len(VALUE),
                   "d1_rows": ROWS, "edge": "in-process, ASGI transport, one PoP answering"},
        "results": results, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    print(f"{'operation':<10} {'way':<8} {'ops/s':>9} {'p50 us':>8} {'p99 us':>8}")
    for kind, ways in results.items():
        for way in ("binding", "direct"):
            row = ways[way]
            print(f"{kind:<10} {way:<8} {row['ops_per_s']:>9.0f} {row['p50_us']:>8.1f} {row['p99_us']:>8.1f}")
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
