"""A prompt prefilled by one engine and decoded by another (the engine side of disaggregated
serving): the decode engine reserves blocks, the prefill engine computes the prompt and the first
token and holds its blocks, the KV is copied block for block, and the decode engine admits the
sequence and carries on. The tokens equal one engine's; blocks come back on both sides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.config import EngineConfig
from gpu_backend.engine.engine import LLMEngine

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 32, "max_model_len": 200, "block_size": 4,
           "max_num_batched_tokens": 8}  # chunked prompts
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
PROMPTS = [list(range(5, 30)), [40, 41, 42], list(range(5, 30))]  # the third hits the decode side's prefix cache


def until_finished(engine: LLMEngine) -> dict[str, list[int]]:
    done = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                done[output.request_id] = output.outputs[0].token_ids
    return done


def hand_off(prefill: LLMEngine, decode: LLMEngine, prompt: list[int], request_id: str) -> tuple[list[int], int]:
    """One request through both engines; returns its tokens and how many blocks were copied."""
    blocks = decode.reserve(prompt, GREEDY, request_id)
    assert blocks is not None
    prefill.add_request(prompt, replace(GREEDY, max_tokens=1), request_id, hold_blocks=True)
    first = until_finished(prefill)[request_id]
    assert len(first) == 1 and request_id in prefill.held
    source = prefill.held[request_id].block_table[-len(blocks):] if blocks else []
    decode.runner.kv_cache[:, :, blocks] = prefill.runner.kv_cache[:, :, source]  # what kv_transfer carries
    prefill.release_blocks(request_id)
    assert decode.admit(request_id, first[0]) is None
    return until_finished(decode)[request_id], len(blocks)


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_prefill_here_decode_there_equals_one_engine(checkpoints: dict[str, Path], model: str) -> None:
    folder = str(checkpoints[model])
    expected = [o.outputs[0].token_ids for o in LLM(folder, progress=False, **OPTIONS).generate(PROMPTS, GREEDY)]
    prefill = LLMEngine(EngineConfig(model=folder, **OPTIONS), progress=False)
    decode = LLMEngine(EngineConfig(model=folder, **OPTIONS), progress=False)
    results = [hand_off(prefill, decode, prompt, f"r{index}") for index, prompt in enumerate(PROMPTS)]
    assert [tokens for tokens, _ in results] == expected
    copied = [count for _, count in results]
    assert copied[2] < copied[0]  # the repeated prompt's full blocks were already in the decode cache
    assert prefill.block_manager.num_used_blocks == 0 and decode.block_manager.num_used_blocks == 0


def test_aborts_at_each_stage_free_the_blocks(checkpoints: dict[str, Path]) -> None:
    folder = str(checkpoints["llama"])
    prefill = LLMEngine(EngineConfig(model=folder, **OPTIONS), progress=False)
    decode = LLMEngine(EngineConfig(model=folder, **OPTIONS), progress=False)
    decode.reserve(PROMPTS[0], GREEDY, "reserved")
    assert decode.block_manager.num_used_blocks > 0 and not decode.has_unfinished_requests()
    decode.abort("reserved")  # aborted while its KV was on its way
    prefill.add_request(PROMPTS[0], replace(GREEDY, max_tokens=1), "held", hold_blocks=True)
    until_finished(prefill)
    assert prefill.block_manager.num_used_blocks > 0
    prefill.abort("held")  # aborted after prefill, before its KV was sent
    assert prefill.block_manager.num_used_blocks == 0 and decode.block_manager.num_used_blocks == 0
    tiny = LLMEngine(EngineConfig(model=folder, **{**OPTIONS, "num_kv_blocks": 8}), progress=False)
    assert tiny.reserve(list(range(5, 30)), GREEDY, "fits") is not None
    assert tiny.reserve(list(range(5, 30)), GREEDY, "waits") is None  # no free blocks: try later
    assert "waits" not in tiny.requests


def test_an_abort_while_the_last_prefill_step_is_on_the_device_frees_the_held_blocks(
        checkpoints: dict[str, Path]) -> None:
    """The step that ends a held prompt by length has launched, its token not read back yet: an
    abort then (a client that left as its prefill ended) must free the blocks it holds."""
    prefill = LLMEngine(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), progress=False)
    prefill.add_request([40, 41, 42], replace(GREEDY, max_tokens=1), "ending", hold_blocks=True)
    assert prefill.step() == []  # launched: the one chunk ends it by length; the token is on the device
    assert "ending" in prefill.requests and "ending" not in prefill.held
    prefill.abort("ending")
    until_finished(prefill)
    assert prefill.block_manager.num_used_blocks == 0 and not prefill.held
