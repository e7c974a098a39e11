"""The caps on what one request may ask of the backend, so no input can exhaust or stall it.

Every cap is checked before any work is queued for the request: past one, the client gets a 400
(Workers AI's 5006 ``Bad input``, OpenAI's ``invalid_request_error``) naming the field and the
cap, or a 413 (3006) for a body or WebSocket frame over its size. Values are Cloudflare's where
Cloudflare has one; the rest are sized so that the work stays small next to a generation.
``create_app(..., limits=InputLimits(...))`` overrides them; docs/operations.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class InputLimits:
    # Workers AI: "total payload under 10 MB"; the same for a WebSocket frame, which carries the
    # same inputs as a body
    max_body_bytes: int = 10 * 1024 * 1024
    max_frame_bytes: int = 10 * 1024 * 1024
    # nesting of arrays and objects; the deepest input the schemas read is 5 levels (body ->
    # messages -> message -> content parts -> part); checked before parsing, so the parser never
    # recurses deeper
    max_json_depth: int = 64
    # array elements and object members in the whole body: parsing costs about 1 us each, all of
    # it holding the GIL, and a 10 MB body could hold millions; the longest list the schemas
    # read is 2048 messages
    max_json_items: int = 65536
    # digits of an integer literal: every 64-bit integer fits (seed's maximum has 10); Python
    # converts digits in quadratic time, and refuses past 4,300 with a ValueError
    max_int_digits: int = 20
    # characters of text for the model: the prompt (Workers AI's llama-3.1-8b schema:
    # maxLength 131072), or all messages' contents together
    max_prompt_chars: int = 131072
    # OpenAI's chat completions take 2048 ("array too long. Expected an array with maximum length
    # 2048", as in obot-platform/obot#1009)
    max_messages: int = 2048
    # OpenAI's ``stop``: OpenAI takes 4; more is allowed, as vLLM allows, but every stop string
    # is searched for in each new piece of text on the engine's thread
    max_stop_sequences: int = 16
    max_stop_chars: int = 256
    max_embedding_texts: int = 100  # Workers AI's bge schemas: text maxItems 100

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"InputLimits.{field.name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = InputLimits()
