"""OpenAI's newer inputs (logprobs, seed, n, reasoning_effort, max_completion_tokens, logit_bias) and
``usage.prompt_tokens_details.cached_tokens``, through the official ``openai`` SDK and Workers AI's REST route."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from backend_fixtures import MODEL, Backend
from gpu_backend import LLM, SamplingParams

MESSAGES = [{"role": "user", "content": "Hello"}]
LONG = [{"role": "user", "content": "Tell me about the sea. " * 12}]  # several full KV blocks of prompt


@pytest.fixture(scope="module")
def client(backend: Backend) -> openai.OpenAI:
    return backend.openai_client()


def test_chat_logprobs_match_the_engine(client: openai.OpenAI, offline: LLM) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=6,
                                                logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    expected = offline.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=6, logprobs=3))[0].outputs[0].logprobs
    assert len(content) == len(expected) == 6
    for item, want in zip(content, expected):
        assert math.isclose(item.logprob, want.logprob, abs_tol=1e-4)
        assert item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 3
        top = [alternative.logprob for alternative in item.top_logprobs]
        assert top == sorted(top, reverse=True) and math.isclose(top[0], max(want.top.values()), abs_tol=1e-4)
        assert item.logprob <= top[0] + 1e-6  # greedy: the sampled token is the most likely one
        assert math.isclose(item.logprob, top[0], abs_tol=1e-4)


def test_chat_without_logprobs_answers_null(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=3)
    assert completion.choices[0].logprobs is None


def test_streamed_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=6,
                                           logprobs=True, top_logprobs=2)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=6,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [item for chunk in stream for choice in chunk.choices if choice.logprobs is not None
                for item in choice.logprobs.content or []]
    assert [(item.token, round(item.logprob, 4)) for item in streamed] == \
        [(item.token, round(item.logprob, 4)) for item in whole.choices[0].logprobs.content]


def test_completions_legacy_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon", temperature=0, max_tokens=5, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert all(len(top) <= 2 and top for top in logprobs.top_logprobs)
    assert all(value <= 0 for value in logprobs.token_logprobs)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


def test_top_logprobs_out_of_range_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logprobs=True, top_logprobs=21)
    alone = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, top_logprobs=2)
    assert alone.choices[0].logprobs is None  # top_logprobs counts with logprobs: true only


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.5, max_tokens=12,
                                              seed=seed).choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_n_above_one_is_refused_naming_n(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'n' must be 1.*'n' is 2") as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, n=2)
    assert caught.value.body["param"] == "n"
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, n=1).choices


def test_cached_tokens_count_the_prefix_cache(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=2)
    again = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 16 <= cached < again.usage.prompt_tokens  # whole blocks of the repeated prompt


def test_streamed_usage_has_cached_tokens(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=2)
    stream = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=2, stream=True,
                                            stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens >= 16


def test_reasoning_effort_is_accepted(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4)
    effort = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4,
                                            reasoning_effort="high")
    assert effort.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                       extra_body={"reasoning_effort": "extreme"})


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0,
                                                max_completion_tokens=3)
    assert completion.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError, match="disagree"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, max_completion_tokens=3)


def test_logit_bias_bans_and_forces_tokens(client: openai.OpenAI, offline: LLM) -> None:
    def both(bias: dict[int, float] | None) -> tuple[str, list[int]]:
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4,
                                                logit_bias={str(k): v for k, v in (bias or {}).items()})
        output = offline.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=4, logit_bias=bias))[0].outputs[0]
        assert answer.choices[0].message.content == output.text  # the route passes the bias to the sampler
        return output.text, output.token_ids

    plain_text, plain_ids = both(None)
    banned_text, banned_ids = both({plain_ids[0]: -100})
    assert banned_ids[0] != plain_ids[0] and plain_ids[0] not in banned_ids
    forced = next(token_id for token_id in range(20, 200) if token_id not in plain_ids)
    assert both({forced: 100})[1] == [forced] * 4
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logit_bias={}).choices


@pytest.mark.parametrize(("bias", "match"), [
    ({"x": 1}, "token ids such as"), ({"5": 101}, "from -100 to 100"), ({"5": "1"}, "from -100 to 100"),
    ({"999999": 1}, "outside the model's vocabulary"), ({str(i): 1 for i in range(301)}, "at most 300"),
])
def test_bad_logit_bias_says_what_to_fix(client: openai.OpenAI, bias: dict, match: str) -> None:
    with pytest.raises(openai.BadRequestError, match=match):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logit_bias=bias)


def test_workers_ai_route_takes_the_same_inputs(backend: Backend) -> None:
    body = {"messages": MESSAGES, "max_completion_tokens": 3, "seed": 5, "reasoning_effort": "low", "n": 1}
    answer = httpx.post(backend.run_url(), json=body, headers=backend.headers(), timeout=30).json()
    assert answer["success"] and answer["result"]["usage"]["completion_tokens"] == 3
    refused = httpx.post(backend.run_url(), json={**body, "n": 3}, headers=backend.headers(), timeout=30)
    assert refused.status_code == 400 and "'n' is 3" in refused.text


def test_workers_ai_route_answers_logprobs(backend: Backend, client: openai.OpenAI) -> None:
    body = {"messages": MESSAGES, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    result = httpx.post(backend.run_url(), json=body, headers=backend.headers(), timeout=30).json()["result"]
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4,
                                          logprobs=True, top_logprobs=2)
    assert [item["token"] for item in result["logprobs"]["content"]] == \
        [item.token for item in chat.choices[0].logprobs.content]
    assert all(len(item["top_logprobs"]) == 2 for item in result["logprobs"]["content"])
    plain = httpx.post(backend.run_url(), json={"messages": MESSAGES, "max_tokens": 2}, headers=backend.headers(),
                       timeout=30).json()["result"]
    assert "logprobs" not in plain


def test_workers_ai_stream_carries_logprobs(backend: Backend) -> None:
    body = {"messages": MESSAGES, "max_tokens": 5, "temperature": 0, "logprobs": True, "stream": True}
    reply = httpx.post(backend.run_url(), json=body, headers=backend.headers(), timeout=30)
    events = [json.loads(line[len("data: "):]) for line in reply.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = [item["token"] for event in events for item in event["logprobs"]["content"]]
    whole = httpx.post(backend.run_url(), json={**body, "stream": False}, headers=backend.headers(),
                       timeout=30).json()["result"]
    assert streamed == [item["token"] for item in whole["logprobs"]["content"]] and len(streamed) == 5


def test_logprobs_under_a_grammar_are_json_numbers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4, logprobs=True, top_logprobs=20,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"enum": ["yes", "no"]}}})
    content = completion.choices[0].logprobs.content
    assert content and all(math.isfinite(item.logprob) for item in content)
    assert all(math.isfinite(top.logprob) for item in content for top in item.top_logprobs)
    assert any(len(item.top_logprobs) < 20 for item in content)  # the tokens the grammar masked are left out
