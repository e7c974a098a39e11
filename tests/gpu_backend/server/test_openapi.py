"""/openapi.json: it needs the token, describes exactly the routes the app serves, and what it calls a
valid body the service accepts (bodies drawn from its request schemas get 200 on every route)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from starlette.routing import Mount, Route

from backend_fixtures import EMBEDDINGS, MODEL, Backend
from gpu_backend.server.api import create_app
from gpu_backend.server.limits import InputLimits
from gpu_backend.server.openapi import document
from json_strategies import from_schema

VALID = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


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
                body = {**body, "max_tokens": max_tokens, "max_completion_tokens": max_tokens}
            reply = client.post(url, content=json.dumps(body))
            assert reply.status_code == 200, (body, reply.text[:300])

        served()
