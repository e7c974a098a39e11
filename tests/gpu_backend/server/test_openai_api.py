"""The OpenAI-compatible routes, driven by the official ``openai`` SDK unchanged, at /v1 and under /ai/v1."""

from __future__ import annotations

import httpx
import openai
import pytest

from backend_fixtures import EMBEDDINGS, MODEL, Backend
from gpu_backend import LLM, SamplingParams

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module", params=["/v1", "/client/v4/accounts/acct/ai/v1"])
def client(backend: Backend, request: pytest.FixtureRequest) -> openai.OpenAI:
    return backend.openai_client(request.param)


def greedy_chat(offline: LLM, max_tokens: int) -> str:
    return offline.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=max_tokens))[0].text


def test_chat_completion_equals_llm_chat(client: openai.OpenAI, offline: LLM) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10)
    assert completion.object == "chat.completion" and completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == greedy_chat(offline, 10)
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 10


def test_streamed_chat_equals_the_whole_one(client: openai.OpenAI, offline: LLM) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=10,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_chat(offline, 10)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_text_completion_continues_the_raw_prompt(client: openai.OpenAI, offline: LLM) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=8,
                                           stop=None)
    expected = offline.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=8))[0].text
    assert completion.choices[0].text == expected
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=8,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_stop_strings_end_the_completion(client: openai.OpenAI, offline: LLM) -> None:
    full = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=12).choices[0]
    stop = full.text[3:5]
    cut = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=12,
                                    stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]


def test_embeddings_base64_and_float_agree_with_workers_ai(client: openai.OpenAI, backend: Backend) -> None:
    default = client.embeddings.create(model=EMBEDDINGS, input=["a cat", "a dog"])  # the SDK asks for base64
    floats = client.embeddings.create(model=EMBEDDINGS, input="a cat", encoding_format="float")
    workers_ai = httpx.post(backend.run_url(EMBEDDINGS), json={"text": ["a cat"]}, headers=backend.headers()).json()
    assert len(default.data) == 2 and len(default.data[0].embedding) == 384
    assert default.data[0].embedding == pytest.approx(workers_ai["result"]["data"][0], abs=1e-6)
    assert floats.data[0].embedding == pytest.approx(workers_ai["result"]["data"][0], abs=1e-6)
    assert default.usage.prompt_tokens > 0


def test_models_lists_every_model(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL, EMBEDDINGS]


def test_errors_have_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="@cf/meta/nope", messages=MESSAGES)
    assert missing.value.body["type"] == "invalid_request_error" and "No such model" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.completions.create(model=MODEL, prompt="word " * 400)
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="nope", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        bad.models.list()
    assert denied.value.body["type"] == "authentication_error"


def test_ignore_eos_reaches_the_engine(backend: Backend) -> None:
    """vLLM's extra parameter: a completion may ask to run past eos (checked, so a bad value is a 400)."""
    url = f"{backend.url}/v1/completions"
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 4, "temperature": 0}
    good = httpx.post(url, json={**body, "ignore_eos": True}, headers=backend.headers())
    bad = httpx.post(url, json={**body, "ignore_eos": "yes"}, headers=backend.headers())
    assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] == 4
    assert bad.status_code == 400 and "ignore_eos" in bad.json()["error"]["message"]
