"""Hundreds of clients that leave at random moments leave nothing behind on a sharded cluster.

Each client starts a generation and leaves (its task cancelled, or its iterator closed) at a
moment drawn from a seeded generator: before its request is accepted, while its blocks are
reserved on the decode instance, while the prompt is prefilled, while its KV is on its way, or
mid-decode. Afterwards every instance runs no request and holds no KV block, the engine tracks
no stream, and a normal request still answers token for token what one process does.

One engine per layout serves every client (prefill/decode instances, and a TP=2 instance), over
Gloo on CPU; the counts are printed so that they can be quoted (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.config import EngineConfig
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.disagg.flow import sharded_engine

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 48, "max_model_len": 256,
           "max_num_batched_tokens": 24}  # long prompts prefill (and move) in chunks; blocks run short
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea and", "The quick brown fox", "A",
           "Once upon a time there was a queen"]  # shared prefixes: prefix-cache hits on both sides
PARAMS = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
LAYOUTS = {
    "prefill-decode": ClusterConfig.disaggregated(instance_timeout_s=20.0),
    "tp2": ClusterConfig.colocated(tp=2, instance_timeout_s=20.0),
    "pp2": ClusterConfig.colocated(pp=2, instance_timeout_s=20.0),
}
NUM_CLIENTS = 240
AT_ONCE = 12  # clients in flight together: enough to queue and to wait for blocks
SEED = 15
SETTLE_S = 30.0  # generous: a busy 2-core machine


@pytest.fixture(scope="module", params=list(LAYOUTS))
def engine(request: pytest.FixtureRequest, checkpoints: dict[str, Path]) -> Iterator[ShardedEngine]:
    engine = sharded_engine(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), LAYOUTS[request.param])
    yield engine
    engine.shutdown()


async def drain(stream, seen: list[int]) -> None:
    async for output in stream:
        seen.append(len(output.new_token_ids))


async def client(engine: ShardedEngine, rng: random.Random, request_id: str, moments: Counter[str]) -> None:
    """Start a generation and leave at a random moment; count where the request was then."""
    stream = engine.generate(rng.choice(PROMPTS), PARAMS, request_id)
    seen: list[int] = []
    if rng.random() < 0.6:  # by the clock: a cancelled task, as a server cancels a gone client's handler
        task = asyncio.ensure_future(drain(stream, seen))
        for _ in range(rng.randint(0, 3)):  # a few turns of the loop: not yet accepted, or reserving
            await asyncio.sleep(0)
        await asyncio.sleep(rng.choice([0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.05), rng.uniform(0, 0.2)]))
        moments[where(engine, request_id, seen)] += 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    else:  # after some outputs: the iterator closed, as ``async for ... break`` does
        wanted = rng.randint(1, 4)
        async for output in stream:
            seen.append(len(output.new_token_ids))
            if len(seen) == wanted:
                break
        moments[where(engine, request_id, seen)] += 1
        await stream.aclose()


def where(engine: ShardedEngine, request_id: str, seen: list[int]) -> str:
    instance = engine.instance_of(request_id)
    if instance is None:
        return "finished" if seen else "not routed or already gone"
    stage = "decoding" if seen else "before the first token"
    return f"{stage} on instance {instance}"


async def leave_at_random(engine: ShardedEngine, tag: str, moments: Counter[str]) -> None:
    rng = random.Random(SEED)
    slots = asyncio.Semaphore(AT_ONCE)

    async def one(index: int) -> None:
        async with slots:
            await client(engine, random.Random(rng.random()), f"{tag}-{index}", moments)

    await asyncio.gather(*(one(index) for index in range(NUM_CLIENTS)))


def settled(engine: ShardedEngine, ids: list[str]) -> tuple[dict[str, int], int]:
    """The engine's load once nothing runs (or the last seen after the bound), and the streams left."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        stats = engine.stats()
        leftover = sum(engine.instance_of(request_id) is not None for request_id in ids)
        idle = not (stats["num_running"] or stats["num_waiting"] or stats["kv_blocks_used"] or leftover)
        if idle or time.monotonic() > deadline:
            return stats, leftover
        time.sleep(0.1)


def test_clients_leaving_at_random_moments_leave_nothing_behind(engine: ShardedEngine, checkpoints: dict[str, Path],
                                                               request: pytest.FixtureRequest) -> None:
    layout = request.node.callspec.params["engine"]
    moments: Counter[str] = Counter()
    started = time.monotonic()
    asyncio.run(leave_at_random(engine, layout, moments))
    stats, leftover = settled(engine, [f"{layout}-{index}" for index in range(NUM_CLIENTS)])
    print(f"\n{layout}: {NUM_CLIENTS} clients left in {time.monotonic() - started:.1f} s; where they were: "
          f"{dict(moments)}; afterwards: {stats['kv_blocks_used']} KV blocks used, {stats['num_running']} running, "
          f"{stats['num_waiting']} waiting, {leftover} streams left")
    assert (stats["kv_blocks_used"], stats["num_running"], stats["num_waiting"], leftover) == (0, 0, 0, 0), stats
    assert engine.error is None and not engine.lost_instances

    async def normal() -> list[int]:
        return [token async for output in engine.generate(PROMPTS[0], PARAMS, f"{layout}-after")
                for token in output.new_token_ids]

    want = LLM(str(checkpoints["llama"]), progress=False, **OPTIONS).generate(PROMPTS[0], PARAMS)[0].outputs[0]
    assert asyncio.run(normal()) == want.token_ids
