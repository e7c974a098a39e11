"""Queue throughput end to end: messages sent by a Worker through its producer binding, written to the
edge's queue store, delivered in batches to a consumer Worker and acknowledged (deleted from the store).

The edge runs in-process (``Edge`` + httpx's ASGI transport, one PoP) with its state in a temporary
folder. For each consumer ``max_batch_size`` a fresh edge is built; one request to the Worker's fetch
sends ``--messages`` messages, either one ``send()`` per message or ``sendBatch()`` of 100, and times
it (sends/s). Delivery runs at the same time; delivered/s is messages over the time from the first
send to the moment the queue's last message was acknowledged and deleted. ``max_batch_timeout`` is
short (50 ms), so a batch that cannot fill does not hold the figure up. Prints a table and writes
benchmarks/results/queues.json.

    python benchmarks/queues.py [--messages 2000] [--rounds 3] [--batch-sizes 1,10,100]
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "sdk")]

from edge_runtime.bindings.queues.broker import queue_broker
from edge_runtime.config import load_config
from edge_runtime.edge import Edge

RESULTS = ROOT / "benchmarks" / "results" / "queues.json"
BATCH_TIMEOUT_S = 0.05
DRAIN_TIMEOUT_S = 300.0
WRANGLER = """\
name = "queues-bench"
main = "src/entry.py"
compatibility_date = "2025-11-02"
compatibility_flags = ["python_workers"]

[edgewise]
pops = ["DFW"]
latency = false

[[queues.producers]]
binding = "JOBS"
queue = "jobs"

[[queues.consumers]]
queue = "jobs"
max_batch_size = %(batch_size)d
max_batch_timeout = %(batch_timeout)s
"""
WORKER = """\
import time
from workers import Response, WorkerEntrypoint

HANDLED = []

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        mode, count = request.url.rsplit("/", 2)[-2:]
        count = int(count)
        started = time.perf_counter()
        if mode == "send":
            for n in range(count):
                await self.env.JOBS.send({"n": n, "payload": "x" * 64})
        else:
            for first in range(0, count, 100):
                await self.env.JOBS.sendBatch([{"body": {"n": n, "payload": "x" * 64}}
                                               for n in range(first, min(first + 100, count))])
        return Response.json({"seconds": time.perf_counter() - started})

    async def queue(self, batch):
        for message in batch.messages:
            HANDLED.append(message.body["n"])
            message.ack()
"""


async def one_run(folder: Path, batch_size: int, mode: str, messages: int) -> dict[str, float]:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "entry.py").write_text(WORKER)
    (folder / "wrangler.toml").write_text(WRANGLER % {"batch_size": batch_size, "batch_timeout": BATCH_TIMEOUT_S})
    edge = Edge(load_config(folder), persist_to=folder / "state")
    try:
        broker = queue_broker(edge)
        await edge.start()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge.front_door),
                                     base_url="http://localhost", timeout=DRAIN_TIMEOUT_S) as client:
            started = time.perf_counter()
            reply = await client.get(f"/{mode}/{messages}")
            reply.raise_for_status()
            send_s = reply.json()["seconds"]
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while (await broker.backlog("jobs")).message_count:
                    await asyncio.sleep(0.005)
            total_s = time.perf_counter() - started
        handled = edge.script().instance("DFW")[0].module.HANDLED
        if sorted(handled) != list(range(messages)):
            raise RuntimeError(f"{len(handled)} deliveries for {messages} messages (batch {batch_size}, {mode})")
    finally:
        await edge.aclose()
    return {"sends_per_s": messages / send_s, "delivered_per_s": messages / total_s, "total_s": total_s}


def median_of(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]} | {"rounds": len(runs)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,10,100")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("send", "sendBatch"):
            for batch_size in batch_sizes:
                runs = [await one_run(Path(tmp) / f"{mode}-{batch_size}-{round_}", batch_size, mode, args.messages)
                        for round_ in range(args.rounds)]
                results[f"{mode}, max_batch_size {batch_size}"] = median_of(runs)
    record: dict[str, Any] = {
        "benchmark": "queues",
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "config": {"messages": args.messages, "rounds": args.rounds, "batch_sizes": batch_sizes,
                   "max_batch_timeout_s": BATCH_TIMEOUT_S, "body": '{"n": int, "payload": 64 chars} (v8)',
                   "send_modes": {"send": "one send() per message", "sendBatch": "sendBatch() of 100"},
                   "edge": "in-process, ASGI transport, one PoP; consumer acks each message",
                   "figures": "median of rounds; delivered_per_s = messages / (first send -> last ack deleted)"},
        "results": results, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    print(f"{'sending, consumer batch':<30} {'sends/s':>9} {'delivered/s':>12} {'total s':>8}")
    for name, row in results.items():
        print(f"{name:<30} {row['sends_per_s']:>9.0f} {row['delivered_per_s']:>12.0f} {row['total_s']:>8.2f}")
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
