"""``response_format``: what shape the answer must have, read from Workers AI's and OpenAI's spellings.

Workers AI (``docs/workers-ai/features/json-mode``) takes ``{"type": "json_object"}`` and
``{"type": "json_schema", "json_schema": <the schema itself>}``; OpenAI takes ``{"type":
"json_schema", "json_schema": {"name", "schema", "strict", "description"}}``, ``json_object`` and
``text``. Workers AI's newer models take OpenAI's wrapper too, so the Workers AI route reads a
``json_schema`` holding only ``name``/``schema``/``strict``/``description`` (``schema`` among them)
as the wrapper. The result is a ``StructuredOutput`` that the engine enforces token by token; the
schema's shape is checked here, whether the grammar engine can compile it at ``add_request``
(its refusal is a 400 before any byte of a stream leaves).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from ..engine.structured_output import StructuredOutput
from .errors import BadInputError

Dialect = Literal["workers-ai", "openai"]
SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WRAPPER_KEYS = frozenset({"name", "schema", "strict", "description"})
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def parse_response_format(value: Any, dialect: Dialect) -> StructuredOutput | None:
    """The constraint ``response_format`` asks for; None for free text."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise BadInputError(f"'response_format' must be an object such as {{\"type\": \"json_object\"}}, "
                            f"got {type(value).__name__}", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput.json_object()
    if kind != "json_schema":
        raise BadInputError(f"'response_format.type' must be \"json_object\", \"json_schema\" or \"text\", "
                            f"got {kind!r}", param="response_format")
    schema = _openai_schema(value) if dialect == "openai" else _workers_ai_schema(value)
    return StructuredOutput.json_object() if schema is None else StructuredOutput.json_schema(schema)


def _workers_ai_schema(value: dict[str, Any]) -> dict[str, Any] | bool:
    given = value.get("json_schema")
    if isinstance(given, dict) and "schema" in given and set(given) <= _WRAPPER_KEYS:
        return _openai_schema(value)  # OpenAI's wrapper, which Workers AI's newer models take
    if given is None:
        raise BadInputError("'response_format.json_schema' is required with type \"json_schema\": send the JSON "
                            "schema the answer must match", param="response_format")
    return checked_schema(given, "response_format.json_schema")


def _openai_schema(value: dict[str, Any]) -> dict[str, Any] | bool | None:
    wrapper = value.get("json_schema")
    if not isinstance(wrapper, dict):
        raise BadInputError("'response_format.json_schema' must be an object {\"name\", \"schema\", \"strict\"}",
                            param="response_format")
    name = wrapper.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise BadInputError(f"'response_format.json_schema.name' is required: 1 to 64 letters, digits, '_' or '-', "
                            f"got {name!r}", param="response_format")
    strict = wrapper.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise BadInputError(f"'response_format.json_schema.strict' must be true or false, got {strict!r}",
                            param="response_format")
    if "schema" not in wrapper:
        return None  # OpenAI's schema is optional: any JSON object
    return checked_schema(wrapper["schema"], "response_format.json_schema.schema")


def checked_schema(schema: Any, where: str) -> dict[str, Any] | bool:
    """``schema`` if it has a JSON schema's shape: an object (or true/false) whose ``type`` names JSON types."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise BadInputError(f"'{where}' must be a JSON schema: an object such as {{\"type\": \"object\", "
                            f"\"properties\": {{...}}}}, got {type(schema).__name__}", param="response_format")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    unknown = [k for k in kinds if not isinstance(k, str) or k not in _JSON_TYPES]
    if unknown:
        raise BadInputError(f"'{where}.type' must name JSON types ({', '.join(sorted(_JSON_TYPES))}), got "
                            f"{unknown[0]!r}", param="response_format")
    return schema


def json_answer(text: str, finish_reason: str, max_tokens: int | None, num_tokens: int | None = None) -> Any:
    """The JSON value a JSON-mode answer holds (Workers AI answers ``response`` as that value).
    ``num_tokens``: how many the answer has; fewer than ``max_tokens`` with ``finish_reason`` "length"
    means the model's context window ended it, which a larger max_tokens would not help."""
    try:
        return json.loads(text)
    except ValueError:
        if finish_reason != "length":
            why = "the answer is not valid JSON"
        elif num_tokens is not None and max_tokens is not None and num_tokens < max_tokens:
            why = (f"the answer was cut off after {num_tokens} tokens, where the model's context window ends; "
                   f"send a shorter prompt")
        else:
            why = f"the answer was cut off at max_tokens ({max_tokens}); raise 'max_tokens'"
        raise BadInputError(f"JSON Mode couldn't be met: {why}", param="max_tokens") from None
