"""`env.AI.run` with a name Cloudflare serves in OpenAI's schema (gpt-oss here, answered by the built-in tiny
model) returns a `chat.completion` object, and its stream is `chat.completion.chunk` events; a Llama name keeps
`{response, usage}`. A real backend answers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from edge_runtime.ai import Ai
from edge_runtime.ai_backends import AiBackends
from edge_runtime.catalog import get_location
from edge_runtime.config import BackendSpec
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.api import create_app
from gpu_backend.server.background import serving
from gpu_backend.server.client import LocalEngines

TINY = "@cf/edgewise/tiny-shakespeare"
TOKEN = "shape-token"
INPUTS = {"messages": [{"role": "user", "content": "Speak, ROMEO."}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engines = LocalEngines({TINY: builtin_model_path(TINY)}, device="cpu", dtype="float32", num_kv_blocks=64)
    try:
        with serving(create_app(engines, TOKEN)) as address:
            yield address
    finally:
        engines.shutdown()


async def test_gpt_oss_answers_a_chat_completion_and_llama_a_response(url: str) -> None:
    pool = AiBackends([BackendSpec(url, token=TOKEN)])
    ai = Ai(pool, get_location("LHR"))
    try:
        completion = await ai.run("@cf/openai/gpt-oss-120b", INPUTS)
        assert completion.object == "chat.completion" and completion.model == "@cf/openai/gpt-oss-120b"
        text = completion.choices[0].message.content
        legacy = await ai.run("@cf/meta/llama-3.1-8b-instruct", INPUTS)
        assert legacy.response == text  # one model answers both names: only the shape differs
        stream = await ai.run("@cf/openai/gpt-oss-120b", {**INPUTS, "stream": True})
        body = b"".join([chunk async for chunk in stream]).decode()
        events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == text
    finally:
        await pool.aclose()
