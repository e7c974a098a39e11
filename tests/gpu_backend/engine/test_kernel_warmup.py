"""engine/kernel_warmup.py: the throwaway batches run through the real forward and sampler and
leave the KV cache untouched (every write skipped); on a GPU, the engine then serves exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_backend.config import EngineConfig, ModelConfig
from gpu_backend.engine.kernel_warmup import warm_up
from gpu_backend.engine.model_runner import ModelRunner


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")])])
def test_warm_up_runs_every_batch_and_writes_no_cache(checkpoints: dict[str, Path], device: str) -> None:
    config = EngineConfig(model=str(checkpoints["llama"]), device=device, dtype="float32", num_kv_blocks=16,
                          max_model_len=256, max_num_batched_tokens=64, max_num_seqs=256,
                          enforce_eager=True)
    runner = ModelRunner(config, ModelConfig.from_pretrained(config.model), progress=False)
    runner.kv_cache.fill_(7.0)
    ran = warm_up(runner)
    # prompts of 2..64 tokens behind 0, 1 or 3 decodes within 64 tokens, 3 decode batches, one split context
    assert ran == 22 + 3 + 1
    assert bool((runner.kv_cache == 7.0).all()), "a warm-up batch wrote into the KV cache"
    if device == "cuda":  # the split contexts follow the decode kernel's own constants
        from gpu_backend.engine import kernel_warmup
        from gpu_backend.kernels import triton_attention

        assert (kernel_warmup.SPLIT_TOKENS, kernel_warmup.MAX_SPLITS) == (triton_attention.MIN_SPLIT_TOKENS,
                                                                          triton_attention.MAX_SPLITS)
