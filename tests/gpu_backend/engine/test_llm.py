"""LLM end to end on CPU against transformers on the same random weights: greedy ids and logprobs.

Every supported architecture generates a batch of prompts of mixed lengths; the engine must pick
the same tokens as transformers' own greedy decoding (which runs each prompt alone), also when
the prefix cache hits, when prompts are prefilled in chunks and when sequences are preempted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_backend import LLM, SamplingParams

from checkpoints import ARCHS
from reference_generation import GREEDY, NEW_TOKENS, assert_matches_transformers, make_prompts


@pytest.mark.parametrize("arch", [*ARCHS, "llama_v4_sharded"])
def test_batched_greedy_equals_transformers(checkpoints: dict[str, Path], arch: str) -> None:
    llm = LLM(str(checkpoints[arch]), device="cpu", dtype="float32", progress=False, num_kv_blocks=64)
    prompts = make_prompts(seed=1)
    outputs = llm.generate(prompts, GREEDY)
    assert_matches_transformers(checkpoints[arch], prompts, outputs)
    assert all(o.finish_reason == "length" and len(o.token_ids) == NEW_TOKENS for o in outputs)
    assert llm.engine.block_manager.num_used_blocks == 0


def test_prefix_cache_hits_give_the_same_tokens(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["llama"]
    llm = LLM(str(folder), device="cpu", dtype="float32", progress=False, num_kv_blocks=64)
    shared = make_prompts(seed=2, lengths=(40,))[0]
    prompts = [shared + tail for tail in make_prompts(seed=3, lengths=(5, 12))]
    first = llm.generate(prompts[:1], GREEDY)
    second = llm.generate(prompts, GREEDY)
    assert first[0].num_cached_tokens == 0
    assert second[0].num_cached_tokens == 32  # the two full blocks of the first prompt
    assert second[1].num_cached_tokens == 32
    assert_matches_transformers(folder, prompts, second)


def test_chunked_prefill_gives_the_same_tokens(checkpoints: dict[str, Path]) -> None:
    folder = checkpoints["qwen2"]
    llm = LLM(str(folder), device="cpu", dtype="float32", progress=False, num_kv_blocks=64,
              max_num_batched_tokens=16, enable_prefix_caching=False)
    prompts = make_prompts(seed=1)
    assert_matches_transformers(folder, prompts, llm.generate(prompts, GREEDY))


@pytest.mark.parametrize("async_scheduling", [True, False], ids=["one-step-ahead", "synchronous"])
def test_preemption_gives_the_same_tokens(checkpoints: dict[str, Path], async_scheduling: bool) -> None:
    folder = checkpoints["qwen3"]
    # 12 blocks of 16 hold 192 tokens; the four sequences need 231 at the end: someone is preempted.
    llm = LLM(str(folder), device="cpu", dtype="float32", progress=False, num_kv_blocks=12,
              enable_prefix_caching=False, async_scheduling=async_scheduling)
    prompts = make_prompts(seed=1)
    outputs = llm.generate(prompts, GREEDY)
    assert llm.engine.scheduler.num_preemptions > 0
    assert_matches_transformers(folder, prompts, outputs)
    assert llm.engine.block_manager.num_free_blocks == 12


def test_text_prompts_and_chat(checkpoints: dict[str, Path]) -> None:
    llm = LLM(str(checkpoints["llama"]), device="cpu", dtype="float32", progress=False, num_kv_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    out = llm.generate(["Once upon a time"], params)[0]
    assert out.prompt_token_ids == llm.tokenizer.encode("Once upon a time")
    assert len(out.token_ids) == 8
    assert out.text == llm.tokenizer.decode(out.token_ids)
    chat = llm.chat([{"role": "user", "content": "hi"}], params)[0]
    rendered = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                 tokenize=True)
    assert chat.prompt_token_ids == rendered
