"""Queue test helpers: a Worker project with ``queues.producers`` / ``queues.consumers`` tables, the
started Edge over it, and waits on what its consumer recorded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_runtime.config import load_config
from edge_runtime.edge import Edge

WAIT_S = 5.0


def queue_tables(producers: Sequence[Mapping[str, Any]] = (), consumers: Sequence[Mapping[str, Any]] = ()) -> str:
    """TOML for the producer and consumer tables, to append to a wrangler.toml."""
    lines: list[str] = []
    for kind, tables in (("producers", producers), ("consumers", consumers)):
        for table in tables:
            lines += ["", f"[[queues.{kind}]]", *(f"{key} = {json.dumps(value)}" for key, value in table.items())]
    return "\n".join(lines) + "\n"


def write_queue_project(worker_project: Callable[..., Path], source: str, *,
                        producers: Sequence[Mapping[str, Any]] = (), consumers: Sequence[Mapping[str, Any]] = (),
                        **project: Any) -> Path:
    root = worker_project(source, **{"pops": ("DFW",), **project})
    with (root / "wrangler.toml").open("a") as toml:
        toml.write(queue_tables(producers, consumers))
    return root


async def start_edge(root: Path, opened: list[Edge] | None = None) -> Edge:
    """The Edge over the project, started as ``edgewise dev`` starts it (a Worker that consumes, or one
    that produces, gets the queue broker); added to ``opened`` before it starts, so a failed start is closed too."""
    edge = Edge(load_config(root))
    if opened is not None:
        opened.append(edge)
    await edge.start()
    return edge


def consumer_module(edge: Edge, worker: str | None = None) -> Any:
    """The consumer Worker's module at the PoP batches run at (the edge's first)."""
    return edge.script(worker).instance(edge.colos[0])[0].module


async def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)
