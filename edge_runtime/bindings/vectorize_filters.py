"""Vectorize metadata filters compiled to SQL conditions on ``vectors.metadata`` (json_extract), as
Cloudflare evaluates them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .vectorize_config import (
    MAX_FILTER_BYTES,
    MAX_FILTER_KEY_CHARS,
    VectorizeError,
    vectorize_error,
)

COMPARISONS = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
FILTER_OPERATORS = ("$eq", "$ne", "$in", "$nin", *COMPARISONS)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_number(value: Any) -> bool:
    if type(value) is int:
        return INT64_MIN <= value <= INT64_MAX  # SQLite compares 64-bit integers
    return type(value) is float and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def _equals(path: str, value: Any) -> tuple[str, list[Any]]:
    """SQL true (1) where the metadata at ``path`` is ``value`` with its JSON type (5 is not "5")."""
    if value is None:  # null matches a null or a missing key
        return "COALESCE(json_type(metadata, ?), 'null') = 'null'", [path]
    if isinstance(value, bool):
        return "COALESCE(json_type(metadata, ?), '') = ?", [path, "true" if value else "false"]
    kinds = "= 'text'" if isinstance(value, str) else "IN ('integer', 'real')"
    return f"(COALESCE(json_type(metadata, ?), '') {kinds} AND json_extract(metadata, ?) = ?)", [path, path, value]


def _condition(path: str, key: str, operator: str, value: Any) -> tuple[str, list[Any]]:
    if operator in ("$eq", "$ne"):
        if not (value is None or _is_scalar(value)):
            raise _filter_error(f"{key}: {operator} takes a string, number, boolean or null, got {value!r}")
        sql, params = _equals(path, value)
        return (sql, params) if operator == "$eq" else (f"NOT {sql}", params)
    if operator in ("$in", "$nin"):
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            raise _filter_error(f"{key}: {operator} takes a non-empty list of strings, numbers or booleans, got {value!r}")
        parts = [_equals(path, v) for v in value]
        sql = "(" + " OR ".join(part for part, _ in parts) + ")"
        return (sql if operator == "$in" else f"NOT {sql}"), [p for _, params in parts for p in params]
    if isinstance(value, str) or _is_number(value):
        kinds = "= 'text'" if isinstance(value, str) else "IN ('integer', 'real')"
        sql = f"(COALESCE(json_type(metadata, ?), '') {kinds} AND json_extract(metadata, ?) {COMPARISONS[operator]} ?)"
        return sql, [path, path, value]
    raise _filter_error(f"{key}: {operator} compares with a string or a number, got {value!r}")


def _filter_error(detail: str) -> VectorizeError:
    return vectorize_error("QUERY", f"invalid filter: {detail} (a filter maps metadata keys to a value or to "
                           f"{{operator: value}} with operators {', '.join(FILTER_OPERATORS)})")


def _json_path(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_FILTER_KEY_CHARS or key.startswith("$") or '"' in key:
        raise _filter_error(f"key {key!r} must be a non-empty string of at most {MAX_FILTER_KEY_CHARS} characters, "
                            f"without '\"' and not starting with '$' (Vectorize combines keys with AND only)")
    parts = key.split(".")  # a dot reaches into nested metadata
    if not all(parts):
        raise _filter_error(f"key {key!r} has an empty part between dots")
    return "$" + "".join(f'."{part}"' for part in parts)


def compile_filter(filter_: Any) -> tuple[str, list[Any]]:
    """A Vectorize metadata filter as a SQL condition on ``vectors.metadata`` and its parameters.

    Keys are ANDed; a dot in a key reaches into nested metadata; a bare value means ``$eq``. A vector
    without the key never matches ``$eq``, ``$in`` or a comparison, and always matches ``$ne``/``$nin``.
    """
    if not isinstance(filter_, Mapping) or not filter_:
        raise _filter_error(f"the filter must be a non-empty dict, got {filter_!r}")
    try:
        size = len(json.dumps(filter_, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as error:
        raise _filter_error(f"the filter is not JSON ({error})") from None
    if size >= MAX_FILTER_BYTES:
        raise _filter_error(f"the filter is {size} bytes as JSON, over the limit of {MAX_FILTER_BYTES - 1}")
    sql: list[str] = []
    params: list[Any] = []
    for key, condition in filter_.items():
        path = _json_path(key)
        if not isinstance(condition, Mapping):
            condition = {"$eq": condition}
        if not condition:
            raise _filter_error(f"{key}: an empty operator dict")
        for operator, value in condition.items():
            if operator not in FILTER_OPERATORS:
                raise _filter_error(f"{key}: unknown operator {operator!r}")
            part, part_params = _condition(path, key, operator, value)
            sql.append(part)
            params.extend(part_params)
    return " AND ".join(sql), params
