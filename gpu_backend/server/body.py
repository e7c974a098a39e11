"""Request bodies: JSON whatever the Content-Type says (Cloudflare's curl examples send none), size-capped,
and parsed so that hostile JSON is refused cheaply with a 400.

Before ``json.loads`` sees a body, a few C-speed passes over the text outside its strings refuse
what would make the parser work hard or fail deep inside: nesting past ``max_json_depth`` (the
parser recurses once per level, up to a ``RecursionError``), more than ``max_json_items`` values
(millions of tiny ones hold the GIL for seconds), and integer literals past ``max_int_digits``
(Python converts digits in quadratic time and refuses past 4,300 with a ``ValueError``).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import Request

from .errors import BadInputError, RequestTooLargeError
from .limits import DEFAULT_LIMITS, InputLimits

# Bodies above this are parsed on an instance thread, so the event loop keeps serving meanwhile.
PARSE_OFF_LOOP_BYTES = 256 * 1024

# Arrays and objects both count as a level: keep only their brackets, each as '[' or ']'.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
# An integer literal: a run of digits that is neither a fraction nor an exponent, nor followed by one.
_INTEGER = rb"(?<![\d.eE+-])-?\d{%d,}(?![\d.eE])"


async def read_json(request: Request, limits: InputLimits = DEFAULT_LIMITS) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large("Request", int(declared), limits.max_body_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise _too_large("Request", size, limits.max_body_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw, limits)
    return parse_json(raw, limits)


def parse_frame(text: str, limits: InputLimits = DEFAULT_LIMITS) -> Any:
    """A WebSocket frame's JSON, under the frame size cap."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > limits.max_frame_bytes:
        raise _too_large("Frame", len(raw), limits.max_frame_bytes)
    return parse_json(raw, limits, what="each frame")


def parse_json(raw: bytes, limits: InputLimits = DEFAULT_LIMITS, what: str = "the request body") -> Any:
    """The JSON value of ``raw``; every way it can be refused is a BadInputError saying what to fix."""
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise BadInputError(f"{what} is not valid {encoding} (byte {error.start}): send JSON as UTF-8 text") from None
    if not text.strip():
        raise BadInputError(f"{what} is empty: send the inputs as a JSON object")
    _check_shape(text.encode("utf-8", "surrogatepass"), limits, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # past _check_shape, only a JSONDecodeError
        raise BadInputError(f"{what} is not valid JSON ({error}): send the inputs as a JSON object") from None


def _check_shape(utf8: bytes, limits: InputLimits, what: str) -> None:
    outside = _outside_strings(utf8, limits, what)
    brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
    if b"[" * (limits.max_json_depth + 1) in brackets:  # the cheap sign of most deep texts
        raise _too_deep(what, limits)
    if outside.count(b",") + brackets.count(b"[") > limits.max_json_items:
        raise _too_many(what, limits)
    if nests_deeper(brackets, limits.max_json_depth):  # brackets is now at most 2 * max_json_items long
        raise _too_deep(what, limits)
    if _has_long_integer(outside, limits.max_int_digits):
        raise BadInputError(f"{what} has an integer literal of more than {limits.max_int_digits} digits; "
                            f"send smaller numbers")


def _outside_strings(utf8: bytes, limits: InputLimits, what: str) -> bytes:
    """JSON text with its strings cut out.

    With escaped backslashes and quotes gone, every quote opens or closes a string (in valid
    JSON; in invalid JSON up to where the parser would stop), and an element or member has at
    most two strings: more quotes than that are too many items, refused before splitting.
    """
    unescaped = utf8.replace(b"\\\\", b"").replace(b'\\"', b"")
    if unescaped.count(b'"') > 4 * limits.max_json_items + 2:
        raise _too_many(what, limits)
    return b"".join(unescaped.split(b'"')[::2])


def _too_deep(what: str, limits: InputLimits) -> BadInputError:
    return BadInputError(f"{what} nests arrays and objects more than {limits.max_json_depth} levels deep; "
                         f"send flatter JSON")


def _too_many(what: str, limits: InputLimits) -> BadInputError:
    return BadInputError(f"{what} has more than {limits.max_json_items} array elements and object members; "
                         f"send fewer")


def nests_deeper(brackets: bytes, max_depth: int) -> bool:
    """Whether JSON text's brackets (outside strings, each as '[' or ']') nest more than ``max_depth`` deep.

    Each round deletes every innermost pair "[]", so a balanced text of depth d is gone after
    exactly d rounds: what survives ``max_depth`` rounds as a pair is nested deeper. Unbalanced
    text (invalid JSON) ends as "]]...[[" and counts as too deep only if its unclosed run is too
    long; otherwise the parser refuses it, never more than 2 * max_depth deep.
    """
    too_deep = b"[" * (max_depth + 1)
    for _ in range(max_depth):
        if too_deep in brackets:
            return True
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            break
        brackets = inner
    return too_deep in brackets or b"[]" in brackets


def _has_long_integer(outside: bytes, max_digits: int) -> bool:
    if b"0" * (max_digits + 1) not in outside.translate(_DIGITS):  # the common case: no long digit run at all
        return False
    return re.search(_INTEGER % (max_digits + 1), outside) is not None


def _too_large(what: str, size: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"{what} is too large: {size} bytes; at most {limit}")
