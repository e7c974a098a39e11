"""The backend's OpenAPI 3.1 document, served at ``/openapi.json``: every route, written by hand as data.

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
from .batches import MAX_REQUESTS
from .limits import InputLimits
from ..engine.sampling_params import MAX_ABS_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_LOGPROBS
from .schemas import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, MAX_SEED, REASONING_EFFORTS
from .structured import SCHEMA_NAME
from .tools import TOOL_NAME

Schema = dict[str, Any]
ACCOUNT = "/client/v4/accounts/{account_id}"
OPENAI_PREFIXES = ("/v1", f"{ACCOUNT}/ai/v1")
_STRING, _BOOLEAN, _INTEGER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_JSON_TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"]
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
                       "schemas": _schemas(_names(text_models), _names(embedding_models), limits)},
    }


def _names(models: list[str]) -> Schema:
    return {"type": "string", "enum": models} if models else {"type": "string"}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema | str, description: str = "OK") -> Schema:
    resolved = {"$ref": schema} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": resolved}}}


def _operation(summary: str, responses: Schema, public: bool = False, **extra: Any) -> Schema:
    operation = {"summary": summary, "responses": responses, **extra}
    return {**operation, "security": []} if public else operation


def _errors(body: str) -> Schema:
    return {status: _json(_ref(body), why) for status, why in _ERROR_STATUSES.items()}


def _run(model: Schema) -> Schema:
    inputs = {"anyOf": [_ref("PromptInput"), _ref("MessagesInput"), _ref("ResponsesInput"), _ref("EmbeddingsInput"),
                        _ref("BatchRequest"), _ref("BatchPoll")]}
    result = {"anyOf": [_ref("TextGenerationResult"), _ref("ChatCompletion"), _ref("ResponsesResult"),
                        _ref("EmbeddingsResult"), _ref("BatchStatus"), _ref("BatchResponses")]}
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
    ok = _json(_success({"type": "array", "items": _ref("ModelObject")}))
    return _operation("Search the models (Workers AI)", {"200": ok, **_errors("ErrorEnvelope")},
                      parameters=[_path("account_id", _STRING), *queries])


def _openai(summary: str, request: str | None, result: str) -> Schema:
    extra: Schema = {}
    if request is not None:
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    ok = _json(_ref(result))
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


def _object(properties: Schema, *required: str) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required)}


def _number(low: float, high: float, default: float | None = None) -> Schema:
    schema: Schema = {"type": "number", "minimum": low, "maximum": high}
    return schema if default is None else {**schema, "default": default}


def _success(result: Schema) -> Schema:
    return _object({"result": result, "success": {"const": True}, "errors": {"type": "array", "maxItems": 0},
                    "messages": {"type": "array"}}, "result", "success", "errors", "messages")


def _prompt(limits: InputLimits) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars}


def _messages(limits: InputLimits) -> Schema:
    return {"type": "array", "items": _ref("Message"), "minItems": 1, "maxItems": limits.max_messages}


def _texts(limits: InputLimits) -> Schema:
    """Embeddings' ``text``: one string, or a list of them."""
    text = {"type": "string", "minLength": 1}
    return {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_embedding_texts}]}


def _sampling() -> Schema:
    """The sampling fields of text generation, with Workers AI's ranges and defaults."""
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_TOKENS},
        "temperature": _number(0, 5, DEFAULT_TEMPERATURE),
        "top_p": _number(0, 2), "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
        "seed": {"type": "integer", "minimum": 1, "maximum": MAX_SEED},
        # 0 is no penalty; a penalty below ~1e-38 is 0 in the sampler's float32, where it turns a masked
        # logit into NaN (-inf * 0) and a grammar's answer breaks: this document promises 1e-30 and up
        "repetition_penalty": _number(0, 2),
        "frequency_penalty": _number(-2, 2), "presence_penalty": _number(-2, 2),
        "stream": _BOOLEAN, "raw": _BOOLEAN, "ignore_eos": _BOOLEAN,
        **_newer_inputs(),
    }


def _newer_inputs() -> Schema:
    """The OpenAI-superset inputs Workers AI documents for its 2026 models, as this backend takes them."""
    return {
        "max_completion_tokens": {"type": "integer", "minimum": 1,
                                  "description": "max_tokens' newer name; sent with max_tokens, the two must agree"},
        "logprobs": {"type": "boolean", "default": False,
                     "description": "Answer each generated token's logprob in OpenAI's chat shape, "
                                    "logprobs.content[{token, logprob, bytes, top_logprobs}]"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS,
                         "description": "How many most likely tokens to list at each step; counts with logprobs: true"},
        "n": {"const": 1, "description": "One choice per request; n > 1 is a 400"},
        "reasoning_effort": {"enum": list(REASONING_EFFORTS),
                             "description": "Accepted and ignored: no served model has a reasoning mode"},
        "logit_bias": {"type": "object", "maxProperties": MAX_LOGIT_BIAS_TOKENS,
                       "propertyNames": {"pattern": "^[0-9]+$"},
                       "additionalProperties": {"type": "number", "minimum": -MAX_ABS_LOGIT_BIAS,
                                                "maximum": MAX_ABS_LOGIT_BIAS},
                       "examples": [{"5": -100}],
                       "description": "Token id to a bias added to its logit before sampling: -100 bans the "
                                      "token, +100 all but forces it; under a JSON schema the grammar still wins. "
                                      "An id outside the model's vocabulary is a 400 naming it"},
    }


def _tool_fields() -> Schema:
    return {"tools": {"type": "array", "items": _ref("Tool"), "uniqueItems": True, "examples": _TOOL_EXAMPLES,
                      "description": "Each tool with a name of its own (two of one name are a 400)"},
            "tool_choice": {"enum": ["auto", "none", "required"], "default": "auto", "description": _NAMED_CHOICE},
            "parallel_tool_calls": {"type": "boolean", "default": True}}


_NAMED_CHOICE = ("Needs tools. The service also takes {\"type\": \"function\", \"function\": {\"name\": ...}} naming "
                 "one of tools (one call of it, forced); JSON Schema cannot tie that name to tools, so this schema "
                 "leaves the form out")
_FORECAST = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"enum": [1, 2]}},
             "required": ["city"]}
_TOOL_EXAMPLES = [
    [{"name": "get_weather", "description": "The forecast for a city", "parameters": _FORECAST}],
    [{"type": "function", "function": {"name": "get_weather", "parameters": _FORECAST}},
     {"type": "function", "function": {"name": "set_alarm", "description": "Alarm on or off", "parameters": {
         "type": "object", "properties": {"on": {"type": "boolean"}}, "additionalProperties": False}}}],
    [{"name": "now"}],
]


def _generation(fields: Schema, required: list[str], formats: tuple[Schema, Schema], workers_ai: bool,
                tools: bool = True) -> Schema:
    """A generation body: ``fields`` with ``response_format`` (text, JSON) and the tool fields, as an
    ``anyOf`` of whole bodies, one per way the JSON mode and ``tool_choice`` combine."""
    text_format, json_format = formats
    union = {**fields, "response_format": {"anyOf": [text_format, json_format]}, **(_tool_fields() if tools else {})}
    modes = [(False, None), (True, None)]
    if tools:
        modes += [(False, ["auto", "none"]), (False, ["required"]), (True, ["auto", "none"])]
    return {**_object(union, *required), "anyOf": [_mode(union, required, json_format if json_mode else text_format,
                                                         json_mode, choices, workers_ai)
                                                   for json_mode, choices in modes]}


def _mode(union: Schema, required: list[str], response_format: Schema, json_mode: bool, choices: list[str] | None,
          workers_ai: bool) -> Schema:
    """One whole body: ``choices`` are the ``tool_choice`` values it takes (None: no ``tool_choice``, which
    then must be absent, as fields that are not listed are otherwise allowed)."""
    properties = {**union, "response_format": response_format}
    names, absent = [*required, *(["response_format"] if json_mode else [])], []
    if choices is None:
        absent.append("tool_choice")
    else:
        properties["tools"] = {**union["tools"], "minItems": 1}
        properties["tool_choice"] = {"enum": choices}
        names.append("tools")
    if json_mode or choices == ["required"]:  # a grammar decides where the answer ends: it needs the end token
        if workers_ai:
            properties["ignore_eos"] = {"const": False}
        else:
            absent.append("ignore_eos")
    if json_mode and workers_ai:  # Workers AI's JSON answer is one object, not a stream
        properties["stream"] = {"const": False}
    mode = _object({name: schema for name, schema in properties.items() if name not in absent}, *names)
    return {**mode, "not": {"anyOf": [{"required": [name]} for name in absent]}} if absent else mode


def _formats(workers_ai: bool) -> tuple[Schema, Schema]:
    """``response_format``'s text form and JSON forms, as Workers AI or OpenAI spells them."""
    wrapper = _object({"name": {"type": "string", "pattern": f"^{SCHEMA_NAME.pattern}$", "examples": ["answer"]},
                       "schema": _ref("JsonSchema"), "strict": _BOOLEAN, "description": _STRING},
                      "name", *(["schema"] if workers_ai else []))
    if workers_ai:  # a json_schema holding other keys than these four is read as the schema itself
        wrapper["additionalProperties"] = False
        schemas: Schema = {"anyOf": [_ref("JsonSchema"), wrapper]}
    else:
        schemas = wrapper
    json_forms = {"anyOf": [_object({"type": {"const": "json_object"}}, "type"),
                            _object({"type": {"const": "json_schema"}, "json_schema": schemas}, "type", "json_schema")]}
    return _object({"type": {"const": "text"}}, "type"), json_forms


def _json_schemas() -> Schema:
    """The JSON schemas ``response_format`` and tools' ``parameters`` may hold, as far as this document
    promises: a subset the grammar engine always compiles (no ``$ref``, no bounds that may cross, no
    ``required`` on a closed object, which may name a property it forbids)."""
    sub, about = _ref("JsonSchema"), {"title": _STRING, "description": _STRING}
    properties = {"type": "object", "additionalProperties": sub}
    names = {"type": "array", "items": _STRING}
    scalar = {"anyOf": [_STRING, _BOOLEAN, {"type": "null"}, {"type": "integer", "minimum": -2**53, "maximum": 2**53}]}
    closed = _closed({"type": {"const": "object"}, "properties": properties, "additionalProperties": {"const": False},
                      **about}, "type", "additionalProperties")
    typed = _closed({"type": {"enum": _JSON_TYPES}, "properties": properties, "required": names, "items": sub, **about})
    return {
        "JsonSchema": {"description": "A JSON schema: typed (with properties, required and items), a closed object "
                                      "(additionalProperties: false, no required), or an enum of scalars",
                       "anyOf": [typed, closed, _closed({"enum": {"type": "array", "items": scalar, "minItems": 1},
                                                         **about}, "enum")]},
        "ToolParameters": {"description": "The JSON schema of a call's arguments: an object", "anyOf": [
            _closed({"type": {"const": "object"}, "properties": properties, "required": names, **about}), closed]},
    }


def _closed(properties: Schema, *required: str) -> Schema:
    """An object with these properties and no others."""
    return {**_object(properties, *required), "additionalProperties": False}


def _schemas(text_models: Schema, embedding_models: Schema, limits: InputLimits) -> Schema:
    return {**_input_schemas(limits), **_openai_input_schemas(text_models, embedding_models, limits),
            **_tool_schemas(), **_json_schemas(), **_result_schemas(), **_responses_schemas(text_models, limits),
            **_batch_schemas()}


def _tool_schemas() -> Schema:
    fields = {"name": {"type": "string", "pattern": f"^{TOOL_NAME.pattern}$"}, "description": _STRING,
              "parameters": _ref("ToolParameters")}
    wrapped = _closed({"type": {"const": "function"}, "function": _closed({**fields, "strict": _BOOLEAN}, "name")},
                      "type", "function")
    return {"Tool": {"description": "Workers AI's {name, description, parameters} or OpenAI's {type: function, "
                                    "function: {name, description, parameters, strict}}",
                     "anyOf": [_closed(fields, "name"), wrapped]}}


_RUN_OPTIONS = {"options": _object({"rejectIfBusy": {
    "type": "boolean", "default": False,
    "description": "Answer 429 (code 3040, Retry-After) at once when no running slot is free, instead of queuing"}})}


_QUEUE_REQUEST = {**_query("queueRequest", {"type": "boolean", "default": False}),
                  "description": "Queue the body's {requests: [...]} as an async batch; the batch form is "
                                 "refused without it"}


def _batch_schemas() -> Schema:
    """Async batches: the request, the poll, and the two answers (docs/api.md, Async batches)."""
    inputs = {"anyOf": [_ref("PromptInput"), _ref("MessagesInput"), _ref("ResponsesInput"), _ref("EmbeddingsInput")]}
    item = {"allOf": [inputs, {"properties": {"external_reference": _STRING, "stream": {"const": False}}}],
            "description": "What one run of the model takes (never streamed), and an external_reference "
                           "handed back with its response"}
    count = {"type": "integer", "minimum": 0}
    reference = {"external_reference": {"type": ["string", "null"]}, "id": count}
    done = _closed({**reference, "result": {"anyOf": [_ref("TextGenerationResult"), _ref("ResponsesResult"),
                                                       _ref("EmbeddingsResult")]},
                    "success": {"const": True}}, "id", "result", "success", "external_reference")
    error = _object({"code": {"type": "integer"}, "message": _STRING}, "code", "message")
    failed = _closed({**reference, "error": error, "success": {"const": False}},
                     "id", "error", "success", "external_reference")
    usage = _object({"prompt_tokens": count, "completion_tokens": count, "total_tokens": count},
                    "prompt_tokens", "completion_tokens", "total_tokens")
    return {
        "BatchRequest": _object({"requests": {"type": "array", "items": item, "minItems": 1,
                                              "maxItems": MAX_REQUESTS}}, "requests"),
        "BatchPoll": _object({"request_id": {"type": "string", "minLength": 1}}, "request_id"),
        "BatchStatus": _object({"status": {"enum": ["queued", "running"]}, "request_id": _STRING, "model": _STRING},
                               "status", "request_id", "model"),
        "BatchResponses": _object({"responses": {"type": "array", "items": {"anyOf": [done, failed]},
                                                 "description": "One per item, by index (id)"}, "usage": usage},
                                  "responses", "usage"),
    }


def _input_schemas(limits: InputLimits) -> Schema:
    sampling, formats = {**_sampling(), **_RUN_OPTIONS}, _formats(workers_ai=True)
    part = _object({"type": {"enum": ["text", "input_text", "output_text"]}, "text": _STRING}, "type", "text")
    content = {"anyOf": [_STRING, {"type": "array", "items": part}]}
    responses_input = {"anyOf": [{"type": "string", "minLength": 1}, _messages(limits)]}
    return {
        "PromptInput": _generation({"prompt": _prompt(limits), **sampling}, ["prompt"], formats, True),
        "MessagesInput": _generation({"messages": _messages(limits), **sampling}, ["messages"], formats, True),
        "ResponsesInput": _generation({"instructions": _STRING, "input": responses_input, **sampling}, ["input"],
                                      formats, True),
        "EmbeddingsInput": _object({"text": _texts(limits), "pooling": {"enum": ["mean", "cls"], "default": "mean"},
                                    **_RUN_OPTIONS}, "text"),
        "Message": _object({"role": {"type": "string", "minLength": 1, "examples": ["user", "assistant"],
                                     "description": "user or assistant; system (first) and others as the "
                                                    "model's chat template allows"},
                            "content": content, "name": _STRING}, "role", "content"),
    }


def _openai_input_schemas(text_models: Schema, embedding_models: Schema, limits: InputLimits) -> Schema:
    sampling = {name: schema for name, schema in _sampling().items() if name not in ("raw", "ignore_eos")}
    stop_string = {"type": "string", "minLength": 1, "maxLength": limits.max_stop_chars}
    common = {**sampling, **_RUN_OPTIONS, "stream_options": _object({"include_usage": _BOOLEAN}),
              "stop": {"anyOf": [stop_string, {"type": "array", "items": stop_string,
                                               "maxItems": limits.max_stop_sequences}]}}
    prompt, formats = _prompt(limits), _formats(workers_ai=False)
    prompts = {"anyOf": [prompt, {"type": "array", "items": prompt, "minItems": 1, "maxItems": 1}]}
    return {
        "ChatCompletionRequest": _generation({"model": text_models, "messages": _messages(limits), **common},
                                             ["model", "messages"], formats, False),
        "CompletionRequest": _generation({"model": text_models, **_legacy_logprobs(common), "prompt": prompts},
                                         ["model", "prompt"], formats, False, tools=False),
        "EmbeddingsRequest": _object({"model": embedding_models, "input": _texts(limits),
                                      "encoding_format": {"enum": ["float", "base64"], "default": "float"},
                                      **_RUN_OPTIONS},
                                     "model", "input"),
    }


def _responses_schemas(text_models: Schema, limits: InputLimits) -> Schema:
    """``/v1/responses``: its body (responses_api.py) and the response object (responses_output.py), which
    the run route's Responses-style answers share."""
    return {"ResponsesRequest": _responses_request(text_models, limits), "Response": _response(),
            "ResponsesResult": _ref("Response")}


_ARGUMENTS = {"type": "string", "contentMediaType": "application/json", "examples": ['{"city": "Paris"}', "{}"],
              "description": "The call's arguments: a JSON object, as text"}


def _responses_request(text_models: Schema, limits: InputLimits) -> Schema:
    """Input items, ``text.format`` and flat function tools, as an ``anyOf`` of whole bodies: ``tool_choice``
    needs tools, and a forced call takes no JSON format."""
    parts = {"type": "array", "items": _object({"type": {"enum": ["input_text", "output_text"]}, "text": _STRING},
                                               "type", "text")}
    text, call_id = {"anyOf": [_STRING, parts]}, {"type": "string", "minLength": 1}
    role = {"enum": ["user", "assistant", "system", "developer"], "examples": ["user", "assistant"]}
    item = {"anyOf": [_object({"type": {"const": "message"}, "role": role, "content": text}, "role", "content"),
                      _object({"type": {"const": "function_call"}, "call_id": call_id, "name": call_id,
                               "arguments": _ARGUMENTS}, "type", "call_id", "name", "arguments"),
                      _object({"type": {"const": "function_call_output"}, "call_id": call_id, "output": text},
                              "type", "call_id", "output")]}
    free = _object({"type": {"const": "text"}}, "type")
    json_schema = _object({"type": {"const": "json_schema"}, "schema": _ref("JsonSchema"), "strict": _BOOLEAN,
                           "name": {"type": "string", "pattern": f"^{SCHEMA_NAME.pattern}$", "examples": ["answer"]}},
                          "type", "name", "schema")
    formats = [free, _object({"type": {"const": "json_object"}}, "type"), json_schema]
    tool = _closed({"type": {"const": "function"}, "name": {"type": "string", "pattern": f"^{TOOL_NAME.pattern}$"},
                    "description": _STRING, "parameters": _ref("ToolParameters"), "strict": _BOOLEAN}, "type", "name")
    tool_examples = [[{"type": "function", **example["function"]} for example in _TOOL_EXAMPLES[1]],
                     [{"type": "function", "name": "now"}]]  # chat's examples, flat
    fields = {"model": text_models, "instructions": _STRING,
              "input": {"anyOf": [_prompt(limits), {"type": "array", "items": item, "minItems": 1,
                                                    "maxItems": limits.max_messages}]},
              "max_output_tokens": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_TOKENS},
              "temperature": _number(0, 5, 1.0), "top_p": _number(0, 2), "stream": _BOOLEAN,
              "text": _object({"format": {"anyOf": formats}, "verbosity": {"enum": ["low", "medium", "high"]}}),
              "tools": {"type": "array", "items": tool, "uniqueItems": True, "examples": tool_examples},
              "parallel_tool_calls": _BOOLEAN,
              "tool_choice": {"enum": ["auto", "none", "required"], "description": (
                  "Needs tools. The service also takes {\"type\": \"function\", \"name\": ...} naming one of "
                  "tools (one call of it, forced), which JSON Schema cannot tie to tools")},
              "include": {"type": "array", "items": {"enum": ["message.output_text.logprobs",
                                                             "reasoning.encrypted_content"]}},
              "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
              "metadata": {"type": "object", "additionalProperties": _STRING}, "user": _STRING,
              "reasoning": {"type": "object", "description": "Accepted and ignored: no served model reasons"},
              "store": {"const": False, "description": "No response is kept: true is a 400"},
              "background": {"const": False}, "truncation": {"const": "disabled"}}
    with_tools = {**fields, "tools": {**fields["tools"], "minItems": 1}}
    modes = [{**_object({name: schema for name, schema in fields.items() if name != "tool_choice"}, "model", "input"),
              "not": {"required": ["tool_choice"]}},
             _object({**with_tools, "tool_choice": {"enum": ["auto", "none"]}}, "model", "input", "tools"),
             _object({**with_tools, "tool_choice": {"const": "required"}, "text": _object({"format": free})},
                     "model", "input", "tools", "tool_choice")]
    return {**_object(fields, "model", "input"), "anyOf": modes}


def _response() -> Schema:
    count, status = {"type": "integer", "minimum": 0}, {"enum": ["completed", "incomplete"]}
    usage = _object({"input_tokens": count, "output_tokens": count, "total_tokens": count,
                     "input_tokens_details": _object({"cached_tokens": count}, "cached_tokens"),
                     "output_tokens_details": _object({"reasoning_tokens": count}, "reasoning_tokens")},
                    "input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens")
    output_text = _object({"type": {"const": "output_text"}, "text": _STRING, "annotations": {"type": "array"},
                           "logprobs": {"type": "array", "items": _token_logprob()}}, "type", "text", "annotations")
    output = {"anyOf": [_object({"type": {"const": "message"}, "id": _STRING, "role": {"const": "assistant"},
                                 "status": status, "content": {"type": "array", "items": output_text}},
                                "type", "id", "role", "status", "content"),
                        _object({"type": {"const": "function_call"}, "id": _STRING, "call_id": _STRING,
                                 "name": _STRING, "arguments": _ARGUMENTS, "status": status},
                                "type", "id", "call_id", "name", "arguments")]}
    incomplete = {"anyOf": [{"type": "null"}, _object({"reason": {"const": "max_output_tokens"}}, "reason")]}
    return _object({"id": _STRING, "object": {"const": "response"}, "created_at": _INTEGER, "model": _STRING,
                    "status": status, "incomplete_details": incomplete, "instructions": {"type": ["string", "null"]},
                    "output": {"type": "array", "items": output}, "usage": usage, "parallel_tool_calls": _BOOLEAN,
                    "tools": {"type": "array"}, "tool_choice": {"type": ["string", "object"]},
                    "text": {"type": "object"}},
                   "id", "object", "created_at", "model", "status", "output", "usage", "parallel_tool_calls",
                   "tool_choice", "tools")


def _legacy_logprobs(fields: Schema) -> Schema:
    """Completions' ``logprobs``: how many most likely tokens to list at each step (no ``top_logprobs``)."""
    rest = {name: schema for name, schema in fields.items() if name != "top_logprobs"}
    return {**rest, "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS, "description": (
        "Answer logprobs {tokens, token_logprobs, top_logprobs, text_offset} with this many most likely tokens")}}


def _token_logprob() -> Schema:
    token = {"token": _STRING, "logprob": {"type": "number", "maximum": 0},
             "bytes": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}}
    return _object({**token, "top_logprobs": {"type": "array", "items": _object(token, *token)}},
                   "token", "logprob", "bytes", "top_logprobs")


def _legacy_logprobs_result() -> Schema:
    numbers = {"type": "array", "items": {"type": "number", "maximum": 0}}
    return _object({"tokens": {"type": "array", "items": _STRING}, "token_logprobs": numbers,
                    "top_logprobs": {"type": "array", "items": {"type": "object",
                                                                "additionalProperties": {"type": "number"}}},
                    "text_offset": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
                   "tokens", "token_logprobs", "top_logprobs", "text_offset")


def _openai_usage(usage: Schema) -> Schema:
    cached = _object({"cached_tokens": {"type": "integer", "minimum": 0,
                                        "description": "Prompt tokens the prefix cache served"}}, "cached_tokens")
    return {**usage, "properties": {**usage["properties"], "prompt_tokens_details": cached},
            "required": [*usage["required"], "prompt_tokens_details"]}


def _result_schemas() -> Schema:
    count = {"type": "integer", "minimum": 0}
    usage = _object({"prompt_tokens": count, "completion_tokens": count, "total_tokens": count},
                    "prompt_tokens", "completion_tokens", "total_tokens")
    chat_logprobs = _object({"content": {"type": "array", "items": _token_logprob()}}, "content")
    choice = {"index": count, "logprobs": {"anyOf": [{"type": "null"}, chat_logprobs]}}
    frame = {"id": _STRING, "created": _INTEGER, "model": _STRING}
    vector = {"type": "array", "items": {"type": "number"}}
    workers_ai_call = _object({"name": _STRING, "arguments": {"type": "object"}}, "name", "arguments")
    openai_call = _object({"id": _STRING, "type": {"const": "function"}, "function": _object(
        {"name": _STRING, "arguments": {"type": "string", "description": "JSON text, as the model wrote it"}},
        "name", "arguments")}, "id", "type", "function")
    calls = {"type": "array", "items": openai_call, "minItems": 1}
    message = {**_object({"role": {"const": "assistant"}, "content": {"type": ["string", "null"]}, "tool_calls": calls},
                         "role", "content"),
               "if": {"properties": {"content": {"type": "null"}}}, "then": {"required": ["tool_calls"]}}
    chat_choice = {**_object({**choice, "finish_reason": {"enum": ["stop", "length", "tool_calls", None]},
                              "message": message}, "index", "finish_reason", "message"),  # calls <=> "tool_calls"
                   "if": {"properties": {"message": {"required": ["tool_calls"]}}},
                   "then": {"properties": {"finish_reason": {"const": "tool_calls"}}},
                   "else": {"properties": {"finish_reason": {"enum": ["stop", "length", None]}}}}
    return {
        "TextGenerationResult": _object({"response": {"type": _JSON_TYPES, "description": "The text; in JSON mode "
                                                      "the JSON value (an object for json_object)"},
                                         "logprobs": {**chat_logprobs, "description": "With logprobs: true"},
                                         "tool_calls": {"type": "array", "items": workers_ai_call, "minItems": 1,
                                                        "description": "The calls the model made, if any"},
                                         "usage": usage}, "response", "usage"),
        "EmbeddingsResult": _object({"shape": {"type": "array", "items": count, "minItems": 2, "maxItems": 2},
                                     "data": {"type": "array", "items": vector},
                                     "pooling": {"enum": ["mean", "cls"]}}, "shape", "data", "pooling"),
        "ChatCompletion": _object({**frame, "object": {"const": "chat.completion"}, "usage": _openai_usage(usage),
                                   "choices": {"type": "array", "items": chat_choice}},
                                  "id", "object", "choices", "usage"),
        "Completion": _object({**frame, "object": {"const": "text_completion"}, "usage": _openai_usage(usage),
                               "choices": {"type": "array", "items": _object(
                                   {**choice, "logprobs": {"anyOf": [{"type": "null"}, _legacy_logprobs_result()]},
                                    "finish_reason": {"enum": ["stop", "length", None]}, "text": _STRING},
                                   "index", "finish_reason", "text")}},
                              "id", "object", "choices", "usage"),
        "EmbeddingsList": _object({"object": {"const": "list"}, "model": _STRING, "usage": {"type": "object"},
                                   "data": {"type": "array", "items": _object(
                                       {"object": {"const": "embedding"}, "index": count,
                                        "embedding": {"anyOf": [vector, _STRING]}}, "object", "index", "embedding")}},
                                  "object", "data", "model"),
        "ModelList": _object({"object": {"const": "list"}, "data": {"type": "array", "items": _object(
            {"id": _STRING, "object": {"const": "model"}, "created": _INTEGER, "owned_by": _STRING},
            "id", "object")}}, "object", "data"),
        "ModelObject": _object({"id": _STRING, "name": _STRING, "description": _STRING,
                                "task": _object({"id": _STRING, "name": _STRING}, "id", "name"),
                                "properties": {"type": "array"}}, "id", "name", "task"),
        "Health": _object({"status": {"enum": ["ok", "degraded", "unhealthy"]},
                           "models": {"type": "array", "items": _STRING}}, "status", "models"),
        "ErrorEnvelope": _object({"result": {"type": "null"}, "success": {"const": False}, "messages": {"type": "array"},
                                  "errors": {"type": "array", "minItems": 1, "items": _object(
                                      {"code": _INTEGER, "message": _STRING}, "code", "message")}},
                                 "result", "success", "errors"),
        "OpenAIError": _object({"error": _object({"message": _STRING, "type": _STRING,
                                                  "param": {"type": ["string", "null"]},
                                                  "code": {"type": ["integer", "string", "null"]}},
                                                 "message", "type")}, "error"),
    }
