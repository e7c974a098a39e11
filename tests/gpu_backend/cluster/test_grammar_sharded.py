"""Structured output on sharded instances (Gloo on CPU): the driver makes each step's grammar
bitmask while the step's forward pass runs and sends it to the ranks; every rank of the last stage
samples with it. Token for token what one process generates, and valid against the schema."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from gpu_backend import LLM, SamplingParams
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.cluster.sharded_engine import ShardedEngine
from gpu_backend.config import EngineConfig
from gpu_backend.engine.structured_output import StructuredOutput
from gpu_backend.errors import InvalidRequestError

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256,
           "max_num_batched_tokens": 24}  # long prompts prefill in chunks
PROMPTS = ["Once upon a time there was a king who ruled a land by the sea", "The quick brown fox", "A"]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "ok"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "ok": {"type": "boolean"},
                         "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2}}}
JSON = StructuredOutput.json_schema(SCHEMA)
# a constrained greedy row, a constrained seeded row and a free row share each batch
PARAMS = [SamplingParams(temperature=0.0, max_tokens=40, structured=JSON),
          SamplingParams(temperature=0.9, seed=3, max_tokens=40, structured=JSON),
          SamplingParams(temperature=0.0, max_tokens=12, logit_bias={5: 4.0, 6: -100})]  # a biased free row
LAYOUTS = [(2, 1), (1, 2), (2, 2)]


async def generate(engine: ShardedEngine, prompt: str, params: SamplingParams, request_id: str) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, params, request_id):
        tokens += output.new_token_ids
    return tokens


async def generate_all(engine: ShardedEngine, tag: str) -> list[list[int]]:
    return list(await asyncio.gather(*(generate(engine, prompt, params, f"{tag}{index}")
                                       for index, (prompt, params) in enumerate(zip(PROMPTS, PARAMS)))))


@pytest.mark.parametrize(("tp", "pp"), LAYOUTS, ids=[f"tp{tp}-pp{pp}" for tp, pp in LAYOUTS])
def test_a_sharded_instance_constrains_as_one_process_does(checkpoints: dict[str, Path], tp: int, pp: int) -> None:
    folder = checkpoints["llama"]
    llm = LLM(str(folder), progress=False, **OPTIONS)
    expected = [output.outputs[0].token_ids for output in llm.generate(PROMPTS, PARAMS)]
    engine = ShardedEngine(EngineConfig(model=str(folder), **OPTIONS),
                           ClusterConfig.colocated(tp, pp, instance_timeout_s=20.0))
    try:
        assert asyncio.run(generate_all(engine, "g")) == expected
        for tokens in expected[:2]:
            assert tokens[-1] == 2  # ended on the eos token once the grammar was complete
            jsonschema.validate(json.loads(llm.engine.tokenizer.decode(tokens[:-1])), SCHEMA)
        with pytest.raises(InvalidRequestError, match="intger"):
            bad = StructuredOutput.json_schema({"type": "intger"})
            asyncio.run(generate(engine, "A", SamplingParams(structured=bad), "bad"))
        assert engine.stats()["kv_blocks_used"] == 0
        assert engine.error is None
    finally:
        engine.shutdown()
