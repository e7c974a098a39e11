"""gpu_backend.cluster.router: load in tokens, ties by KV blocks, sessions sent back to their instances."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backend_fixtures import MODEL, OPTIONS, TOKEN, Backend, serving
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend import SamplingParams
from gpu_backend.config import EngineConfig
from gpu_backend.cluster.router import PrefixIndex, Router, token_loads
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines


@dataclass
class Request:
    instance: int
    next_instance: int | None = None
    prompt_len: int = 0
    generated: list[int] = field(default_factory=list)


@dataclass
class Load:
    kv_blocks_used: int = 0


def test_token_loads_count_prompts_where_they_are_computed_and_kv_where_it_is_read() -> None:
    requests = [Request(0, prompt_len=100),  # colocated, prefilling
                Request(1, prompt_len=10, generated=[1, 2, 3]),  # colocated, decoding: 13 tokens held
                Request(2, next_instance=3, prompt_len=50),  # prefilling on 2, its KV goes to 3
                Request(3, next_instance=3, prompt_len=20, generated=[7])]  # decoding on 3
    assert token_loads(requests, 4) == [100, 13, 50, 50 + 21]


def test_the_least_loaded_instance_of_the_role_wins_and_ties_go_by_blocks() -> None:
    router = Router(["prefill", "prefill", "decode", "decode"])
    loads = [Load(), Load(), Load(9), Load(2)]
    assert router.pick("prefill", [Request(0, prompt_len=500)], loads) == 1  # 0 has a long prompt to compute
    assert router.pick("prefill", [Request(0, prompt_len=5), Request(1, prompt_len=50)], loads) == 0
    assert router.pick("decode", [], loads) == 3  # both idle: the one with fewer blocks in use
    assert router.pick("decode", [Request(3, prompt_len=10, generated=[1])], loads) == 2


def test_a_session_goes_back_to_its_instances_and_old_sessions_are_forgotten() -> None:
    router = Router(["colocated", "colocated"], max_sessions=2)
    loads = [Load(), Load()]
    busy_zero = [Request(0, prompt_len=1000)]
    assert router.pick("colocated", busy_zero, loads, session="chat-1") == 1
    assert router.pick("colocated", [Request(1, prompt_len=1000)], loads, session="chat-1") == 1  # affinity
    assert router.pick("colocated", [], loads, session="chat-2") == 0
    router.pick("colocated", [], loads, session="chat-3")  # pushes out chat-1, the least recent
    assert router.pick("colocated", [Request(1, prompt_len=1000)], loads, session="chat-1") == 0


def test_a_cached_prefix_draws_the_request_unless_its_instance_is_busier_than_the_prefix_is_long() -> None:
    router = Router(["colocated", "colocated"], block_size=16)
    loads = [Load(), Load()]
    shared = list(range(64))  # 4 full blocks
    assert router.pick("colocated", [Request(0, prompt_len=500)], loads, prompt=shared) == 1
    follow_up = [*shared, 900, 901]
    assert router.pick("colocated", [Request(0, prompt_len=10), Request(1, prompt_len=30)], loads,
                       prompt=follow_up) == 1  # 30 - 64 cached beats 10
    assert router.pick("colocated", [Request(0, prompt_len=10), Request(1, prompt_len=200)], loads,
                       prompt=follow_up) == 0  # 200 - 64 does not
    assert router.prefixes.cached_tokens(router.prefixes.hashes([*shared[:40], 7, 7, 7, 7]), 1) == 32
    assert router.prefixes.cached_tokens(router.prefixes.hashes(shared[:15]), 1) == 0  # no full block


def test_the_prefix_index_forgets_the_least_recently_sent_blocks_first() -> None:
    index = PrefixIndex(block_size=2, max_blocks=3)
    old, new = [1, 2, 3, 4], [5, 6, 7, 8]
    index.add(index.hashes(old), 0)
    index.add(index.hashes(new), 1)  # 4 blocks in all: the first of ``old`` goes
    assert index.cached_tokens(index.hashes(old), 0) == 0 and index.cached_tokens(index.hashes(new), 1) == 4
    index.clear()
    assert index.cached_tokens(index.hashes(new), 1) == 0


def test_a_follow_up_prompt_goes_to_the_instance_that_computed_its_start(checkpoints: dict[str, Path]) -> None:
    first = ["Once upon a time there was a king who ruled a land by the sea",
             "The quick brown fox jumps over the lazy dog and runs far away"]
    engine = ShardedEngine(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), ClusterConfig.colocated(instances=2))
    params = SamplingParams(temperature=0.0, max_tokens=4)

    async def run(prompts: list[str], tag: str) -> None:
        async def one(index: int, prompt: str) -> None:
            async for _ in engine.generate(prompt, params, f"{tag}{index}"):
                pass
        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))

    try:
        asyncio.run(run(first, "first"))
        assert engine.requests_per_instance == [1, 1]
        asyncio.run(run([first[1] + ", said the king."], "again"))  # both idle: the cache decides
        assert engine.requests_per_instance == [1, 2]
    finally:
        engine.shutdown()


async def test_the_session_header_keeps_a_conversation_on_its_instance(checkpoints: dict[str, Path]) -> None:
    """Through the service: concurrent requests of one session all go to one of two colocated instances."""
    engines = LocalEngines({MODEL: checkpoints["llama"]}, cluster=ClusterConfig.colocated(instances=2), **OPTIONS)
    body = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 8}
    try:
        with serving(create_app(engines, TOKEN)) as url:
            backend = Backend(url, engines)
            async with httpx.AsyncClient(headers=backend.headers(), timeout=60) as client:
                async def ask(session: str | None) -> int:
                    headers = {"x-session-affinity": session} if session else {}
                    return (await client.post(backend.run_url(), json=body, headers=headers)).status_code

                assert await asyncio.gather(*(ask("chat-42") for _ in range(4))) == [200] * 4
                pinned = list(engines.engine(MODEL).requests_per_instance)
                assert sorted(pinned) == [0, 4]
                assert await asyncio.gather(*(ask(None) for _ in range(4))) == [200] * 4
                spread = [after - before for after, before in zip(engines.engine(MODEL).requests_per_instance, pinned)]
                assert min(spread) > 0  # without a session the same load is shared out
    finally:
        engines.shutdown()
