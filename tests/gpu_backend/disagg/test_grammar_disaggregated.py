"""Structured output across a prefill/decode hand-off (Gloo on CPU): the prefill instance samples
the first token under the grammar, the decode instance's matcher takes that token in
(``EngineCore.admit``) and constrains the rest. Token for token what one process generates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig, InstanceSpec
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.config import EngineConfig
from gpu_backend.disagg.flow import sharded_engine
from gpu_backend.engine.structured_output import StructuredOutput

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24}
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea", "The quick brown fox", "A"]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "n"],
          "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "number", "minimum": -2,
                                                                          "maximum": 2}}}
JSON = StructuredOutput.json_schema(SCHEMA)
PARAMS = [SamplingParams(temperature=0.0, max_tokens=40, structured=JSON),
          SamplingParams(temperature=0.9, seed=11, max_tokens=40, structured=JSON, logit_bias={7: 3.0, 9: -100}),
          SamplingParams(temperature=0.0, max_tokens=40, structured=StructuredOutput.lark('start: "ab" "c"+'))]
LAYOUTS = [((1, 1), (1, 1)), ((2, 1), (1, 2))]  # (prefill tp, pp) -> (decode tp, pp)


async def generate(engine: ShardedEngine, prompt: str, params: SamplingParams, request_id: str) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, params, request_id):
        tokens += output.new_token_ids
    return tokens


async def generate_all(engine: ShardedEngine) -> list[list[int]]:
    return list(await asyncio.gather(*(generate(engine, prompt, params, f"r{index}")
                                       for index, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)))))


@pytest.mark.parametrize(("prefill", "decode"), LAYOUTS, ids=[f"p{p[0]}x{p[1]}-d{d[0]}x{d[1]}" for p, d in LAYOUTS])
def test_the_grammar_state_crosses_the_hand_off(checkpoints: dict[str, Path], prefill: tuple[int, int],
                                                decode: tuple[int, int]) -> None:
    folder = checkpoints["llama"]
    llm = LLM(str(folder), progress=False, **OPTIONS)
    expected = [output.outputs[0].token_ids for output in llm.generate(PROMPTS, PARAMS)]
    cluster = ClusterConfig.disaggregated(InstanceSpec(tp_size=prefill[0], pp_size=prefill[1]),
                                          InstanceSpec(tp_size=decode[0], pp_size=decode[1]), instance_timeout_s=20.0)
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS), cluster)
    try:
        assert asyncio.run(generate_all(engine)) == expected
        for tokens in expected[:2]:
            jsonschema.validate(json.loads(llm.engine.tokenizer.decode(tokens[:-1])), SCHEMA)
        assert llm.engine.tokenizer.decode(expected[2][:-1]).startswith("abc")
        assert engine.error is None
    finally:
        engine.shutdown()


@pytest.mark.parametrize("disaggregated", [True, False], ids=["prefill-decode", "colocated-tp2"])
def test_recompute_after_a_lost_rank_resumes_the_grammar(checkpoints: dict[str, Path], disaggregated: bool) -> None:
    """--on-instance-loss recompute: the request is submitted again with the tokens already streamed
    at the end of its prompt; its new matcher takes them in first, so the rest still fits the schema."""
    folder = checkpoints["llama"]
    layout = (ClusterConfig.disaggregated(InstanceSpec(), InstanceSpec(), instance_timeout_s=20.0) if disaggregated
              else ClusterConfig.colocated(tp=2, instance_timeout_s=20.0))
    engine = sharded_engine(EngineConfig(model=str(folder), **OPTIONS),
                            replace(layout, on_instance_loss="recompute", instance_restarts=1))
    params = PARAMS[0]
    want = LLM(str(folder), progress=False, **OPTIONS).generate(PROMPTS[1], params)[0].outputs[0].token_ids
    assert len(want) > 8

    async def killed_mid_stream() -> list[int]:
        tokens: list[int] = []
        async for output in engine.generate(PROMPTS[1], params, "survivor"):
            if len(tokens) < 5 <= len(tokens) + len(output.new_token_ids):
                os.kill(engine.rank_pids()[1], signal.SIGKILL)  # the decode instance, or a TP rank
            tokens += output.new_token_ids
        return tokens

    try:
        assert asyncio.run(killed_mid_stream()) == want
        assert engine.restarts == 1
    finally:
        engine.shutdown()
