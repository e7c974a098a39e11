"""The component schemas of the backend's OpenAPI document (openapi.py): every request body and answer.

Request schemas say what ``schemas.py`` (and the OpenAI routes' translation into it) accepts, with
the caps of ``InputLimits``; answer schemas say what the routes answer. See openapi.py for how
bodies whose fields depend on each other are written as an ``anyOf`` of whole bodies.
"""

from __future__ import annotations

from typing import Any

from .batches import MAX_REQUESTS
from .limits import InputLimits
from ..engine.sampling_params import MAX_ABS_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_LOGPROBS
from .schemas import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, MAX_SEED, REASONING_EFFORTS
from .structured import SCHEMA_NAME
from .tools import TOOL_NAME

Schema = dict[str, Any]
_STRING, _BOOLEAN, _INTEGER = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_JSON_TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def object_schema(properties: Schema, *required: str) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required)}


def _number(low: float, high: float, default: float | None = None) -> Schema:
    schema: Schema = {"type": "number", "minimum": low, "maximum": high}
    return schema if default is None else {**schema, "default": default}


def _prompt(limits: InputLimits) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": limits.max_prompt_chars}


def _messages(limits: InputLimits) -> Schema:
    return {"type": "array", "items": ref("Message"), "minItems": 1, "maxItems": limits.max_messages}


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
    return {"tools": {"type": "array", "items": ref("Tool"), "uniqueItems": True, "examples": _TOOL_EXAMPLES,
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
    return {**object_schema(union, *required), "anyOf": [_mode(union, required, json_format if json_mode else text_format,
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
    mode = object_schema({name: schema for name, schema in properties.items() if name not in absent}, *names)
    return {**mode, "not": {"anyOf": [{"required": [name]} for name in absent]}} if absent else mode


def _formats(workers_ai: bool) -> tuple[Schema, Schema]:
    """``response_format``'s text form and JSON forms, as Workers AI or OpenAI spells them."""
    wrapper = object_schema({"name": {"type": "string", "pattern": f"^{SCHEMA_NAME.pattern}$", "examples": ["answer"]},
                       "schema": ref("JsonSchema"), "strict": _BOOLEAN, "description": _STRING},
                      "name", *(["schema"] if workers_ai else []))
    if workers_ai:  # a json_schema holding other keys than these four is read as the schema itself
        wrapper["additionalProperties"] = False
        schemas: Schema = {"anyOf": [ref("JsonSchema"), wrapper]}
    else:
        schemas = wrapper
    json_forms = {"anyOf": [object_schema({"type": {"const": "json_object"}}, "type"),
                            object_schema({"type": {"const": "json_schema"}, "json_schema": schemas}, "type", "json_schema")]}
    return object_schema({"type": {"const": "text"}}, "type"), json_forms


def _json_schemas() -> Schema:
    """The JSON schemas ``response_format`` and tools' ``parameters`` may hold, as far as this document
    promises: a subset the grammar engine always compiles (no ``$ref``, no bounds that may cross, no
    ``required`` on a closed object, which may name a property it forbids)."""
    sub, about = ref("JsonSchema"), {"title": _STRING, "description": _STRING}
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
    return {**object_schema(properties, *required), "additionalProperties": False}


def component_schemas(text_models: Schema, embedding_models: Schema, limits: InputLimits) -> Schema:
    return {**_input_schemas(limits), **_openai_input_schemas(text_models, embedding_models, limits),
            **_tool_schemas(), **_json_schemas(), **_result_schemas(), **_responses_schemas(text_models, limits),
            **_batch_schemas()}


def _tool_schemas() -> Schema:
    fields = {"name": {"type": "string", "pattern": f"^{TOOL_NAME.pattern}$"}, "description": _STRING,
              "parameters": ref("ToolParameters")}
    wrapped = _closed({"type": {"const": "function"}, "function": _closed({**fields, "strict": _BOOLEAN}, "name")},
                      "type", "function")
    return {"Tool": {"description": "Workers AI's {name, description, parameters} or OpenAI's {type: function, "
                                    "function: {name, description, parameters, strict}}",
                     "anyOf": [_closed(fields, "name"), wrapped]}}


_RUN_OPTIONS = {"options": object_schema({"rejectIfBusy": {
    "type": "boolean", "default": False,
    "description": "Answer 429 (code 3040, Retry-After) at once when no running slot is free, instead of queuing"}})}


def _batch_schemas() -> Schema:
    """Async batches: the request, the poll, and the two answers (docs/api.md, Async batches)."""
    inputs = {"anyOf": [ref("PromptInput"), ref("MessagesInput"), ref("ResponsesInput"), ref("EmbeddingsInput")]}
    item = {"allOf": [inputs, {"properties": {"external_reference": _STRING, "stream": {"const": False}}}],
            "description": "What one run of the model takes (never streamed), and an external_reference "
                           "handed back with its response"}
    count = {"type": "integer", "minimum": 0}
    reference = {"external_reference": {"type": ["string", "null"]}, "id": count}
    done = _closed({**reference, "result": {"anyOf": [ref("TextGenerationResult"), ref("ResponsesResult"),
                                                       ref("EmbeddingsResult")]},
                    "success": {"const": True}}, "id", "result", "success", "external_reference")
    error = object_schema({"code": {"type": "integer"}, "message": _STRING}, "code", "message")
    failed = _closed({**reference, "error": error, "success": {"const": False}},
                     "id", "error", "success", "external_reference")
    usage = object_schema({"prompt_tokens": count, "completion_tokens": count, "total_tokens": count},
                    "prompt_tokens", "completion_tokens", "total_tokens")
    return {
        "BatchRequest": object_schema({"requests": {"type": "array", "items": item, "minItems": 1,
                                              "maxItems": MAX_REQUESTS}}, "requests"),
        "BatchPoll": object_schema({"request_id": {"type": "string", "minLength": 1}}, "request_id"),
        "BatchStatus": object_schema({"status": {"enum": ["queued", "running"]}, "request_id": _STRING, "model": _STRING},
                               "status", "request_id", "model"),
        "BatchResponses": object_schema({"responses": {"type": "array", "items": {"anyOf": [done, failed]},
                                                 "description": "One per item, by index (id)"}, "usage": usage},
                                  "responses", "usage"),
    }


def _input_schemas(limits: InputLimits) -> Schema:
    sampling, formats = {**_sampling(), **_RUN_OPTIONS}, _formats(workers_ai=True)
    part = object_schema({"type": {"enum": ["text", "input_text", "output_text"]}, "text": _STRING}, "type", "text")
    content = {"anyOf": [_STRING, {"type": "array", "items": part}]}
    responses_input = {"anyOf": [{"type": "string", "minLength": 1}, _messages(limits)]}
    return {
        "PromptInput": _generation({"prompt": _prompt(limits), **sampling}, ["prompt"], formats, True),
        "MessagesInput": _generation({"messages": _messages(limits), **sampling}, ["messages"], formats, True),
        "ResponsesInput": _generation({"instructions": _STRING, "input": responses_input, **sampling}, ["input"],
                                      formats, True),
        "EmbeddingsInput": object_schema({"text": _texts(limits), "pooling": {"enum": ["mean", "cls"], "default": "mean"},
                                    **_RUN_OPTIONS}, "text"),
        "Message": object_schema({"role": {"type": "string", "minLength": 1, "examples": ["user", "assistant"],
                                     "description": "user or assistant; system (first) and others as the "
                                                    "model's chat template allows"},
                            "content": content, "name": _STRING}, "role", "content"),
    }


def _openai_input_schemas(text_models: Schema, embedding_models: Schema, limits: InputLimits) -> Schema:
    sampling = {name: schema for name, schema in _sampling().items() if name not in ("raw", "ignore_eos")}
    stop_string = {"type": "string", "minLength": 1, "maxLength": limits.max_stop_chars}
    common = {**sampling, **_RUN_OPTIONS, "stream_options": object_schema({"include_usage": _BOOLEAN}),
              "stop": {"anyOf": [stop_string, {"type": "array", "items": stop_string,
                                               "maxItems": limits.max_stop_sequences}]}}
    prompt, formats = _prompt(limits), _formats(workers_ai=False)
    prompts = {"anyOf": [prompt, {"type": "array", "items": prompt, "minItems": 1, "maxItems": 1}]}
    return {
        "ChatCompletionRequest": _generation({"model": text_models, "messages": _messages(limits), **common},
                                             ["model", "messages"], formats, False),
        "CompletionRequest": _generation({"model": text_models, **_legacy_logprobs(common), "prompt": prompts},
                                         ["model", "prompt"], formats, False, tools=False),
        "EmbeddingsRequest": object_schema({"model": embedding_models, "input": _texts(limits),
                                      "encoding_format": {"enum": ["float", "base64"], "default": "float"},
                                      **_RUN_OPTIONS},
                                     "model", "input"),
    }


def _responses_schemas(text_models: Schema, limits: InputLimits) -> Schema:
    """``/v1/responses``: its body (responses_api.py) and the response object (responses_output.py), which
    the run route's Responses-style answers share."""
    return {"ResponsesRequest": _responses_request(text_models, limits), "Response": _response(),
            "ResponsesResult": ref("Response")}


_ARGUMENTS = {"type": "string", "contentMediaType": "application/json", "examples": ['{"city": "Paris"}', "{}"],
              "description": "The call's arguments: a JSON object, as text"}


def _responses_request(text_models: Schema, limits: InputLimits) -> Schema:
    """Input items, ``text.format`` and flat function tools, as an ``anyOf`` of whole bodies: ``tool_choice``
    needs tools, and a forced call takes no JSON format."""
    parts = {"type": "array", "items": object_schema({"type": {"enum": ["input_text", "output_text"]}, "text": _STRING},
                                               "type", "text")}
    text, call_id = {"anyOf": [_STRING, parts]}, {"type": "string", "minLength": 1}
    role = {"enum": ["user", "assistant", "system", "developer"], "examples": ["user", "assistant"]}
    item = {"anyOf": [object_schema({"type": {"const": "message"}, "role": role, "content": text}, "role", "content"),
                      object_schema({"type": {"const": "function_call"}, "call_id": call_id, "name": call_id,
                               "arguments": _ARGUMENTS}, "type", "call_id", "name", "arguments"),
                      object_schema({"type": {"const": "function_call_output"}, "call_id": call_id, "output": text},
                              "type", "call_id", "output")]}
    free = object_schema({"type": {"const": "text"}}, "type")
    json_schema = object_schema({"type": {"const": "json_schema"}, "schema": ref("JsonSchema"), "strict": _BOOLEAN,
                           "name": {"type": "string", "pattern": f"^{SCHEMA_NAME.pattern}$", "examples": ["answer"]}},
                          "type", "name", "schema")
    formats = [free, object_schema({"type": {"const": "json_object"}}, "type"), json_schema]
    tool = _closed({"type": {"const": "function"}, "name": {"type": "string", "pattern": f"^{TOOL_NAME.pattern}$"},
                    "description": _STRING, "parameters": ref("ToolParameters"), "strict": _BOOLEAN}, "type", "name")
    tool_examples = [[{"type": "function", **example["function"]} for example in _TOOL_EXAMPLES[1]],
                     [{"type": "function", "name": "now"}]]  # chat's examples, flat
    fields = {"model": text_models, "instructions": _STRING,
              "input": {"anyOf": [_prompt(limits), {"type": "array", "items": item, "minItems": 1,
                                                    "maxItems": limits.max_messages}]},
              "max_output_tokens": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_TOKENS},
              "temperature": _number(0, 5, 1.0), "top_p": _number(0, 2), "stream": _BOOLEAN,
              "text": object_schema({"format": {"anyOf": formats}, "verbosity": {"enum": ["low", "medium", "high"]}}),
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
    modes = [{**object_schema({name: schema for name, schema in fields.items() if name != "tool_choice"}, "model", "input"),
              "not": {"required": ["tool_choice"]}},
             object_schema({**with_tools, "tool_choice": {"enum": ["auto", "none"]}}, "model", "input", "tools"),
             object_schema({**with_tools, "tool_choice": {"const": "required"}, "text": object_schema({"format": free})},
                     "model", "input", "tools", "tool_choice")]
    return {**object_schema(fields, "model", "input"), "anyOf": modes}


def _response() -> Schema:
    count, status = {"type": "integer", "minimum": 0}, {"enum": ["completed", "incomplete"]}
    usage = object_schema({"input_tokens": count, "output_tokens": count, "total_tokens": count,
                     "input_tokens_details": object_schema({"cached_tokens": count}, "cached_tokens"),
                     "output_tokens_details": object_schema({"reasoning_tokens": count}, "reasoning_tokens")},
                    "input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens")
    output_text = object_schema({"type": {"const": "output_text"}, "text": _STRING, "annotations": {"type": "array"},
                           "logprobs": {"type": "array", "items": _token_logprob()}}, "type", "text", "annotations")
    output = {"anyOf": [object_schema({"type": {"const": "message"}, "id": _STRING, "role": {"const": "assistant"},
                                 "status": status, "content": {"type": "array", "items": output_text}},
                                "type", "id", "role", "status", "content"),
                        object_schema({"type": {"const": "function_call"}, "id": _STRING, "call_id": _STRING,
                                 "name": _STRING, "arguments": _ARGUMENTS, "status": status},
                                "type", "id", "call_id", "name", "arguments")]}
    incomplete = {"anyOf": [{"type": "null"}, object_schema({"reason": {"const": "max_output_tokens"}}, "reason")]}
    return object_schema({"id": _STRING, "object": {"const": "response"}, "created_at": _INTEGER, "model": _STRING,
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
    return object_schema({**token, "top_logprobs": {"type": "array", "items": object_schema(token, *token)}},
                   "token", "logprob", "bytes", "top_logprobs")


def _legacy_logprobs_result() -> Schema:
    numbers = {"type": "array", "items": {"type": "number", "maximum": 0}}
    return object_schema({"tokens": {"type": "array", "items": _STRING}, "token_logprobs": numbers,
                    "top_logprobs": {"type": "array", "items": {"type": "object",
                                                                "additionalProperties": {"type": "number"}}},
                    "text_offset": {"type": "array", "items": {"type": "integer", "minimum": 0}}},
                   "tokens", "token_logprobs", "top_logprobs", "text_offset")


def _openai_usage(usage: Schema) -> Schema:
    cached = object_schema({"cached_tokens": {"type": "integer", "minimum": 0,
                                        "description": "Prompt tokens the prefix cache served"}}, "cached_tokens")
    return {**usage, "properties": {**usage["properties"], "prompt_tokens_details": cached},
            "required": [*usage["required"], "prompt_tokens_details"]}


def _result_schemas() -> Schema:
    count = {"type": "integer", "minimum": 0}
    usage = object_schema({"prompt_tokens": count, "completion_tokens": count, "total_tokens": count},
                    "prompt_tokens", "completion_tokens", "total_tokens")
    chat_logprobs = object_schema({"content": {"type": "array", "items": _token_logprob()}}, "content")
    choice = {"index": count, "logprobs": {"anyOf": [{"type": "null"}, chat_logprobs]}}
    frame = {"id": _STRING, "created": _INTEGER, "model": _STRING}
    vector = {"type": "array", "items": {"type": "number"}}
    workers_ai_call = object_schema({"name": _STRING, "arguments": {"type": "object"}}, "name", "arguments")
    openai_call = object_schema({"id": _STRING, "type": {"const": "function"}, "function": object_schema(
        {"name": _STRING, "arguments": {"type": "string", "description": "JSON text, as the model wrote it"}},
        "name", "arguments")}, "id", "type", "function")
    calls = {"type": "array", "items": openai_call, "minItems": 1}
    message = {**object_schema({"role": {"const": "assistant"}, "content": {"type": ["string", "null"]}, "tool_calls": calls},
                         "role", "content"),
               "if": {"properties": {"content": {"type": "null"}}}, "then": {"required": ["tool_calls"]}}
    chat_choice = {**object_schema({**choice, "finish_reason": {"enum": ["stop", "length", "tool_calls", None]},
                              "message": message}, "index", "finish_reason", "message"),  # calls <=> "tool_calls"
                   "if": {"properties": {"message": {"required": ["tool_calls"]}}},
                   "then": {"properties": {"finish_reason": {"const": "tool_calls"}}},
                   "else": {"properties": {"finish_reason": {"enum": ["stop", "length", None]}}}}
    return {
        "TextGenerationResult": object_schema({"response": {"type": _JSON_TYPES, "description": "The text; in JSON mode "
                                                      "the JSON value (an object for json_object)"},
                                         "logprobs": {**chat_logprobs, "description": "With logprobs: true"},
                                         "tool_calls": {"type": "array", "items": workers_ai_call, "minItems": 1,
                                                        "description": "The calls the model made, if any"},
                                         "usage": usage}, "response", "usage"),
        "EmbeddingsResult": object_schema({"shape": {"type": "array", "items": count, "minItems": 2, "maxItems": 2},
                                     "data": {"type": "array", "items": vector},
                                     "pooling": {"enum": ["mean", "cls"]}}, "shape", "data", "pooling"),
        "ChatCompletion": object_schema({**frame, "object": {"const": "chat.completion"}, "usage": _openai_usage(usage),
                                   "choices": {"type": "array", "items": chat_choice}},
                                  "id", "object", "choices", "usage"),
        "Completion": object_schema({**frame, "object": {"const": "text_completion"}, "usage": _openai_usage(usage),
                               "choices": {"type": "array", "items": object_schema(
                                   {**choice, "logprobs": {"anyOf": [{"type": "null"}, _legacy_logprobs_result()]},
                                    "finish_reason": {"enum": ["stop", "length", None]}, "text": _STRING},
                                   "index", "finish_reason", "text")}},
                              "id", "object", "choices", "usage"),
        "EmbeddingsList": object_schema({"object": {"const": "list"}, "model": _STRING, "usage": {"type": "object"},
                                   "data": {"type": "array", "items": object_schema(
                                       {"object": {"const": "embedding"}, "index": count,
                                        "embedding": {"anyOf": [vector, _STRING]}}, "object", "index", "embedding")}},
                                  "object", "data", "model"),
        "ModelList": object_schema({"object": {"const": "list"}, "data": {"type": "array", "items": object_schema(
            {"id": _STRING, "object": {"const": "model"}, "created": _INTEGER, "owned_by": _STRING},
            "id", "object")}}, "object", "data"),
        "ModelObject": object_schema({"id": _STRING, "name": _STRING, "description": _STRING,
                                "task": object_schema({"id": _STRING, "name": _STRING}, "id", "name"),
                                "properties": {"type": "array"}}, "id", "name", "task"),
        "Health": object_schema({"status": {"enum": ["ok", "degraded", "unhealthy"]},
                           "models": {"type": "array", "items": _STRING}}, "status", "models"),
        "ErrorEnvelope": object_schema({"result": {"type": "null"}, "success": {"const": False}, "messages": {"type": "array"},
                                  "errors": {"type": "array", "minItems": 1, "items": object_schema(
                                      {"code": _INTEGER, "message": _STRING}, "code", "message")}},
                                 "result", "success", "errors"),
        "OpenAIError": object_schema({"error": object_schema({"message": _STRING, "type": _STRING,
                                                  "param": {"type": ["string", "null"]},
                                                  "code": {"type": ["integer", "string", "null"]}},
                                                 "message", "type")}, "error"),
    }
