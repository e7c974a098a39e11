"""OpenAI's Responses API: ``POST /v1/responses`` (also under ``/client/v4/accounts/{id}/ai/v1``).

The body is translated into Workers AI's Responses-style inputs (``instructions`` / ``input``) and
checked by the same schemas as every route; the answer is made by ``responses_output.py``, as the
run route's Responses-style answers are. ``input`` is a string or a list of items: messages
(``{role, content}``, with or without ``type: "message"``; content as a string or text parts),
``function_call`` and ``function_call_output`` items, so a tool loop works (``responses_input.py``
turns them into chat messages, on this route and the run route alike). ``text.format`` is
OpenAI's ``response_format`` flattened (``{type: "json_schema", name, schema, strict}``);
function ``tools`` are flat (``{type: "function", name, description, parameters}``). This backend
keeps no responses: fields that need a stored one (``previous_response_id``, ``conversation``,
``store: true``, ``background: true``) are a 400 naming the field, not ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import openai_api
from .body import read_json
from .errors import BadInputError
from .generation import Generation, unless_disconnected
from .request_scope import resources
from .responses_output import ResponseEcho, ResponseFrame, response_events, response_object
from .schemas import SESSION_HEADER, parse_text_generation
from .streaming import EventStream
from .structured import SCHEMA_NAME, checked_schema
from .workers_ai import served_model

if TYPE_CHECKING:
    from .api import Service

# Responses' own fields, and Workers AI's sampling extras that the chat route takes too (ignore_eos for benchmarks)
_PASSED_THROUGH = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty",
                   "repetition_penalty", "ignore_eos", "stream", "tools", "parallel_tool_calls", "top_logprobs")
_KEPT_NOWHERE = "this backend keeps no responses: send the whole conversation in 'input' and remove it"
_NEEDS_STORAGE = {"previous_response_id": _KEPT_NOWHERE, "conversation": _KEPT_NOWHERE,
                  "prompt": "stored prompt templates are not supported: send 'instructions' and 'input' instead"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_INCLUDABLE = (LOGPROBS_INCLUDE, "reasoning.encrypted_content")  # no model here reasons: nothing to include


async def create_response(request: Request) -> Response | EventStream:
    service: Service = request.app.state.service
    body = openai_api.json_object(await read_json(request, service.limits))
    requested = openai_api.requested_model(body, service)
    model = served_model(request, requested)
    _refuse_unkept(body)
    text_format = _text_format(body.get("text"))
    include_logprobs = _include_logprobs(body.get("include"))
    inputs = parse_text_generation(_workers_ai_inputs(body, text_format, include_logprobs), requested,
                                   request.headers.get(SESSION_HEADER), service.limits, dialect="openai")
    echo = ResponseEcho(body.get("instructions"), text_format, _metadata(body.get("metadata")), include_logprobs)
    generation = await resources(request).enter_async_context(Generation(service, model, inputs))
    frame = ResponseFrame(requested, inputs, echo)  # the name the client asked for, as OpenAI echoes it
    if inputs.stream:
        return EventStream(response_events(generation, frame))
    completion = await unless_disconnected(request, generation.complete())
    return JSONResponse(response_object(frame, completion, generation.tool_parser))


def _workers_ai_inputs(body: dict[str, Any], text_format: dict[str, Any], include_logprobs: bool) -> dict[str, Any]:
    inputs = {key: body[key] for key in _PASSED_THROUGH if key in body}
    inputs.setdefault("temperature", openai_api.OPENAI_DEFAULT_TEMPERATURE)
    if "instructions" in body and body["instructions"] is not None:
        inputs["instructions"] = body["instructions"]
    inputs["input"] = body.get("input")  # items become chat messages in parse_text_generation, as on the run route
    inputs["max_tokens"] = _max_output_tokens(body.get("max_output_tokens"))
    inputs["response_format"] = _response_format(text_format)
    inputs["logprobs"] = include_logprobs
    if body.get("tool_choice") is not None:
        inputs["tool_choice"] = _tool_choice(body["tool_choice"])
    return {key: value for key, value in inputs.items() if value is not None or key == "input"}


def _refuse_unkept(body: dict[str, Any]) -> None:
    """Fields that change what the answer means and that this backend cannot honour: a 400, never ignored."""
    for name, reason in _NEEDS_STORAGE.items():
        if body.get(name) not in (None, "", {}):
            raise BadInputError(f"'{name}' is not supported: {reason}", param=name)
    if body.get("store") not in (None, False):
        raise BadInputError(f"'store' must be false (or left out), got {body['store']!r}: {_KEPT_NOWHERE}",
                            param="store")
    if body.get("background") not in (None, False):
        raise BadInputError(f"'background' must be false (or left out), got {body['background']!r}: this backend "
                            f"answers while the request is open; use 'stream' for long answers", param="background")
    if not isinstance(body.get("stream_options", {}), (dict, type(None))):  # include_obfuscation: nothing to hide
        raise BadInputError("'stream_options' must be an object such as {\"include_obfuscation\": false}",
                            param="stream_options")
    if body.get("truncation") not in (None, "disabled"):
        raise BadInputError(f"'truncation' must be \"disabled\" (or left out), got {body['truncation']!r}: this "
                            f"backend never drops input; shorten 'input' instead", param="truncation")


def _max_output_tokens(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"'max_output_tokens' must be an integer of at least 1, got {value!r}",
                            param="max_output_tokens")
    return value


def _text_format(text: Any) -> dict[str, Any]:
    """``text.format`` checked, as the response echoes it: ``text``, ``json_object`` or ``json_schema``."""
    if text is None:
        return {"type": "text"}
    given = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or not isinstance(given, (dict, type(None))):
        raise BadInputError("'text' must be an object such as {\"format\": {\"type\": \"json_schema\", \"name\": ..., "
                            "\"schema\": {...}}}", param="text")
    kind = (given or {"type": "text"}).get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise BadInputError(f"'text.format.type' must be \"text\", \"json_object\" or \"json_schema\", got {kind!r}",
                            param="text")
    assert given is not None
    name, strict = given.get("name"), given.get("strict")
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise BadInputError(f"'text.format.name' is required: 1 to 64 letters, digits, '_' or '-', got {name!r}",
                            param="text")
    if strict is not None and not isinstance(strict, bool):
        raise BadInputError(f"'text.format.strict' must be true or false, got {strict!r}", param="text")
    if "schema" not in given:
        raise BadInputError("'text.format.schema' is required with type \"json_schema\": the JSON schema the answer "
                            "must match", param="text")
    try:
        schema = checked_schema(given["schema"], "text.format.schema")
    except BadInputError as error:
        raise BadInputError(error.detail, param="text") from None
    return {"type": "json_schema", "name": name, "schema": schema, "strict": bool(strict)}


def _response_format(text_format: dict[str, Any]) -> dict[str, Any] | None:
    """``text.format`` in chat completions' spelling, which ``parse_text_generation`` reads."""
    if text_format["type"] != "json_schema":
        return None if text_format["type"] == "text" else {"type": text_format["type"]}
    return {"type": "json_schema", "json_schema": {"name": text_format["name"], "schema": text_format["schema"]}}


def _tool_choice(value: Any) -> Any:
    """The Responses form of a named function, ``{"type": "function", "name": ...}``, in chat's spelling."""
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "function": {"name": value["name"]}}
    raise BadInputError(f"'tool_choice' must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", "
                        f"\"name\": ...}}, got {value!r}", param="tool_choice")


def _include_logprobs(include: Any) -> bool:
    if include is None:
        return False
    if not isinstance(include, list) or any(item not in _INCLUDABLE for item in include):
        raise BadInputError(f"'include' may list only {', '.join(map(repr, _INCLUDABLE))}, got {include!r}",
                            param="include")
    return LOGPROBS_INCLUDE in include


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise BadInputError("'metadata' must be an object of string values", param="metadata")
    return value
