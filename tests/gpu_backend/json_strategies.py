"""Hypothesis strategies for request bodies: JSON drawn from an OpenAPI schema, JSON from outside it,
and hostile bytes (deep nesting, huge numbers, lone surrogates, garbage).

``from_schema`` reads the subset of JSON Schema that gpu_backend/server/openapi.py writes
($ref, anyOf, const, enum, type, bounds, properties/required, items); strings and lists are
kept short so that an example costs milliseconds. ``closed=True`` draws the bodies the service
must accept: objects with only the properties the schema names, and a value from ``examples``
where the schema gives some (a message's role: the chat template decides which others it takes).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

Schema = dict[str, Any]
MAX_TEXT = 24  # characters of a drawn string
MAX_ITEMS = 3  # elements of a drawn list

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
HOSTILE_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["", [""], {}, [], None, True, -1, 0, 2**70, -(2**70), 1e308, -1e-308, 0.5,
                     "a" * 200_000, ["x"] * 5000, [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]],
                     {"type": "text", "text": 5}, [{"role": "user"}], [{"role": 1, "content": "x"}],
                     "\u0000\u202e\ufeff", "@cf/" + "x" * 300]),
)


def from_schema(schema: Schema, components: Schema, closed: bool = False) -> st.SearchStrategy[Any]:
    """Values that ``schema`` (its $refs into ``components``) allows."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(components[name], components, closed))
    if "anyOf" in schema:
        return st.one_of([from_schema(option, components, closed) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if closed and "examples" in schema:  # where the service accepts more than every model does
        return st.sampled_from(schema["examples"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": one}, components, closed) for one in kind])
    return _TYPES.get(kind, lambda *_: JSON_VALUES)(schema, components, closed)


def _string(schema: Schema, *_: Any) -> st.SearchStrategy[str]:
    low = schema.get("minLength", 0)
    return st.text(min_size=low, max_size=max(low, min(schema.get("maxLength", MAX_TEXT), MAX_TEXT)))


def _integer(schema: Schema, *_: Any) -> st.SearchStrategy[int]:
    return st.integers(schema.get("minimum"), schema.get("maximum"))


def _number(schema: Schema, *_: Any) -> st.SearchStrategy[float | int]:
    low, high = schema.get("minimum"), schema.get("maximum")
    return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(
        None if low is None else int(low), None if high is None else int(high))


def _array(schema: Schema, components: Schema, closed: bool) -> st.SearchStrategy[list[Any]]:
    low = schema.get("minItems", 0)
    high = max(low, min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
    return st.lists(from_schema(schema.get("items", {}), components, closed), min_size=low, max_size=high)


def _object(schema: Schema, components: Schema, closed: bool) -> st.SearchStrategy[dict[str, Any]]:
    properties = {name: from_schema(sub, components, closed) for name, sub in schema.get("properties", {}).items()}
    required = set(schema.get("required", []))
    drawn = st.fixed_dictionaries({name: value for name, value in properties.items() if name in required},
                                  optional={name: value for name, value in properties.items() if name not in required})
    if closed:
        return drawn
    extra = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=2)
    return st.tuples(extra, drawn).map(lambda parts: {**parts[0], **parts[1]})


_TYPES = {"string": _string, "integer": _integer, "number": _number, "boolean": lambda *_: st.booleans(),
          "null": lambda *_: st.none(), "array": _array, "object": _object}


def mutated(valid: st.SearchStrategy[dict[str, Any]], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid body with one field (named by the schema, or any) set to a hostile value."""
    return st.tuples(valid, st.sampled_from(keys) | st.text(max_size=6), HOSTILE_VALUES).map(
        lambda parts: {**parts[0], parts[1]: parts[2]})


def hostile_bodies(fields: dict[str, Any]) -> list[bytes]:
    """Bodies no JSON encoder writes, around a valid object's ``fields`` (a model name, a prompt...)."""
    head = json.dumps(fields)[1:-1].encode()
    head = head + b", " if head else head
    return [
        b"[" * 100_000 + b"]" * 100_000,  # nesting far past any parser's recursion
        b"{" + head + b'"max_tokens": ' + b"9" * 5000 + b"}",  # past Python's 4,300-digit int limit
        b"{" + head + b'"seed": -' + b"1" * 400 + b"}",
        b"{" + head + b'"prompt": "\\ud800"}', b"{" + head + b'"messages": [{"role": "user", "content": "\\udfff"}]}',
        b"{" + head + b'"text": ["ok", "\\ud800x"]}', b"{" + head + b'"input": "\\ud83d"}',
        b"{" + head + b'"stop": [""]}', b"{" + head + b'"stop": ' + json.dumps(["s"] * 10_000).encode() + b"}",
        b"{" + head + b'"stream": true, "stream_options": 5}', b"{" + head + b'"stream_options": "yes"}',
        b"{" + head + b'"temperature": NaN}', b"{" + head + b'"top_p": Infinity}', b"1e999", b"NaN",
        b"{" + head + b'"messages": ' + json.dumps([{"role": "user", "content": "x"}] * 5000).encode() + b"}",
        b"{" + head + b'"prompt": "' + b"a" * 300_000 + b'"}',
        b"\xff\xfe\x00garbage\x80", b"", b"   ", b"null", b"[]", b'"just a string"', b"{" + head + b"",
        json.dumps(fields).encode("utf-16"), b"prompt=hello&max_tokens=4",
    ]
