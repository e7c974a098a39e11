"""Names whose Workers AI schema is OpenAI's answer ``chat.completion`` on the Workers AI run route, whole and
streamed, as Cloudflare's 2026 models do; the rest keep ``{response, usage}``. Checked against the real
``openai`` SDK's models and against what /v1/chat/completions answers for the same request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from backend_fixtures import MODEL, OPTIONS, Backend, served_backend
from gpu_backend.server.answer_shapes import CHAT_COMPLETION, WORKERS_AI, answer_shape

GPT_OSS = "@cf/openai/gpt-oss-20b"
MESSAGES = [{"role": "user", "content": "Hello there"}]
GREEDY = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0}
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def shaped(checkpoints: dict[str, Path]) -> Iterator[Backend]:
    models = {GPT_OSS: checkpoints["llama"], MODEL: checkpoints["llama"]}
    with served_backend(models, **{**OPTIONS, "num_kv_blocks": 256, "max_model_len": 1024}) as backend:  # tools fit
        yield backend


@pytest.mark.parametrize(("name", "shape"), [
    ("@cf/openai/gpt-oss-120b", CHAT_COMPLETION), ("@cf/google/gemma-4-26b-a4b-it", CHAT_COMPLETION),
    ("@cf/moonshotai/kimi-k2.6", CHAT_COMPLETION), ("@cf/zai-org/glm-5.1", CHAT_COMPLETION),
    ("@cf/deepseek-ai/deepseek-v4", CHAT_COMPLETION), ("@cf/meta/llama-3.1-8b-instruct", WORKERS_AI),
    ("@cf/google/gemma-3-12b-it", WORKERS_AI), ("@cf/moonshotai/kimi-k2-instruct", WORKERS_AI),
])
def test_the_shape_follows_cloudflares_catalog(name: str, shape: str) -> None:
    assert answer_shape(name) == shape


def test_a_chat_completion_model_answers_as_the_openai_route_does(shaped: Backend) -> None:
    result = shaped.run(GREEDY, GPT_OSS).json()["result"]
    completion = ChatCompletion.model_validate(result)  # the SDK's own model of the answer
    assert completion.object == "chat.completion" and completion.model == GPT_OSS
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.refusal is None
    assert completion.usage.prompt_tokens_details.cached_tokens is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    openai_route = shaped.openai_client().chat.completions.create(model=GPT_OSS, **GREEDY)
    assert completion.choices[0].message.content == openai_route.choices[0].message.content
    assert completion.choices[0].finish_reason == openai_route.choices[0].finish_reason
    assert completion.usage.completion_tokens == openai_route.usage.completion_tokens


def test_other_models_keep_workers_ais_schema(shaped: Backend) -> None:
    result = shaped.run(GREEDY, MODEL).json()["result"]
    assert set(result) == {"response", "usage"} and isinstance(result["response"], str)


def _chunks(response: httpx.Response) -> tuple[list[dict[str, Any]], list[str]]:
    payloads = [line[len("data: "):] for line in response.text.split("\n") if line.startswith("data: ")]
    return [json.loads(p) for p in payloads if p != "[DONE]"], payloads


def test_the_stream_is_chat_completion_chunks_ending_in_done(shaped: Backend) -> None:
    whole = shaped.run(GREEDY, GPT_OSS).json()["result"]
    streamed = httpx.post(shaped.run_url(GPT_OSS), json={**GREEDY, "stream": True}, headers=shaped.headers(),
                          timeout=60)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks, payloads = _chunks(streamed)
    assert payloads[-1] == "[DONE]"
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    text = "".join(choice.delta.content or "" for chunk in parsed for choice in chunk.choices)
    assert text == whole["choices"][0]["message"]["content"]
    assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens == whole["usage"]["completion_tokens"]


def test_json_mode_answers_json_text_and_streams(shaped: Backend) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    body = {**GREEDY, "max_tokens": 30, "response_format": {"type": "json_schema", "json_schema": schema}}
    result = shaped.run(body, GPT_OSS).json()["result"]
    content = result["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), schema)  # OpenAI's shape: the JSON as text
    chunks, _ = _chunks(httpx.post(shaped.run_url(GPT_OSS), json={**body, "stream": True}, headers=shaped.headers(),
                                   timeout=60))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == content


def test_a_forced_tool_call_comes_as_message_tool_calls(shaped: Backend) -> None:
    body = {**GREEDY, "max_tokens": 150, "tools": [{"type": "function", "function": WEATHER}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    answer = shaped.run(body, GPT_OSS).json()
    completion = ChatCompletion.model_validate(answer["result"])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].id
    call = choice.message.tool_calls[0].function
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_the_catalog_says_which_schema_a_name_uses(shaped: Backend) -> None:
    search = httpx.get(f"{shaped.url}/client/v4/accounts/a/ai/models/search", headers=shaped.headers()).json()
    schemas = {model["name"]: {p["property_id"]: p["value"] for p in model["properties"]}["output_schema"]
               for model in search["result"]}
    assert schemas == {GPT_OSS: CHAT_COMPLETION, MODEL: WORKERS_AI}




def test_a_chat_completion_answer_is_the_documented_one(shaped: Backend) -> None:
    from jsonschema import Draft202012Validator

    document = httpx.get(f"{shaped.url}/openapi.json", headers=shaped.headers()).json()
    path = document["paths"]["/client/v4/accounts/{account_id}/ai/run/{model}"]["post"]
    schema = path["responses"]["200"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": document["components"]})
    answer = shaped.run(GREEDY, GPT_OSS).json()
    assert validator.is_valid(answer), list(validator.iter_errors(answer))[:3]
    chat = document["components"]["schemas"]["ChatCompletion"]
    assert Draft202012Validator({**chat, "components": document["components"]}).is_valid(answer["result"])
