"""LocalEngines: the service's view of the engines, against LLM on the same checkpoint."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_backend import LLM
from gpu_backend.server.client import LocalEngines, TextDelta
from gpu_backend.server.errors import InputTooLongError, NoSuchModelError
from gpu_backend.server.schemas import parse_text_generation

MODEL = "@cf/test/llama"
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 40, "max_model_len": 256}


@pytest.fixture(scope="module")
def engines(checkpoints: dict[str, Path]) -> Iterator[LocalEngines]:
    client = LocalEngines({MODEL: checkpoints["llama"]}, **OPTIONS)
    yield client
    client.shutdown()


@pytest.fixture(scope="module")
def offline(checkpoints: dict[str, Path]) -> LLM:
    return LLM(str(checkpoints["llama"]), progress=False, **OPTIONS)


async def collect(engines: LocalEngines, body: dict, request_id: str = "r") -> list[TextDelta]:
    request = parse_text_generation(body, MODEL)
    return [delta async for delta in engines.generate(MODEL, request, request_id)]


async def test_raw_prompt_streams_what_llm_generates(engines: LocalEngines, offline: LLM) -> None:
    body = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 12}
    deltas = await collect(engines, body)
    expected = offline.generate("Once upon a time", parse_text_generation(body, MODEL).sampling)[0]
    assert [t for d in deltas for t in d.token_ids] == expected.token_ids
    assert "".join(d.text for d in deltas) == expected.text
    assert deltas[-1].finish_reason == expected.finish_reason and all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].prompt_tokens == len(expected.prompt_token_ids)
    assert deltas[-1].completion_tokens == len(expected.token_ids)


async def test_messages_and_plain_prompts_go_through_the_chat_template(engines: LocalEngines, offline: LLM) -> None:
    params = {"temperature": 0, "max_tokens": 8}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    chat = await collect(engines, {"messages": messages, **params})
    expected = offline.chat(messages, parse_text_generation({"prompt": "x", **params}, MODEL).sampling)[0]
    assert [t for d in chat for t in d.token_ids] == expected.token_ids
    prompt = await collect(engines, {"prompt": "Hello", **params})
    as_user = offline.chat([{"role": "user", "content": "Hello"}],
                           parse_text_generation({"prompt": "x", **params}, MODEL).sampling)[0]
    assert [t for d in prompt for t in d.token_ids] == as_user.token_ids


async def test_unknown_model_and_engine_errors_are_service_errors(engines: LocalEngines) -> None:
    request = parse_text_generation({"prompt": "hi"}, MODEL)
    with pytest.raises(NoSuchModelError, match=f"No such model @cf/nope or task .*{MODEL}"):
        async for _ in engines.generate("@cf/nope", request, "a"):
            pass
    with pytest.raises(InputTooLongError, match="max_model_len"):
        await collect(engines, {"prompt": "word " * 400, "raw": True})


async def test_leaving_the_stream_early_frees_the_blocks(engines: LocalEngines) -> None:
    request = parse_text_generation({"prompt": "a b c", "raw": True, "max_tokens": 200, "temperature": 0}, MODEL)
    stream = engines.generate(MODEL, request, "early")
    await anext(stream)
    await stream.aclose()
    for _ in range(100):
        if engines.stats()[MODEL]["kv_blocks_used"] == 0:
            break
        await asyncio.sleep(0.02)
    assert engines.stats()[MODEL] | {"kv_blocks_free": 0} == {
        "num_running": 0, "num_waiting": 0, "kv_blocks_used": 0, "kv_blocks_free": 0, "num_preemptions": 0}


async def test_prompts_are_rendered_and_tokenized_off_the_event_loop_and_the_engine_thread(
        engines: LocalEngines, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt takes seconds to encode: neither the event loop nor the engine's thread may do it."""
    tokenizer = engines.engine(MODEL).tokenizer
    encode, threads = tokenizer.encode, []

    def encode_noting_the_thread(text: str, *args: object, **kwargs: object) -> list[int]:
        threads.append(threading.current_thread().name)
        return encode(text, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", encode_noting_the_thread)
    raw = await collect(engines, {"prompt": "Hello there", "raw": True, "max_tokens": 2, "temperature": 0})
    chat = await collect(engines, {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2,
                                   "temperature": 0})
    assert raw[-1].prompt_tokens == len(encode("Hello there")) and chat[-1].finish_reason is not None
    assert len(threads) == 2 and all(name.startswith("edgewise-prompt") for name in threads), threads
