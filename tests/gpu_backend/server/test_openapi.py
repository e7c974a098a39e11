"""/openapi.json: it needs the token, describes exactly the routes the app serves, and what it calls a
valid body the service accepts (bodies drawn from its request schemas get 200 on every route), JSON mode
and tool calls included: the bodies it refuses the document calls invalid, and its answers validate.

The backend's Llama ends on a special token and takes 2048 positions (structured_fixtures.py), as JSON
answers and rendered tools need; a Workers AI JSON-mode answer cut off at max_tokens is the documented 400.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from starlette.routing import Mount, Route

from backend_fixtures import EMBEDDINGS, MINILM, MODEL, TOKEN, Backend, serving
from structured_fixtures import special_eos_copy
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines
from gpu_backend.server.limits import InputLimits
from gpu_backend.server.openapi import document
from json_strategies import from_schema

VALID = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def backend(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    llama = special_eos_copy(checkpoints["llama"], tmp_path_factory.mktemp("openapi") / "llama")
    engines = LocalEngines({MODEL: llama, EMBEDDINGS: builtin_model_path(MINILM)}, device="cpu", dtype="float32",
                           num_kv_blocks=512, max_model_len=2048)
    try:
        with serving(create_app(engines, TOKEN, max_queue=8)) as url:
            yield Backend(url, engines)
    finally:
        engines.shutdown()


@pytest.fixture(scope="module")
def served_document(backend: Backend) -> dict[str, Any]:
    reply = httpx.get(f"{backend.url}/openapi.json", headers=backend.headers())
    assert reply.status_code == 200
    return reply.json()


def test_the_document_needs_the_token(backend: Backend) -> None:
    assert httpx.get(f"{backend.url}/openapi.json").status_code == 401
    assert httpx.get(f"{backend.url}/openapi.json", headers=backend.headers("wrong")).status_code == 403


def _served_routes(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    served = set()
    for route in routes:
        if isinstance(route, Mount):
            served |= _served_routes(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            path = (prefix + route.path).replace(":path}", "}")
            served |= {(method, path) for method in route.methods or () if method != "HEAD"}
    return served


def test_every_route_the_app_serves_is_documented_and_nothing_else(backend: Backend,
                                                                    served_document: dict[str, Any]) -> None:
    app = create_app(backend.engines, "token")
    documented = {(method.upper(), path) for path, item in served_document["paths"].items() for method in item}
    assert documented == _served_routes(app.app.routes)  # type: ignore[attr-defined]


def test_models_are_the_served_ones_and_every_schema_is_valid_json_schema(served_document: dict[str, Any]) -> None:
    schemas = served_document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == [MODEL]
    assert schemas["EmbeddingsRequest"]["properties"]["model"]["enum"] == [EMBEDDINGS]
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    assert served_document["paths"]["/healthz"]["get"]["security"] == []  # the one public route
    assert served_document["security"] == [{"bearer": []}]


def test_the_caps_are_the_services() -> None:
    limits = InputLimits(max_prompt_chars=100, max_messages=3, max_stop_sequences=2, max_embedding_texts=5)
    schemas = document(["m"], ["e"], limits)["components"]["schemas"]
    assert schemas["PromptInput"]["properties"]["prompt"]["maxLength"] == 100
    assert schemas["MessagesInput"]["properties"]["messages"]["maxItems"] == 3
    assert schemas["ChatCompletionRequest"]["properties"]["stop"]["anyOf"][1]["maxItems"] == 2
    assert schemas["EmbeddingsInput"]["properties"]["text"]["anyOf"][1]["maxItems"] == 5


ROUTES = [  # (schema of the body, path, model in the path)
    ("PromptInput", "/client/v4/accounts/a/ai/run/{model}", MODEL),
    ("MessagesInput", "/client/v4/accounts/a/ai/run/{model}", MODEL),
    ("ResponsesInput", "/client/v4/accounts/a/ai/run/{model}", MODEL),
    ("EmbeddingsInput", "/client/v4/accounts/a/ai/run/{model}", EMBEDDINGS),
    ("ChatCompletionRequest", "/v1/chat/completions", None),
    ("CompletionRequest", "/client/v4/accounts/a/ai/v1/completions", None),
    ("EmbeddingsRequest", "/v1/embeddings", None),
    ("ResponsesRequest", "/v1/responses", None),
]


@pytest.mark.parametrize(("schema", "path", "model"), ROUTES, ids=[route[0] for route in ROUTES])
def test_bodies_the_document_calls_valid_are_served(backend: Backend, served_document: dict[str, Any], schema: str,
                                                    path: str, model: str | None) -> None:
    schemas = served_document["components"]["schemas"]
    url = backend.url + path.replace("{model}", model or "")
    with httpx.Client(headers=backend.headers(), timeout=30) as client:

        @VALID
        @given(from_schema(schemas[schema], schemas, closed=True), st.integers(1, 3))
        def served(body: dict[str, Any], max_tokens: int) -> None:
            if "Embeddings" not in schema:
                cap = "max_output_tokens" if schema == "ResponsesRequest" else "max_completion_tokens"
                body = {**body, "max_tokens": max_tokens, cap: max_tokens}
            reply = client.post(url, content=json.dumps(body))
            if reply.status_code == 400 and "/ai/run/" in path and _json_mode(body):  # no partial object to give
                assert "JSON Mode couldn't be met: the answer was cut off at max_tokens" in reply.text, reply.text
                return
            if reply.status_code == 400 and body.get("logit_bias"):  # ids past the model's vocabulary, as documented
                assert "in logit_bias is outside the model's vocabulary" in reply.text, reply.text
                return
            assert reply.status_code == 200, (body, reply.text[:300])

        served()


def _json_mode(body: dict[str, Any]) -> bool:
    return isinstance(body.get("response_format"), dict) and body["response_format"].get("type") != "text"


PERSON = {"type": "object", "properties": {"mood": {"enum": ["calm", "angry"]}, "ok": {"type": "boolean"}},
          "required": ["mood", "ok"]}
ALARM = {"name": "set_alarm", "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}},
                                             "additionalProperties": False}}
RUN, CHAT = "/client/v4/accounts/{account_id}/ai/run/{model}", "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
REFUSED = [  # (schema, body, what the service's 400 says)
    ("PromptInput", {"prompt": "x", "stream": True, "response_format": {"type": "json_object"}}, "does not stream"),
    ("PromptInput", {"prompt": "x", "tools": [ALARM], "tool_choice": {"type": "function", "function": {"name": "f"}}},
     "not in 'tools'"),
    ("MessagesInput", {"messages": MESSAGES, "tool_choice": "auto"}, "'tool_choice' needs 'tools'"),
    ("MessagesInput", {"messages": MESSAGES, "tools": [ALARM], "tool_choice": "required",
                       "response_format": {"type": "json_object"}}, "send one of them"),
    ("PromptInput", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}, "missing"),
    ("PromptInput", {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
        "type": "object", "required": ["a"], "additionalProperties": False}}}, "unsatisfiable"),
    ("PromptInput", {"prompt": "x", "ignore_eos": True, "response_format": {"type": "json_object"}}, "end on"),
    ("PromptInput", {"prompt": "x", "tools": [{"name": "f", "parameters": {"type": "array"}}]}, "parameters.type' must be"),
    ("ChatCompletionRequest", {"model": MODEL, "messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"schema": PERSON}}}, "name' is required"),
    ("ChatCompletionRequest", {"model": MODEL, "messages": MESSAGES, "ignore_eos": True, "tools": [ALARM],
                               "tool_choice": "required"}, "end on"),
]


@pytest.mark.parametrize(("schema", "body", "reason"), REFUSED, ids=[reason for *_, reason in REFUSED])
def test_bodies_the_service_refuses_the_document_calls_invalid(backend: Backend, served_document: dict[str, Any],
                                                               schema: str, body: dict[str, Any], reason: str) -> None:
    components = served_document["components"]
    assert not Draft202012Validator({**components["schemas"][schema], "components": components}).is_valid(body)
    url = backend.url + ("/v1/chat/completions" if "model" in body else "/client/v4/accounts/a/ai/run/" + MODEL)
    reply = httpx.post(url, json={**body, "max_tokens": 2}, headers=backend.headers(), timeout=30)
    assert reply.status_code == 400 and reason in reply.text, reply.text


ANSWERS = [  # (path, body, a key the answer must hold); forced calls and small schemas fit in max_tokens
    (RUN, {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": PERSON}}, "response"),
    (RUN, {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON, "strict": True}}}, "response"),
    (RUN, {"messages": MESSAGES, "tools": [ALARM], "tool_choice": "required", "parallel_tool_calls": False},
     "tool_calls"),
    (CHAT, {"model": MODEL, "messages": MESSAGES, "tools": [{"type": "function", "function": ALARM}],
            "tool_choice": "required", "parallel_tool_calls": False}, "tool_calls"),
    (CHAT, {"model": MODEL, "messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
        "name": "person", "schema": PERSON}}}, "content"),
]


@pytest.mark.parametrize(("path", "body", "key"), ANSWERS, ids=[f"{path.split('/')[-1]}-{key}-{index}" for index, (
    path, _, key) in enumerate(ANSWERS)])
def test_json_and_tool_call_answers_are_documented(backend: Backend, served_document: dict[str, Any], path: str,
                                                   body: dict[str, Any], key: str) -> None:
    components = served_document["components"]
    assert Draft202012Validator({**_request_schema(served_document, path), "components": components}).is_valid(body)
    url = backend.url + path.replace("{account_id}", "a").replace("{model}", MODEL)
    reply = httpx.post(url, json={**body, "max_tokens": 200, "temperature": 0}, headers=backend.headers(), timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    schema = served_document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    errors = [error.message for error in Draft202012Validator({**schema, "components": components}).iter_errors(answer)]
    assert not errors, (errors[:3], answer)
    if path == RUN and key == "response":  # JSON mode: the value, not its text
        assert isinstance(answer["result"]["response"], dict)
    elif path == RUN:
        assert [call["name"] for call in answer["result"]["tool_calls"]] == ["set_alarm"]
    elif key == "content":
        assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict)
    else:
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert choice["message"]["tool_calls"][0]["id"].startswith("call_")


def _request_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
