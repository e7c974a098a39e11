"""The engine on an NVIDIA GPU: Triton kernels and CUDA graphs give transformers' greedy tokens.

float32 on the GPU (IEEE dots in the Triton kernels) is compared token for token with
transformers; bfloat16 runs compare CUDA graphs with eager execution and the Triton kernels with
the torch twins, which must agree with each other token for token as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_backend import LLM, SamplingParams

from checkpoints import ARCHS
from reference_generation import GREEDY, assert_matches_transformers, make_prompts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda_graphs", "eager"])
def test_gpu_greedy_equals_transformers(checkpoints: dict[str, Path], arch: str, enforce_eager: bool) -> None:
    llm = LLM(str(checkpoints[arch]), device="cuda", dtype="float32", progress=False, num_kv_blocks=64,
              enforce_eager=enforce_eager, max_num_seqs=8)
    prompts = make_prompts(seed=1)
    assert_matches_transformers(checkpoints[arch], prompts, llm.generate(prompts, GREEDY))


def test_gpu_prefix_cache_chunked_prefill_and_preemption(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["llama"]
    llm = LLM(str(folder), device="cuda", dtype="float32", progress=False, num_kv_blocks=12,
              max_num_batched_tokens=16, max_num_seqs=8)
    prompts = make_prompts(seed=1)
    assert_matches_transformers(folder, prompts, llm.generate(prompts, GREEDY))
    assert llm.engine.scheduler.num_preemptions > 0
    again = llm.generate(prompts[3:], GREEDY)  # the 50-token prompt's full blocks may hit the cache
    assert_matches_transformers(folder, prompts[3:], again)


def test_bf16_graphs_equal_eager_and_torch_kernels(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["qwen3"]
    prompts = make_prompts(seed=4)
    runs = {}
    for name, options in {"graphs": {}, "eager": {"enforce_eager": True},
                          "torch": {"enforce_eager": True, "attention_backend": "torch"}}.items():
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", progress=False, num_kv_blocks=64, max_num_seqs=8,
                  **options)
        runs[name] = [o.token_ids for o in llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16,
                                                                                  ignore_eos=True))]
    assert runs["graphs"] == runs["eager"]
    # Triton and torch kernels round differently in bf16; tokens may part after a near tie, but
    # the first tokens of every prompt agree.
    assert [r[:4] for r in runs["eager"]] == [r[:4] for r in runs["torch"]]


def test_launching_a_step_never_waits_for_the_device(checkpoints: dict[str, Path]) -> None:
    """The step loop's lead over the device is lost if queuing a step synchronizes the stream
    (a blocking host-to-device copy, `.item()`, ...): launch runs under torch's sync check."""
    llm = LLM(str(checkpoints["llama"]), device="cuda", dtype="bfloat16", progress=False, num_kv_blocks=64,
              max_num_seqs=8, max_num_batched_tokens=32)
    prompts = make_prompts(seed=1)
    params = [GREEDY, SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=7, max_tokens=24),
              SamplingParams(temperature=1.0, min_p=0.1, max_tokens=24, logprobs=2), GREEDY]
    expected = llm.generate(prompts, params)  # warm-up: Triton compiles outside the check
    runner = llm.engine.runner
    launch = runner.launch

    def checked_launch(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    runner.launch = checked_launch
    outputs = llm.generate(prompts, params)
    assert [o.token_ids for o in outputs[:2]] == [o.token_ids for o in expected[:2]]
    assert outputs[3].token_ids == expected[3].token_ids
