"""The engine's pipeline mode (``LLMEngine._pipeline_step``) in one process: with a runner that
keeps two batches in flight, the running sequences are shared out between the two, a sequence
sits out while its token is in flight, and every token is what the ordinary step loop makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_backend import SamplingParams
from gpu_backend.config import EngineConfig, ModelConfig
from gpu_backend.engine.engine import LLMEngine
from gpu_backend.engine.model_runner import ModelRunner

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [30, 31], [40, 41, 42, 43], [50]]
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 48, "max_model_len": 200,
           "max_num_batched_tokens": 8}  # the long prompt runs in chunks


def run(engine: LLMEngine, params: SamplingParams) -> list[list[int]]:
    ids = [engine.add_request(prompt, params) for prompt in PROMPTS]
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output.outputs[0].token_ids
    return [finished[request_id] for request_id in ids]


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
                                    SamplingParams(temperature=0.9, seed=3, max_tokens=10, ignore_eos=True)],
                         ids=["greedy", "seeded"])
def test_two_batches_in_flight_make_the_same_tokens(checkpoints: dict[str, Path], params: SamplingParams) -> None:
    config = EngineConfig(model=str(checkpoints["llama"]), **OPTIONS)
    expected = run(LLMEngine(config, progress=False), params)
    runner = ModelRunner(config, ModelConfig.from_pretrained(config.model), progress=False)
    runner.pipeline_depth = 2
    engine = LLMEngine(config, progress=False, runner=runner)
    launched, in_flight = [], []
    launch = runner.launch

    def recording(batch, previous=None):  # noqa: ANN001, ANN202 (the runner's own signature)
        assert not any(seq.has_pending_token for seq in batch.seqs), "a sequence ran before its token came back"
        launched.append(len(batch.seqs))
        in_flight.append(len(engine.core._pipeline) + 1)
        return launch(batch, previous)

    runner.launch = recording
    assert run(engine, params) == expected
    assert max(launched) <= 2, launched  # four sequences, two batches: two each at most
    assert max(in_flight) == 2
    assert engine.block_manager.num_used_blocks == 0
