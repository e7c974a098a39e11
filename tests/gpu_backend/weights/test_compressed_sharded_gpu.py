"""ECF weights kept coded under TP and PP on NVIDIA GPUs (NCCL, CUDA graphs per rank): each rank decodes its
own slices inside the kernels, and the sharded compressed model generates what the sharded original does in
the same layout (TP changes where sums are split, so the original in that layout is the reference). Under
PP alone the sums do not change: it also generates what one process does.

Every layout that fits the machine's GPUs runs: TP=2 and PP=2 with two GPUs, TP=2 x PP=2 with four.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from compressed_checkpoints import compressed_shakespeare

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.config import EngineConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]

OPTIONS = {"device": "cuda", "dtype": "bfloat16", "num_kv_blocks": 64, "max_model_len": 256}
PROMPTS = ["ROMEO:", "KING HENRY:", "JULIET:"]
# (tp, pp, seed): greedy in every layout, seeded sampling under TP
CASES = [(2, 1, None), (2, 1, 7), (1, 2, None), (2, 2, None)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return compressed_shakespeare(tmp_path_factory.mktemp("ecf"))


def _sharded_tokens(folder: Path, tp: int, pp: int, params: SamplingParams, **options) -> list[list[int]]:
    engine = ShardedEngine(EngineConfig(model=str(folder), **OPTIONS, **options),
                           ClusterConfig.colocated(tp, pp, instance_timeout_s=60.0))

    async def one(prompt: str, request_id: str) -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate(prompt, params, request_id):
            tokens += output.new_token_ids
        return tokens

    async def every_prompt() -> list[list[int]]:
        return list(await asyncio.gather(*(one(p, str(i)) for i, p in enumerate(PROMPTS))))

    try:
        tokens = asyncio.run(every_prompt())
        assert engine.error is None
        assert engine.stats()["kv_blocks_used"] == 0
        return tokens
    finally:
        engine.shutdown()


@pytest.mark.parametrize(("tp", "pp", "seed"), CASES,
                         ids=[f"tp{tp}-pp{pp}-{'greedy' if seed is None else 'seeded'}" for tp, pp, seed in CASES])
def test_sharded_kernel_mode_generates_the_sharded_originals_tokens(folders: tuple[Path, Path], tp: int, pp: int,
                                                                    seed: int | None) -> None:
    if torch.cuda.device_count() < tp * pp:
        pytest.skip(f"needs {tp * pp} GPUs, this machine has {torch.cuda.device_count()}")
    src, ecf = folders
    params = SamplingParams(temperature=0.0 if seed is None else 0.8, seed=seed, max_tokens=32, ignore_eos=True)
    original = _sharded_tokens(src, tp, pp, params)
    coded = _sharded_tokens(ecf, tp, pp, params, compressed_weights="kernel")
    assert coded == original
    assert all(len(tokens) == 32 for tokens in coded)
    if tp == 1:
        llm = LLM(str(src), progress=False, **OPTIONS)
        assert coded == [output.outputs[0].token_ids for output in llm.generate(PROMPTS, params)]
