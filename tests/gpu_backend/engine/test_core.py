"""EngineCore: outputs in token ids that hold only what each step added (emitting a token costs
the same at any length), no text and no stop strings; the offline LLMEngine adds both on top."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.config import EngineConfig
from gpu_backend.engine.core import EngineCore
from gpu_backend.engine.outputs import EngineOutput

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 48, "max_model_len": 200}
LONG = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)


@pytest.fixture(scope="module")
def core(checkpoints: dict[str, Path]) -> EngineCore:
    return EngineCore(EngineConfig(model=str(checkpoints["llama"]), **OPTIONS), progress=False)


@pytest.fixture(scope="module")
def offline(checkpoints: dict[str, Path]) -> LLM:
    return LLM(str(checkpoints["llama"]), progress=False, **OPTIONS)


def run(core: EngineCore, prompt: list[int], params: SamplingParams, request_id: str) -> list[EngineOutput]:
    core.add_request(prompt, params, request_id)
    outputs = []
    while core.has_unfinished_requests():
        outputs += [output for output in core.step() if output.request_id == request_id]
    return outputs


def test_each_output_holds_only_what_its_step_added(core: EngineCore, offline: LLM) -> None:
    outputs = run(core, [5, 6, 7], LONG, "long")
    assert [len(output.new_token_ids) for output in outputs] == [1] * 20  # the 20th as small as the 1st
    assert [len(output.new_logprobs or ()) for output in outputs] == [1] * 20
    assert [output.num_completion_tokens for output in outputs] == list(range(1, 21))
    assert {output.num_prompt_tokens for output in outputs} == {3}
    assert [output.finish_reason for output in outputs] == [None] * 19 + ["length"]
    want = offline.generate([[5, 6, 7]], LONG)[0].outputs[0]
    assert [token for output in outputs for token in output.new_token_ids] == want.token_ids
    assert [item for output in outputs for item in output.new_logprobs or ()] == want.logprobs
    assert core.block_manager.num_used_blocks == 0


def test_stop_strings_are_for_whoever_makes_the_text(core: EngineCore, offline: LLM) -> None:
    """The core samples the same ids with or without a stop string; LLMEngine ends the request at it."""
    plain = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    whole = offline.generate([[5, 6, 7]], plain)[0]
    stop = whole.text[2:5]
    assert stop and stop not in whole.text[:4]
    with_stop = replace(plain, stop=[stop])
    ids = [token for output in run(core, [5, 6, 7], with_stop, "ignores") for token in output.new_token_ids]
    assert ids == whole.token_ids
    stopped = offline.generate([[5, 6, 7]], with_stop)[0]
    assert stopped.finish_reason == "stop" and stopped.outputs[0].stop_reason == stop
    assert stopped.text == whole.text[:whole.text.index(stop)] and len(stopped.token_ids) < 10
    assert offline.engine.block_manager.num_used_blocks == 0


def test_finish_ends_a_running_request_and_frees_its_blocks(core: EngineCore) -> None:
    core.add_request([5, 6, 7], LONG, "finished")
    while not any(output.request_id == "finished" for output in core.step()):
        pass
    core.finish("finished", "stop")
    assert "finished" not in core.requests and core.abort("finished") is None
    while core.has_unfinished_requests():
        core.step()
    core.step()  # the token of the step still on the device is read back and dropped
    assert core.block_manager.num_used_blocks == 0 and not core.held
