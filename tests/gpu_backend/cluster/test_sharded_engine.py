"""Sharded instances over Gloo on CPU generate token for token what one process does.

Each layout starts a real instance (``ShardedEngine`` spawns its ranks), sends the prompts
concurrently, greedy and seeded, and compares every token with ``LLM.generate`` on the same
checkpoint. The engine options make prompts run in chunks that flow through the pipeline
(``max_num_batched_tokens``) and reuse the prefix cache (a prompt sent twice).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from checkpoints import build_checkpoint
from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec
from gpu_backend.config import EngineConfig
from gpu_backend.errors import PromptTooLongError
from gpu_backend.cluster.sharded_engine import ShardedEngine
from tokenizer_fixtures import build_byte_level_tokenizer

VOCAB = 384
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24}
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea", "The quick brown fox", "A",
           "Once upon a time there was a king who ruled a land by the sea"]
SAMPLINGS = [SamplingParams(temperature=0.0, max_tokens=12),
             SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=12)]
# (checkpoint, tp, pp, pp_layers): Llama with GQA (4 heads, 2 KV heads), Qwen2 with qkv bias,
# one KV head (replicated over TP ranks), and 3 or 5 layers (uneven stages, an explicit split).
LAYOUTS = [
    ("llama", 2, 1, None), ("llama", 1, 2, None), ("llama", 2, 2, None),
    ("qwen2", 2, 1, None), ("qwen2", 1, 2, None),
    ("one_kv_head", 2, 1, None), ("one_kv_head", 2, 2, None),
    ("odd_layers", 1, 2, None), ("odd_layers", 2, 2, None), ("five_layers", 1, 3, (1, 3, 1)),
]


@pytest.fixture(scope="module")
def folders(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharded")
    extra = {"one_kv_head": {"num_kv_heads": 1}, "odd_layers": {"num_layers": 3}, "five_layers": {"num_layers": 5}}
    built = {}
    for name, options in extra.items():
        built[name] = build_checkpoint(root / name, "llama", vocab_size=VOCAB, **options)
        build_byte_level_tokenizer(built[name], vocab_size=VOCAB)
    return {"llama": checkpoints["llama"], "qwen2": checkpoints["qwen2"], **built}


def expected_tokens(folder: Path, params: SamplingParams) -> list[list[int]]:
    llm = LLM(str(folder), progress=False, **OPTIONS)
    return [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]


async def generate(engine: ShardedEngine, prompt: str, params: SamplingParams, request_id: str) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, params, request_id):
        tokens += output.new_token_ids
    return tokens


async def generate_all(engine: ShardedEngine, params: SamplingParams, tag: str) -> list[list[int]]:
    return list(await asyncio.gather(*(generate(engine, prompt, params, f"{tag}{index}")
                                       for index, prompt in enumerate(PROMPTS))))


@pytest.mark.parametrize(("model", "tp", "pp", "pp_layers"), LAYOUTS,
                         ids=[f"{m}-tp{tp}-pp{pp}" + ("-" + "+".join(map(str, layers)) if layers else "")
                              for m, tp, pp, layers in LAYOUTS])
def test_sharded_instance_generates_what_one_process_does(folders: dict[str, Path], model: str, tp: int, pp: int,
                                                        pp_layers: tuple[int, ...] | None) -> None:
    folder = folders[model]
    engine = ShardedEngine(EngineConfig(model=str(folder), **OPTIONS), ClusterConfig.colocated(tp, pp, pp_layers, instance_timeout_s=20.0))
    try:
        for index, params in enumerate(SAMPLINGS):
            assert asyncio.run(generate_all(engine, params, f"s{index}-")) == expected_tokens(folder, params)
        assert engine.stats()["kv_blocks_used"] == 0
        assert engine.error is None
    finally:
        engine.shutdown()


def test_preemption_and_bad_input_on_a_pipeline(folders: dict[str, Path]) -> None:
    """A cache too small for every prompt at once preempts and recomputes; results stay exact."""
    folder = folders["odd_layers"]
    options = {**OPTIONS, "num_kv_blocks": 14, "block_size": 4}
    params = SamplingParams(temperature=0.0, max_tokens=8)
    llm = LLM(str(folder), progress=False, **options)
    expected = [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]
    engine = ShardedEngine(EngineConfig(model=str(folder), **options), ClusterConfig.colocated(2, 2, instance_timeout_s=20.0))
    try:
        assert asyncio.run(generate_all(engine, params, "p")) == expected
        assert engine.stats()["num_preemptions"] > 0
        with pytest.raises(PromptTooLongError, match="KV blocks"):
            asyncio.run(generate(engine, "x" * 80, params, "too-long"))
        assert engine.stats()["kv_blocks_used"] == 0
    finally:
        engine.shutdown()


def test_leaving_a_stream_aborts_it_on_every_rank(folders: dict[str, Path]) -> None:
    """A client that goes away mid-stream: the pipeline frees the request's blocks and keeps serving."""
    folder = folders["llama"]
    engine = ShardedEngine(EngineConfig(model=str(folder), **OPTIONS), ClusterConfig.colocated(pp=2, instance_timeout_s=20.0))
    held = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

    async def leave_early() -> None:
        stream = engine.generate("Once upon a time", held, "leaver")
        await anext(stream)
        await anext(stream)
        await stream.aclose()

    try:
        asyncio.run(leave_early())
        deadline = time.monotonic() + 10
        while engine.stats()["kv_blocks_used"] or engine.stats()["num_running"]:
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.05)
        params = SAMPLINGS[0]
        assert asyncio.run(generate_all(engine, params, "after-")) == expected_tokens(folder, params)
    finally:
        engine.shutdown()


@pytest.mark.parametrize("shapes", [((1, 1), (1, 1)), ((2, 1), (1, 2))], ids=["tp1+tp1", "tp2+pp2"])
def test_two_colocated_instances_share_the_requests_and_stay_exact(folders: dict[str, Path],
                                                                  shapes: tuple[tuple[int, int], ...]) -> None:
    """Two instances in one world (each with its own driver, groups and pipe), of the same shape or
    not; the router spreads the load."""
    folder = folders["llama"]
    config = EngineConfig(model=str(folder), **OPTIONS)
    instances = tuple(InstanceSpec(tp_size=tp, pp_size=pp) for tp, pp in shapes)
    engine = ShardedEngine(config, ClusterConfig(instances, instance_timeout_s=20.0))
    try:
        assert engine.max_num_seqs == 2 * config.max_num_seqs
        for index, params in enumerate(SAMPLINGS):
            assert asyncio.run(generate_all(engine, params, f"s{index}-")) == expected_tokens(folder, params)
        assert sum(engine.requests_per_instance) == 8 and min(engine.requests_per_instance) > 0  # shared by tokens
        assert engine.stats()["kv_blocks_used"] == 0 and engine.stats()["kv_blocks_free"] == 2 * 64
    finally:
        engine.shutdown()
