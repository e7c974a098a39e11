"""What a request's output must match: a JSON schema, any JSON object, or a grammar.

Plain values only, so the spec travels with ``SamplingParams`` to whichever process samples
(a sharded instance's driver, a decode instance after a hand-off). The grammar engine compiles it
(``engine/grammar.py``); the server builds it from ``response_format`` and ``tools``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequestError

StructuredKind = Literal["json_schema", "json_object", "lark"]


@dataclass(frozen=True)
class StructuredOutput:
    """``kind``: ``json_schema`` (``spec`` is the schema as JSON text), ``json_object`` (any JSON
    object; ``spec`` empty) or ``lark`` (``spec`` is a Lark grammar, as llguidance reads it)."""

    kind: StructuredKind
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("json_schema", "json_object", "lark"):
            raise InvalidRequestError(f"structured output kind must be json_schema, json_object or lark, "
                                      f"got {self.kind!r}")
        if self.kind != "json_object" and not self.spec:
            raise InvalidRequestError(f"a {self.kind} constraint needs its {'schema' if self.kind == 'json_schema' else 'grammar'}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> StructuredOutput:
        return cls("json_schema", json.dumps(schema))  # property order kept: the model writes keys in it

    @classmethod
    def json_object(cls) -> StructuredOutput:
        return cls("json_object")

    @classmethod
    def lark(cls, grammar: str) -> StructuredOutput:
        return cls("lark", grammar)
