"""JSON Schema answers and forced tool calls through the served API on every layout: one process, TP=2, PP=2 and
disaggregated prefill/decode (Gloo on CPU). Each answer validates, and greedy answers are the one-process ones."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from backend_fixtures import MODEL, Backend, served_backend
from structured_fixtures import random_schema, special_eos_copy
from gpu_backend.cluster.config import ClusterConfig

OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 256, "max_model_len": 1024}
LAYOUTS = {
    "single": None,
    "tp2": ClusterConfig.colocated(2, 1, instance_timeout_s=20.0),
    "pp2": ClusterConfig.colocated(1, 2, instance_timeout_s=20.0),
    "disaggregated": ClusterConfig.disaggregated(instance_timeout_s=20.0),
}
LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "Look up an order",
    "parameters": {"type": "object", "properties": {"order": {"type": "integer", "minimum": 1, "maximum": 99},
                                                    "status": {"enum": ["open", "shipped"]}},
                   "required": ["order"], "additionalProperties": False}}}
SCHEMAS = [random_schema(random.Random(seed)) for seed in range(3)]


def _answers(backend: Backend) -> dict[str, Any]:
    """Greedy and seeded JSON answers for each schema, and a forced call."""
    answers: dict[str, Any] = {}
    for index, schema in enumerate(SCHEMAS):
        for name, sampling in (("greedy", {"temperature": 0}), ("seeded", {"temperature": 0.9, "seed": 7})):
            reply = backend.run({"prompt": "Fill the form.", "max_tokens": 120, **sampling,
                                 "response_format": {"type": "json_schema", "json_schema": schema}})
            assert reply.status_code == 200, reply.text
            answers[f"{name}-{index}"] = reply.json()["result"]["response"]
            jsonschema.validate(answers[f"{name}-{index}"], schema)
    # one call: with parallel calls allowed the random model may call again and again until max_tokens, and
    # whether it does changes from day to day (the chat template writes today's date into the prompt)
    completion = backend.openai_client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Where is order 7?"}], tools=[LOOKUP],
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=120)
    call = completion.choices[0].message.tool_calls[0].function
    assert completion.choices[0].finish_reason == "tool_calls" and call.name == "lookup"
    jsonschema.validate(json.loads(call.arguments), LOOKUP["function"]["parameters"])
    answers["call"] = json.loads(call.arguments)
    return answers


@pytest.fixture(scope="module")
def folder(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return special_eos_copy(checkpoints["llama"], tmp_path_factory.mktemp("layouts") / "llama")


@pytest.fixture(scope="module")
def expected(folder: Path) -> Iterator[dict[str, Any]]:
    with served_backend({MODEL: folder}, **OPTIONS) as backend:
        yield _answers(backend)


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "single"])
def test_every_layout_answers_valid_json_and_calls_as_one_process_does(folder: Path, expected: dict[str, Any],
                                                                      layout: str) -> None:
    with served_backend({MODEL: folder}, cluster=LAYOUTS[layout], **OPTIONS) as backend:
        assert _answers(backend) == expected
