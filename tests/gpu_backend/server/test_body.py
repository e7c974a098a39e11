"""Request bodies: hostile JSON (deep, huge integers, millions of values, broken text) is refused with a
BadInputError that says what to fix, quickly and without the parser recursing or raising anything else."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from gpu_backend.server.body import nests_deeper, parse_frame, parse_json
from gpu_backend.server.errors import BadInputError, RequestTooLargeError
from gpu_backend.server.limits import InputLimits

TEN_MB = 10 * 1024 * 1024


def refusal(raw: bytes, limits: InputLimits = InputLimits()) -> str:
    with pytest.raises(BadInputError) as caught:
        parse_json(raw, limits)
    assert caught.value.status == 400 and caught.value.code == 5006
    return caught.value.detail


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def random_json(rng: random.Random, budget: int) -> Any:
    kind = rng.randrange(6 if budget > 0 else 3)
    if kind == 0:
        return rng.choice(["", "[", "]{", '"\\', "x]]"])  # brackets and quotes inside strings count for nothing
    if kind in (1, 2):
        return rng.choice([0, -7, 1.5e-3, True, None])
    if kind in (3, 4):
        return [random_json(rng, budget - 1) for _ in range(rng.randrange(3))]
    return {f"k{i}": random_json(rng, budget - 1) for i in range(rng.randrange(3))}


def test_a_ten_megabyte_run_of_brackets_is_refused_fast_without_recursing() -> None:
    for raw in (b"[" * TEN_MB, b'{"a":' * (TEN_MB // 5), b"[" * (TEN_MB // 2) + b"]" * (TEN_MB // 2)):
        started = time.perf_counter()
        detail = refusal(raw)
        assert "levels deep" in detail or "array elements and object members" in detail
        assert time.perf_counter() - started < 5  # about 0.1 s; json.loads alone would raise RecursionError


def test_depth_is_exact_at_the_cap() -> None:
    limits = InputLimits(max_json_depth=8)
    assert parse_json(b"[" * 8 + b"]" * 8, limits) == [[[[[[[[]]]]]]]]
    assert "more than 8 levels deep" in refusal(b"[" * 9 + b"]" * 9, limits)
    assert "more than 8 levels deep" in refusal(b'{"a": ' * 9 + b"1" + b"}" * 9, limits)
    assert parse_json(json.dumps({"prompt": "[" * 1000 + "\\\"{" * 100}).encode(), limits)["prompt"].startswith("[[")


def test_nesting_check_agrees_with_the_parsed_depth() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        value = random_json(rng, rng.randrange(8))
        for max_depth in range(1, 8):
            assert nests_deeper(brackets_of(value), max_depth) == (depth(value) > max_depth), (value, max_depth)
    assert parse_json(json.dumps([value] * 3).encode()) == [value] * 3


def brackets_of(value: Any) -> bytes:
    """``value``'s arrays and objects as the brackets nests_deeper reads: '[' and ']' only."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return b"" if children is None else b"[" + b"".join(map(brackets_of, children)) + b"]"


def test_random_small_texts_parse_exactly_as_json_loads_does() -> None:
    rng = random.Random(1)
    alphabet = b'[]{}",:\\0123456789 -.eEtrufalsn'
    for _ in range(20000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        try:
            expected = json.loads(raw)
        except ValueError:
            expected = "refused"
        try:
            got = parse_json(raw)
        except BadInputError:
            got = "refused"
        assert got == expected, raw


def test_integer_literals_are_capped_but_long_floats_are_not() -> None:
    assert "integer literal of more than 20 digits" in refusal(b'{"seed": ' + b"9" * 5000 + b"}")
    assert "more than 20 digits" in refusal(b"[-" + b"1" * 21 + b"]")
    assert parse_json(b"[" + b"9" * 20 + b", -" + b"9" * 20 + b"]") == [int("9" * 20), -int("9" * 20)]
    assert parse_json(b"[1." + b"5" * 5000 + b", 1e-" + b"0" * 5000 + b"1, " + b"2" * 30 + b".0]")[2] == 2.2222222222222222e29
    assert parse_json(json.dumps({"text": "1" * 5000}).encode()) == {"text": "1" * 5000}


def test_the_number_of_values_is_capped() -> None:
    limits = InputLimits(max_json_items=1000)
    assert len(parse_json(b"[" + b"1," * 999 + b"1]", limits)) == 1000
    assert "more than 1000 array elements" in refusal(b"[" + b"1," * 1000 + b"1]", limits)
    assert "more than 1000 array elements" in refusal(b"[" + b"[]," * 1000 + b"[]]", limits)
    assert "more than 1000 array elements" in refusal(b'"' * 5000, limits)
    started = time.perf_counter()
    assert "array elements" in refusal(b"[" + b"[]," * (TEN_MB // 3 - 1) + b"[]]")
    assert time.perf_counter() - started < 5  # about 0.2 s; parsing all 3.5 million lists takes seconds


def test_broken_text_is_a_bad_input() -> None:
    assert "is empty" in refusal(b"  \n")
    assert "not valid utf-8 (byte 7)" in refusal(b'{"a": "\xff"}')
    assert "not valid JSON" in refusal(b'{"a": 1,}')
    started = time.perf_counter()
    assert "Unterminated string" in refusal(b'"' + b'\\"' * (TEN_MB // 2 - 1))
    assert time.perf_counter() - started < 5
    assert parse_json('{"prompt": "h\u00e9"}'.encode("utf-16")) == {"prompt": "h\u00e9"}
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert parse_json(b'{"a": "\\ud800"}') == {"a": "\ud800"}  # the schemas refuse it, naming the field


def test_frames_are_capped_and_parsed_like_bodies() -> None:
    assert parse_frame('{"prompt": "hi"}') == {"prompt": "hi"}
    with pytest.raises(RequestTooLargeError, match="Frame is too large: 101 bytes; at most 100"):
        parse_frame('"' + "x" * 99 + '"', InputLimits(max_frame_bytes=100))
    with pytest.raises(BadInputError, match="each frame nests arrays and objects more than 64 levels deep"):
        parse_frame("[" * 100000)
