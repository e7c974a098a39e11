"""Disaggregated serving over Gloo on CPU: prefill instances compute the prompt and the first token,
push the KV to a decode instance (re-sharded when their layouts differ), and the decode instance
carries on. Every token equals the single-process run; every block comes back on every instance."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec
from gpu_backend.config import EngineConfig
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.disagg.flow import sharded_engine
from gpu_backend.server.text import stream_text

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24}  # long prompts prefill in chunks
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea", "The quick brown fox", "A",
           "Once upon a time there was a king who ruled a land by the sea"]  # a prefix-cache hit on both sides
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=12, ignore_eos=True)
AT_LEAST = SamplingParams(temperature=0.0, max_tokens=12, min_tokens=4)  # the prefill instance draws one of them
# (prefill tp, pp) -> (decode tp, pp): the layouts of the issue
LAYOUTS = [((1, 1), (1, 1)), ((2, 1), (1, 1)), ((1, 2), (2, 1)), ((1, 1), (1, 2))]


def cluster(prefill: tuple[int, int], decode: tuple[int, int], instances: int = 1) -> ClusterConfig:
    return ClusterConfig.disaggregated(InstanceSpec(tp_size=prefill[0], pp_size=prefill[1]),
                                       InstanceSpec(tp_size=decode[0], pp_size=decode[1]), prefill_instances=instances,
                                       decode_instances=instances, instance_timeout_s=20.0)


def expected(folder: Path, prompts: list[str], params: SamplingParams = GREEDY) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in LLM(str(folder), progress=False, **OPTIONS).generate(prompts, params)]


async def generate(engine: ShardedEngine, prompt: str, request_id: str, params: SamplingParams = GREEDY) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, params, request_id):
        tokens += output.new_token_ids
    return tokens


async def generate_all(engine: ShardedEngine, prompts: list[str], tag: str,
                       params: SamplingParams = GREEDY) -> list[list[int]]:
    return list(await asyncio.gather(*(generate(engine, p, f"{tag}{i}", params) for i, p in enumerate(prompts))))


def wait_for_free_blocks(engine: ShardedEngine, total: int) -> None:
    deadline = time.monotonic() + 10
    while engine.stats()["kv_blocks_free"] != total or engine.stats()["num_running"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.05)


@pytest.mark.parametrize(("prefill", "decode"), LAYOUTS, ids=[f"p{p[0]}x{p[1]}-d{d[0]}x{d[1]}" for p, d in LAYOUTS])
def test_prefill_then_decode_elsewhere_generates_what_one_process_does(checkpoints: dict[str, Path],
                                                                       prefill: tuple[int, int],
                                                                       decode: tuple[int, int]) -> None:
    folder = checkpoints["llama"]
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster(prefill, decode))
    try:
        assert asyncio.run(generate_all(engine, PROMPTS, "r")) == expected(folder, PROMPTS)
        # the decode instance's generator goes on past the prefill instance's draw of the first token
        assert asyncio.run(generate_all(engine, PROMPTS, "s", SEEDED)) == expected(folder, PROMPTS, SEEDED)
        assert asyncio.run(generate_all(engine, PROMPTS, "m", AT_LEAST)) == expected(folder, PROMPTS, AT_LEAST)
        wait_for_free_blocks(engine, 2 * 64)
    finally:
        engine.shutdown()


def test_the_kv_moves_in_chunks_while_the_prompt_is_computed(checkpoints: dict[str, Path]) -> None:
    """A 62-token prompt prefilled 24 tokens a step: its full blocks go out after the steps that
    complete them, the partial last one with the first token; the tokens are still exact."""
    folder = checkpoints["llama"]
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster((2, 1), (1, 2)))
    try:
        assert asyncio.run(generate_all(engine, PROMPTS[:1], "long")) == expected(folder, PROMPTS[:1])
        assert engine.flow.kv_chunks_relayed >= 2
        wait_for_free_blocks(engine, 2 * 64)
    finally:
        engine.shutdown()


def test_two_prefill_and_two_decode_instances_under_load(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["qwen2"]
    prompts = [f"{word} and the {other}" for word in ("Once", "The", "A", "Lo") for other in ("sea", "king")]
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster((1, 1), (1, 1), instances=2))
    try:
        assert asyncio.run(generate_all(engine, prompts, "load")) == expected(folder, prompts)
        assert min(engine.requests_per_instance[:2]) > 0  # both prefill instances took prompts
        wait_for_free_blocks(engine, 4 * 64)
    finally:
        engine.shutdown()


def test_clients_leaving_at_each_stage_free_every_block(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["llama"]
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster((1, 1), (1, 1)))
    long_run = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)

    async def leave(after: int, request_id: str) -> None:
        stream = engine.generate(PROMPTS[0], long_run, request_id)
        for _ in range(after):
            await anext(stream)
        await stream.aclose()

    async def leave_during_prefill() -> None:
        task = asyncio.ensure_future(generate(engine, PROMPTS[0], "prefilling"))
        await asyncio.sleep(0.01)
        task.cancel()

    async def leave_while_kv_is_on_its_way() -> None:
        """After the first chunk of the prompt's KV went out, before the prompt is done."""
        relayed = engine.flow.kv_chunks_relayed
        task = asyncio.ensure_future(generate(engine, PROMPTS[0] + " and the king", "in-transfer"))
        while engine.flow.kv_chunks_relayed == relayed and not task.done():
            await asyncio.sleep(0.001)
        task.cancel()

    try:
        asyncio.run(leave(1, "after-first-token"))  # left once decoding had taken over
        asyncio.run(leave(3, "decoding"))
        asyncio.run(leave_during_prefill())
        asyncio.run(leave_while_kv_is_on_its_way())
        wait_for_free_blocks(engine, 2 * 64)
        assert asyncio.run(generate_all(engine, PROMPTS[:2], "after")) == expected(folder, PROMPTS[:2])
    finally:
        engine.shutdown()


@pytest.mark.parametrize("disaggregated", [True, False], ids=["prefill-decode", "colocated-tp2"])
def test_recompute_after_a_rank_is_killed_mid_stream(checkpoints: dict[str, Path], disaggregated: bool) -> None:
    """--on-instance-loss recompute: the world restarts, the request is computed again from its prompt and
    the tokens already streamed, and the stream carries on without a gap: the same tokens as one process."""
    import os
    import signal
    from dataclasses import replace

    folder = checkpoints["llama"]
    layout = cluster((1, 1), (1, 1)) if disaggregated else ClusterConfig.colocated(tp=2, instance_timeout_s=20.0)
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS),
                           replace(layout, on_instance_loss="recompute", instance_restarts=1))
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    want = LLM(str(folder), progress=False, **OPTIONS).generate(PROMPTS[1], params)[0].outputs[0]

    async def killed_mid_stream() -> tuple[list[int], str, int]:
        """As the service streams it: its text made from the ids of both submissions."""
        tokens, text, last = [], "", None
        async for delta in stream_text(engine, engine.tokenizer.encode(PROMPTS[1]), params, "survivor"):
            if len(tokens) < 5 <= len(tokens) + len(delta.token_ids):
                os.kill(engine.rank_pids()[1], signal.SIGKILL)  # the decode instance, or a TP rank
            tokens += delta.token_ids
            text += delta.text
            last = delta
        return tokens, text, last.completion_tokens

    try:
        tokens, text, completion_tokens = asyncio.run(killed_mid_stream())
        assert engine.restarts == 1
        assert tokens == want.token_ids and text == want.text and completion_tokens == 40
    finally:
        engine.shutdown()
