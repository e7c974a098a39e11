"""The backend's OpenAPI 3.1 document, served at ``/openapi.json``: every route, written by hand as data.
This module writes the paths and operations; the request and answer schemas are openapi_schemas.py's.

Request schemas say what ``schemas.py`` (and the OpenAI routes' translation into it) accepts,
with the caps of ``InputLimits``; response schemas say what the routes answer, successes and the
error bodies alike. Fields that Workers AI ignores are allowed (``additionalProperties`` is left
open), as the service ignores them too. ``model`` enums list the models this service serves.
Like every route but ``/healthz``, the document needs the bearer token. The WebSocket form of the
run route cannot be written in OpenAPI; its description says where it is documented.

What the document calls valid is served, so where fields depend on each other (JSON mode does not
stream on Workers AI, ``tool_choice`` needs ``tools``, a forced call or JSON mode needs an end
token) a generation body is an ``anyOf`` of whole bodies, one per way they combine. Rules JSON
Schema cannot state are narrowed: the schemas of ``response_format`` and of tool ``parameters``
are a subset of JSON Schema that the grammar engine always compiles, and ``tool_choice``'s form
naming a function, which must name one of ``tools``, is described in words only. One such rule is
stated in words alone: tools' names must differ (``uniqueItems`` catches only identical tools).
"""

from __future__ import annotations

from typing import Any

from .client import EngineClient
from .limits import InputLimits
from .openapi_schemas import Schema, component_schemas, object_schema, ref

ACCOUNT = "/client/v4/accounts/{account_id}"
OPENAI_PREFIXES = ("/v1", f"{ACCOUNT}/ai/v1")
_STRING = {"type": "string"}
_ERROR_STATUSES = {"400": "Bad input, or no such model; in Workers AI's JSON mode also an answer cut off at "
                          "max_tokens (JSON Mode couldn't be met)",
                   "401": "No bearer token", "403": "Wrong bearer token",
                   "404": "No such model (OpenAI routes), no route, or no batch has the polled request_id "
                          "(never queued, or expired)",
                   "405": "LoRA is not supported, or another method",
                   "408": "The request body did not arrive in time", "413": "The body or the prompt is too large",
                   "429": "The model's queue is full, or with options.rejectIfBusy every running slot is "
                          "taken (code 3040): retry after Retry-After seconds",
                   "500": "The engine failed", "503": "The model's instance is restarting"}


def service_document(client: EngineClient, limits: InputLimits) -> Schema:
    """The document of the service in front of ``client``."""
    tasks = {name: client.model_info(name).task for name in client.model_names()}
    text_models = [name for name, task in tasks.items() if task == "text-generation"]
    return document(text_models, [name for name, task in tasks.items() if task == "text-embeddings"], limits)


def document(text_models: list[str], embedding_models: list[str], limits: InputLimits) -> Schema:
    """The OpenAPI document of a service serving these models with these caps."""
    models = [*text_models, *embedding_models]
    paths: Schema = {
        "/healthz": {"get": _operation("Whether every engine serves", {"200": _json("#/components/schemas/Health"),
                                                                        "503": _json("#/components/schemas/Health")},
                                       public=True)},
        "/metrics": {"get": _operation("Prometheus metrics", {"200": {"description": "The exposition",
                                                                       "content": {"text/plain": {"schema": _STRING}}}})},
        "/openapi.json": {"get": _operation("This document", {"200": _json({"type": "object"})})},
        f"{ACCOUNT}/ai/run/{{model}}": {"post": _run(_names(models))},
        f"{ACCOUNT}/ai/models/search": {"get": _search()},
    }
    for prefix in OPENAI_PREFIXES:
        paths[f"{prefix}/chat/completions"] = {"post": _openai("Chat completion", "ChatCompletionRequest",
                                                               "ChatCompletion")}
        paths[f"{prefix}/completions"] = {"post": _openai("Text completion", "CompletionRequest", "Completion")}
        paths[f"{prefix}/responses"] = {"post": _openai("Create a response", "ResponsesRequest", "Response")}
        paths[f"{prefix}/embeddings"] = {"post": _openai("Embeddings", "EmbeddingsRequest", "EmbeddingsList")}
        paths[f"{prefix}/models"] = {"get": _openai("The models served", None, "ModelList")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgewise inference backend", "version": "1",
                 "description": "Workers AI's REST API, OpenAI's API and health; see docs/api.md."},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": component_schemas(_names(text_models), _names(embedding_models), limits)},
    }


def _names(models: list[str]) -> Schema:
    return {"type": "string", "enum": models} if models else {"type": "string"}


def _json(schema: Schema | str, description: str = "OK") -> Schema:
    resolved = {"$ref": schema} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": resolved}}}


def _operation(summary: str, responses: Schema, public: bool = False, **extra: Any) -> Schema:
    operation = {"summary": summary, "responses": responses, **extra}
    return {**operation, "security": []} if public else operation


def _errors(body: str) -> Schema:
    return {status: _json(ref(body), why) for status, why in _ERROR_STATUSES.items()}


def _run(model: Schema) -> Schema:
    inputs = {"anyOf": [ref("PromptInput"), ref("MessagesInput"), ref("ResponsesInput"), ref("EmbeddingsInput"),
                        ref("BatchRequest"), ref("BatchPoll")]}
    result = {"anyOf": [ref("TextGenerationResult"), ref("ChatCompletion"), ref("ResponsesResult"),
                        ref("EmbeddingsResult"), ref("BatchStatus"), ref("BatchResponses")]}
    ok = _json(_success(result))
    ok["content"]["text/event-stream"] = {"schema": {"type": "string", "description": "data: {\"response\": ...}"
                                                     " events (tool calls in one {\"response\": \"\", "
                                                     "\"tool_calls\": [...]} event), then data: [DONE] (with "
                                                     "\"stream\": true); for a chat.completion name, OpenAI's "
                                                     "chat.completion.chunk events"}}
    return _operation(
        "Run a model (Workers AI)", {"200": ok, **_errors("ErrorEnvelope")},
        description="Text generation takes prompt, messages or instructions/input; embeddings take text. "
                    "A name Cloudflare serves in OpenAI's schema (gpt-oss, gemma-4, kimi-k2.5+, glm-5, deepseek-v4) "
                    "answers a ChatCompletion (its catalog entry's output_schema says which). "
                    "With ?queueRequest=true, {requests: [...]} is queued as an async batch (BatchRequest, "
                    "answered with BatchStatus); {request_id} polls it, with or without the parameter (BatchPoll, "
                    "answered with BatchStatus, then BatchResponses). "
                    "The same path upgraded to a WebSocket takes the inputs as JSON text frames (docs/api.md).",
        parameters=[_path("account_id", _STRING), _path("model", model), _QUEUE_REQUEST],
        requestBody={"required": True, "content": {"application/json": {"schema": inputs}}})


def _search() -> Schema:
    queries = [_query(name, _STRING) for name in ("search", "task", "author")]
    queries += [_query(name, {"type": "integer", "minimum": 1}) for name in ("page", "per_page")]
    ok = _json(_success({"type": "array", "items": ref("ModelObject")}))
    return _operation("Search the models (Workers AI)", {"200": ok, **_errors("ErrorEnvelope")},
                      parameters=[_path("account_id", _STRING), *queries])


def _openai(summary: str, request: str | None, result: str) -> Schema:
    extra: Schema = {}
    if request is not None:
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(request)}}}
    ok = _json(ref(result))
    if request in ("ChatCompletionRequest", "CompletionRequest"):
        ok["content"]["text/event-stream"] = {"schema": {"type": "string", "description": "OpenAI's chunks, then "
                                                         "data: [DONE] (with \"stream\": true)"}}
    if request == "ResponsesRequest":
        ok["content"]["text/event-stream"] = {"schema": {"type": "string", "description": "OpenAI's typed events, "
                                                         "event: <type> / data: {..., sequence_number}, from "
                                                         "response.created to response.completed or "
                                                         "response.incomplete (with \"stream\": true)"}}
    return _operation(f"{summary} (OpenAI)", {"200": ok, **_errors("OpenAIError")}, **extra)


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _success(result: Schema) -> Schema:
    return object_schema({"result": result, "success": {"const": True}, "errors": {"type": "array", "maxItems": 0},
                    "messages": {"type": "array"}}, "result", "success", "errors", "messages")


_QUEUE_REQUEST = {**_query("queueRequest", {"type": "boolean", "default": False}),
                  "description": "Queue the body's {requests: [...]} as an async batch; the batch form is "
                                 "refused without it"}
