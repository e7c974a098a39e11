"""Sharded instances on NVIDIA GPUs (NCCL, CUDA graphs per rank) generate what one process does.

Every layout that fits the machine's GPUs runs: a world of one rank (the driver path, NCCL and
graphs in a spawned process) on any GPU machine, TP=2 and PP=2 with two GPUs, TP=2 x PP=2 with four.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.config import EngineConfig
from gpu_backend.cluster.sharded_engine import ShardedEngine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

OPTIONS = {"device": "cuda", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24, "max_num_seqs": 8}
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea", "The quick brown fox", "A"]
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]


async def _generate_all(engine: ShardedEngine, params: SamplingParams) -> list[list[int]]:
    async def one(prompt: str, request_id: str) -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate(prompt, params, request_id):
            tokens += output.new_token_ids
        return tokens

    return list(await asyncio.gather(*(one(prompt, str(index)) for index, prompt in enumerate(PROMPTS))))


@pytest.mark.parametrize(("tp", "pp"), LAYOUTS, ids=[f"tp{tp}-pp{pp}" for tp, pp in LAYOUTS])
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_gpu_sharded_instance_generates_what_one_process_does(checkpoints: dict[str, Path], tp: int, pp: int,
                                                            enforce_eager: bool) -> None:
    if torch.cuda.device_count() < tp * pp:
        pytest.skip(f"needs {tp * pp} GPUs, this machine has {torch.cuda.device_count()}")
    folder = checkpoints["llama"]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    options = {**OPTIONS, "enforce_eager": enforce_eager}
    llm = LLM(str(folder), progress=False, **options)
    expected = [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]
    del llm
    engine = ShardedEngine(EngineConfig(model=str(folder), **options), ClusterConfig.colocated(tp, pp, instance_timeout_s=60.0))
    try:
        assert asyncio.run(_generate_all(engine, params)) == expected
        assert engine.stats()["kv_blocks_used"] == 0
    finally:
        engine.shutdown()


def _chain(runners: list, ids: torch.Tensor, positions: torch.Tensor, meta: object, graphed: bool) -> torch.Tensor:
    out = None
    for runner in runners:
        if graphed:
            out = runner.graphs.run(ids, positions, meta, out)
            out = out if runner.model.stage.is_last else (out[0].clone(), out[1].clone())
        else:
            out = runner.model(ids, positions, meta, out)
    return runners[-1].model.compute_logits(out)


@torch.inference_mode()
def test_gpu_pipeline_stage_graphs_equal_eager_stages(checkpoints: dict[str, Path]) -> None:
    """Each stage's captured decode graph, chained through (hidden, residual), gives the eager chain's logits."""
    from dataclasses import replace

    from gpu_backend.config import ModelConfig
    from gpu_backend.engine.model_runner import ModelRunner
    from gpu_backend.engine.step_inputs import attention_metadata
    from gpu_backend.parallel.pipeline import stage_of

    folder = checkpoints["llama_v4_sharded"]  # 3 layers: stages of 2 and 1
    config = EngineConfig(model=str(folder), device="cuda", dtype="float32", num_kv_blocks=8, max_model_len=64,
                          max_num_seqs=4)
    model_config = ModelConfig.from_pretrained(folder)
    stages = [stage_of(rank, 2, model_config.num_hidden_layers) for rank in range(2)]
    logits = {}
    for graphed in (True, False):
        runners = [ModelRunner(replace(config, enforce_eager=not graphed), model_config, progress=False, stage=stage)
                   for stage in stages]
        assert all((runner.graphs is not None) == graphed for runner in runners)
        cuda = torch.device("cuda")
        tables = torch.tensor([[0], [1]], dtype=torch.int32, device=cuda)
        prompt = attention_metadata([5, 7], [5, 7], tables, torch.tensor([*range(5), *range(16, 23)], device=cuda), cuda)
        ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], device=cuda)
        _chain(runners, ids, torch.tensor([*range(5), *range(7)], device=cuda), prompt, graphed=False)
        decode = attention_metadata([1, 1], [6, 8], tables, torch.tensor([5, 23], device=cuda), cuda)
        logits[graphed] = _chain(runners, torch.tensor([7, 9], device=cuda), torch.tensor([5, 7], device=cuda),
                                 decode, graphed=graphed)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-4, rtol=1e-4)
