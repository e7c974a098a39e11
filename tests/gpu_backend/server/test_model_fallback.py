"""Unmapped Workers AI names: the task rules, and a backend serving the built-ins that answers them
(REST, OpenAI and WebSocket routes), names the model that answered, logs each name once, and answers
5007 for other tasks, names outside @cf/ and @hf/, and every unmapped name under strict_models."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import websockets

from backend_fixtures import OPTIONS, TOKEN, serving
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines
from gpu_backend.server.errors import NoSuchModelError
from gpu_backend.server.model_fallback import ModelFallback, task_of

TINY = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
MAPPED = "@cf/me/mapped-tiny"  # a name mapped to the built-in's folder: it answers as itself
LLAMA = "@cf/meta/llama-3.3-70b-instruct-fp8-fast"
GPT_OSS = "@cf/openai/gpt-oss-120b"
BGE = "@cf/baai/bge-base-en-v1.5"
FLUX = "@cf/black-forest-labs/flux-1-schnell"
HEADERS = {"authorization": f"Bearer {TOKEN}"}
GREEDY = {"temperature": 0, "max_tokens": 6}


# ---- the rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "task"), [
    (LLAMA, "Text Generation"), (GPT_OSS, "Text Generation"), ("@cf/qwen/qwq-32b", "Text Generation"),
    ("@hf/nousresearch/hermes-2-pro-mistral-7b", "Text Generation"), ("@cf/google/gemma-3-12b-it", "Text Generation"),
    ("@cf/deepseek-ai/deepseek-r1-distill-qwen-32b", "Text Generation"), ("@cf/microsoft/phi-2", "Text Generation"),
    ("@cf/ibm-granite/granite-4.0-h-micro", "Text Generation"), ("@cf/moonshotai/kimi-k2-instruct", "Text Generation"),
    (BGE, "Text Embeddings"), ("@cf/baai/bge-m3", "Text Embeddings"), ("@cf/google/embeddinggemma-300m", "Text Embeddings"),
    ("@cf/intfloat/multilingual-e5-large", "Text Embeddings"), ("@cf/thenlper/gte-base", "Text Embeddings"),
    ("@cf/baai/bge-reranker-base", "Text Classification"), ("@cf/openai/whisper-large-v3-turbo", "Automatic Speech Recognition"),
    (FLUX, "Text-to-Image"), ("@cf/stabilityai/stable-diffusion-xl-base-1.0", "Text-to-Image"),
    ("@cf/myshell-ai/melotts", "Text-to-Speech"), ("@cf/meta/m2m100-1.2b", "Translation"),
    ("@cf/llava-hf/llava-1.5-7b-hf", "Image-to-Text"), ("@cf/unum/uform-gen2-qwen-500m", "Image-to-Text"),
    ("@cf/meta/nope", None), ("meta/llama-3-8b", None), ("@xx/meta/llama-3-8b", None), ("llama", None),
])  # fmt: skip
def test_the_task_comes_from_the_name(name: str, task: str | None) -> None:
    assert task_of(name) == task


def test_a_served_name_is_itself_and_an_unmapped_one_its_tasks_builtin() -> None:
    fallback = ModelFallback()
    served = [TINY, MINILM, MAPPED]
    assert fallback.resolve(MAPPED, served) == MAPPED
    assert fallback.resolve(LLAMA, served) == TINY and fallback.resolve(BGE, served) == MINILM


@pytest.mark.parametrize(("name", "strict", "served", "message"), [
    (FLUX, False, [TINY], f"No such model {FLUX} or task: edgewise has no local model for Text-to-Image .*"
                          r"\[edgewise.models\].* \(this backend serves: @cf/edgewise/tiny-shakespeare\)$"),
    ("meta/llama-3-8b", False, [TINY], r"^No such model meta/llama-3-8b or task \(this backend serves"),
    ("@cf/meta/nope", False, [TINY], r"^No such model @cf/meta/nope or task \(this backend serves"),
    (LLAMA, True, [TINY], "it is not mapped and strict_models is on"),
    (BGE, False, [TINY], f"does not serve the built-in {MINILM} that would answer it"),
])
def test_names_without_a_model_are_5007_saying_why(name: str, strict: bool, served: list[str], message: str) -> None:
    with pytest.raises(NoSuchModelError, match=message) as caught:
        ModelFallback(strict=strict).resolve(name, served)
    assert caught.value.code == 5007


# ---- a backend serving the built-ins ------------------------------------------------------------

@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engines = LocalEngines({TINY: builtin_model_path(TINY), MINILM: builtin_model_path(MINILM),
                            MAPPED: builtin_model_path(TINY)}, **OPTIONS)
    try:
        with serving(create_app(engines, TOKEN, max_queue=8)) as served:
            yield served
    finally:
        engines.shutdown()


def run(url: str, model: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/client/v4/accounts/a/ai/run/{model}", json=body, headers=HEADERS, timeout=60)


def test_an_unmapped_text_model_is_answered_by_the_builtin(url: str) -> None:
    body = {"prompt": "ROMEO:", **GREEDY}
    builtin, unmapped = run(url, TINY, body), run(url, LLAMA, body)
    assert unmapped.status_code == 200, unmapped.text
    assert unmapped.json()["result"] == builtin.json()["result"] and builtin.json()["result"]["response"]
    assert unmapped.headers["x-edgewise-model"] == TINY == builtin.headers["x-edgewise-model"]
    assert run(url, MAPPED, body).headers["x-edgewise-model"] == MAPPED  # a mapped name answers as itself


def test_an_unmapped_embeddings_model_is_answered_by_the_builtin_minilm(url: str) -> None:
    body = {"text": ["a cat", "stocks fell"]}
    builtin, unmapped = run(url, MINILM, body), run(url, BGE, body)
    assert unmapped.status_code == 200, unmapped.text
    assert unmapped.json()["result"]["shape"] == [2, 384]
    assert unmapped.json()["result"]["data"] == builtin.json()["result"]["data"]
    assert unmapped.headers["x-edgewise-model"] == MINILM


def test_openai_routes_echo_the_name_asked_and_name_the_builtin_in_the_header(url: str) -> None:
    chat = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS, timeout=60,
                      json={"model": GPT_OSS, "messages": [{"role": "user", "content": "Hi"}], **GREEDY})
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == GPT_OSS and chat.headers["x-edgewise-model"] == TINY
    embedded = httpx.post(f"{url}/client/v4/accounts/a/ai/v1/embeddings", headers=HEADERS, json={"model": BGE, "input": "a cat"}, timeout=60)
    assert embedded.status_code == 200, embedded.text
    assert embedded.json()["model"] == BGE and embedded.headers["x-edgewise-model"] == MINILM


def test_responses_style_input_on_a_gpt_oss_name(url: str) -> None:
    body = {"instructions": "Answer in verse.", "input": "What is love?", **GREEDY}
    reply = run(url, GPT_OSS, body)
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    assert (result["object"], result["model"]) == ("response", GPT_OSS)
    message = result["output"][0]
    assert (message["type"], message["role"]) == ("message", "assistant")
    as_messages = run(url, TINY, {"messages": [{"role": "system", "content": "Answer in verse."},
                                               {"role": "user", "content": "What is love?"}], **GREEDY})
    assert message["content"][0] == {"type": "output_text", "text": as_messages.json()["result"]["response"],
                                     "annotations": [], "logprobs": []}  # OpenAI's part: logprobs only when asked
    assert result["usage"]["output_tokens"] == as_messages.json()["result"]["usage"]["completion_tokens"]
    listed = run(url, GPT_OSS, {"input": [{"role": "user", "content": "What is love?"}], **GREEDY}).json()["result"]
    assert listed["output"][0]["content"][0]["text"]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_each_unmapped_name_is_logged_once(url: str) -> None:
    logger, handler = logging.getLogger("edgewise.backend"), _Lines()
    logger.addHandler(handler)  # on the logger itself: wherever the CLI's logging setup left propagation
    try:
        name = "@cf/mistral/mistral-7b-instruct-v0.1-logged"
        for _ in range(3):
            assert run(url, name, {"prompt": "Hi", "max_tokens": 1}).status_code == 200
    finally:
        logger.removeHandler(handler)
    assert [line for line in handler.lines if name in line] == [
        f"{name} is not mapped: serving it with the built-in {TINY} (map it under [edgewise.models] to use a real "
        f"checkpoint)"]


def test_other_tasks_and_unknown_names_stay_5007(url: str) -> None:
    image = run(url, FLUX, {"prompt": "a cat"})
    assert image.status_code == 400 and "x-edgewise-model" not in image.headers
    error = image.json()["errors"][0]
    assert error["code"] == 5007 and "edgewise has no local model for Text-to-Image" in error["message"]
    assert "[edgewise.models]" in error["message"]
    unknown = run(url, "meta/llama-3-8b", {"prompt": "Hi"}).json()["errors"][0]
    assert unknown["code"] == 5007 and unknown["message"].startswith("No such model meta/llama-3-8b or task (")
    openai = httpx.post(f"{url}/v1/chat/completions", headers=HEADERS,
                        json={"model": FLUX, "messages": [{"role": "user", "content": "Hi"}]})
    assert openai.status_code == 404 and "Text-to-Image" in openai.json()["error"]["message"]


async def test_the_websocket_route_answers_an_unmapped_name_too(url: str) -> None:
    socket_url = f"{url.replace('http://', 'ws://')}/client/v4/accounts/a/ai/run/{LLAMA}"
    async with websockets.connect(socket_url, additional_headers=HEADERS) as socket:
        await socket.send(json.dumps({"prompt": "ROMEO:", **GREEDY}))
        frames: list[dict] = []
        while not frames or not frames[-1].get("done"):
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), 60)))
    assert "error" not in frames[-1] and frames[-1]["usage"]["completion_tokens"] == GREEDY["max_tokens"]


def test_strict_models_brings_back_5007() -> None:
    engines = LocalEngines({TINY: builtin_model_path(TINY)}, strict_models=True, **OPTIONS)
    try:
        with serving(create_app(engines, TOKEN, max_queue=8)) as strict_url:
            refused = run(strict_url, LLAMA, {"prompt": "Hi"})
            served = run(strict_url, TINY, {"prompt": "Hi", "max_tokens": 1})
    finally:
        engines.shutdown()
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == 5007
    assert "strict_models is on" in refused.json()["errors"][0]["message"]
    assert served.status_code == 200 and served.headers["x-edgewise-model"] == TINY
