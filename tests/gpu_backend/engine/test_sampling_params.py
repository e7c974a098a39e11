"""SamplingParams: defaults, normalisation, and one rejection per out-of-range field."""

from __future__ import annotations

import math

import pytest

from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError


def test_defaults_are_valid_and_normalised() -> None:
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k, params.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (params.max_tokens, params.min_tokens, params.seed, params.logprobs) == (16, 0, None, None)
    assert params.stop == [] and params.stop_token_ids == []
    assert not params.is_greedy


def test_stop_string_becomes_a_list() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(5, 6)).stop_token_ids == [5, 6]


@pytest.mark.parametrize("temperature, greedy", [(0.0, True), (1e-6, True), (1e-5, False), (0.7, False)])
def test_is_greedy(temperature: float, greedy: bool) -> None:
    assert SamplingParams(temperature=temperature).is_greedy is greedy


def test_all_stop_token_ids_adds_eos_unless_ignored() -> None:
    assert SamplingParams(stop_token_ids=[7]).all_stop_token_ids([2, 3]) == frozenset({2, 3, 7})
    assert SamplingParams(stop_token_ids=[7], ignore_eos=True).all_stop_token_ids([2, 3]) == frozenset({7})
    assert SamplingParams().all_stop_token_ids() == frozenset()


def test_accepted_edges() -> None:
    SamplingParams(temperature=0, top_p=1, top_k=0, min_p=1.0, max_tokens=None, min_tokens=50)
    SamplingParams(top_k=1, frequency_penalty=-2, presence_penalty=2, logprobs=20, seed=-3)
    SamplingParams(max_tokens=4, min_tokens=4, logprobs=0, repetition_penalty=0.01)
    assert SamplingParams(logit_bias={7: -100, 3: 100}).logit_bias == {7: -100.0, 3: 100.0}
    assert SamplingParams(logit_bias={}).logit_bias is None


@pytest.mark.parametrize("kwargs, field, allowed", [
    ({"n": 2}, "n > 1 is not supported yet", ""),
    ({"n": 0}, "n must be 1", ""),
    ({"temperature": -0.1}, "temperature", ">= 0"),
    ({"temperature": math.nan}, "temperature", "finite"),
    ({"temperature": math.inf}, "temperature", "finite"),
    ({"temperature": "hot"}, "temperature", ">= 0"),
    ({"top_p": 0.0}, "top_p", "(0, 1]"),
    ({"top_p": 1.5}, "top_p", "(0, 1]"),
    ({"top_p": math.nan}, "top_p", "(0, 1]"),
    ({"top_k": -2}, "top_k", ">= 1"),
    ({"top_k": 2.5}, "top_k", ">= 1"),
    ({"min_p": -0.01}, "min_p", "[0, 1]"),
    ({"min_p": 1.01}, "min_p", "[0, 1]"),
    ({"max_tokens": 0}, "max_tokens", ">= 1"),
    ({"max_tokens": True}, "max_tokens", ">= 1"),
    ({"min_tokens": -1}, "min_tokens", ">= 0"),
    ({"max_tokens": 4, "min_tokens": 5}, "min_tokens", "max_tokens (4)"),
    ({"repetition_penalty": 0.0}, "repetition_penalty", "> 0"),
    ({"repetition_penalty": math.inf}, "repetition_penalty", "finite"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "[-2, 2]"),
    ({"presence_penalty": -2.01}, "presence_penalty", "[-2, 2]"),
    ({"presence_penalty": math.nan}, "presence_penalty", "[-2, 2]"),
    ({"logprobs": 21}, "logprobs", "[0, 20]"),
    ({"logprobs": -1}, "logprobs", "[0, 20]"),
    ({"seed": 1.5}, "seed", "integer"),
    ({"stop": ""}, "stop strings", "empty"),
    ({"stop": ["ok", ""]}, "stop strings", "empty"),
    ({"stop": 5}, "stop", "string"),
    ({"stop": [5]}, "stop", "string"),
    ({"stop_token_ids": [-1]}, "stop_token_ids", "non-negative"),
    ({"stop_token_ids": 3}, "stop_token_ids", "list"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias keys", ">= 0"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias keys", "token ids"),
    ({"logit_bias": {5: 100.5}}, "logit_bias values", "[-100, 100]"),
    ({"logit_bias": {5: math.nan}}, "logit_bias values", "[-100, 100]"),
    ({"logit_bias": {i: 1.0 for i in range(301)}}, "logit_bias", "at most 300"),
    ({"logit_bias": [(5, 1.0)]}, "logit_bias", "map"),
])
def test_rejects_out_of_range(kwargs: dict, field: str, allowed: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams(**kwargs)
    message = str(caught.value)
    assert field in message and allowed in message


def test_with_defaults_fills_max_tokens_and_attaches_eos() -> None:
    params = SamplingParams(max_tokens=None, stop="x", stop_token_ids=[7]).with_defaults(
        max_tokens=100, eos_token_ids=[2, 3])
    assert (params.max_tokens, params.eos_token_ids, params.stop) == (100, (2, 3), ["x"])
    assert params.all_stop_token_ids() == frozenset({2, 3, 7})
    assert params.is_stop_token(3) and params.is_stop_token(7) and params.is_stop_token(9, frozenset({9}))
    assert not params.is_stop_token(4)
    kept = SamplingParams(max_tokens=5, ignore_eos=True).with_defaults(max_tokens=100, eos_token_ids=[2])
    assert kept.max_tokens == 5 and not kept.is_stop_token(2) and kept.all_stop_token_ids([3]) == frozenset()
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(max_tokens=None, min_tokens=10).with_defaults(max_tokens=4)
