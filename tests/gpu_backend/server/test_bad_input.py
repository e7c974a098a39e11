"""Client mistakes over a real socket, on every route: a 400 whose message says what to fix (Workers AI's
envelope or OpenAI's error body, never internal text), and the keep-alive connection stays usable."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from backend_fixtures import EMBEDDINGS, MODEL, Backend

DEEP = "[" * 100_000  # a RecursionError for json.loads
HUGE_INT = "9" * 5000  # past Python's 4,300 digits
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2}
RUN = {"prompt": "Once upon a time", "raw": True, "max_tokens": 2}


def body(fields: dict, **raw: str) -> bytes:
    """``fields`` as JSON, with ``raw`` values spliced in as they are (JSON no encoder would write)."""
    text = json.dumps(fields)[:-1]
    return (text + "".join(f', "{name}": {value}' for name, value in raw.items()) + "}").encode()


OPENAI_MISTAKES = [
    ("/v1/chat/completions", body(CHAT, junk=DEEP), "nests arrays and objects more than 64 levels deep"),
    ("/v1/chat/completions", body(CHAT, seed=HUGE_INT), "integer literal of more than 20 digits"),
    ("/v1/chat/completions", body({**CHAT, "messages": [{"role": "user", "content": "a\ud800"}]}),
     "'messages[0].content' has a lone UTF-16 surrogate"),
    ("/v1/completions", body({**COMPLETION, "prompt": "\udfff"}), "'prompt' has a lone UTF-16 surrogate"),
    ("/v1/chat/completions", body({**CHAT, "stop": [""]}), "'stop[0]' is empty"),
    ("/v1/completions", body({**COMPLETION, "stop": ["x"] * 17}), "'stop' has 17 strings; send at most 16"),
    ("/v1/completions", body({**COMPLETION, "stop": ["x"] * 100_000}), "more than 65536 array elements"),
    ("/v1/completions", body({**COMPLETION, "stop": ["x" * 1000]}), "'stop[0]' has 1000 characters; at most 256"),
    ("/v1/chat/completions", body({**CHAT, "stream": True, "stream_options": "yes"}),
     "'stream_options' must be an object"),
    ("/v1/chat/completions", body({**CHAT, "stream": True, "stream_options": {"include_usage": 1}}),
     "'stream_options.include_usage' must be true or false"),
    ("/v1/chat/completions", body({**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}),
     "'messages' has 200000 characters of content; at most 131072"),
    ("/v1/chat/completions", body({**CHAT, "model": "\ud800"}), "'model' has characters no model name has"),
    ("/v1/embeddings", body({"model": EMBEDDINGS, "input": ["ok", "\ud800"]}), "'text[1]' has a lone UTF-16 surrogate"),
]
WORKERS_AI_MISTAKES = [
    (MODEL, body(RUN, junk=DEEP), "nests arrays and objects more than 64 levels deep"),
    (MODEL, body(RUN, seed=HUGE_INT), "integer literal of more than 20 digits"),
    (MODEL, body({**RUN, "prompt": "\ud800"}), "'prompt' has a lone UTF-16 surrogate"),
    (MODEL, body({"messages": [{"role": "user", "content": "x" * 5000}] * 1900}),  # 9.5 MB, not tokenized
     "'messages' has 9500000 characters of content; at most 131072"),
    (MODEL, body({"messages": [{"role": "user", "content": "x"}] * 3000}), "'messages' has 3000 messages"),
    (EMBEDDINGS, body({"text": "\udbff"}), "'text[0]' has a lone UTF-16 surrogate"),
    (MODEL, b"[" * (10 * 1024 * 1024), "levels deep"),
]


def local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


@pytest.fixture()
def one_connection(backend: Backend) -> httpx.Client:
    with httpx.Client(headers=backend.headers(), limits=httpx.Limits(max_connections=1), timeout=60) as client:
        yield client


def test_openai_mistakes_are_400_and_the_connection_stays_usable(backend: Backend, one_connection: httpx.Client) -> None:
    good = one_connection.post(f"{backend.url}/v1/chat/completions", json=CHAT)
    assert good.status_code == 200
    for path, content, message in OPENAI_MISTAKES:
        reply = one_connection.post(backend.url + path, content=content)
        assert reply.status_code == 400, (path, message, reply.text[:300])
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == 5006 and message in error["message"]
        assert reply.headers.get("connection") != "close" and local_port(reply) == local_port(good)
    again = one_connection.post(f"{backend.url}/v1/chat/completions", json={**CHAT, "stream": True,
                                                                            "stream_options": {"include_usage": True}})
    assert again.status_code == 200 and '"usage"' in again.text and local_port(again) == local_port(good)
    assert backend.engines.stats()[MODEL]["num_running"] == 0


def test_workers_ai_mistakes_are_400_and_the_connection_stays_usable(backend: Backend,
                                                                      one_connection: httpx.Client) -> None:
    good = one_connection.post(backend.run_url(), json=RUN)
    assert good.status_code == 200
    for model, content, message in WORKERS_AI_MISTAKES:
        reply = one_connection.post(backend.run_url(model), content=content)
        assert reply.status_code == 400, (message, reply.text[:300])
        error = reply.json()
        assert error["success"] is False and error["errors"][0]["code"] == 5006
        assert message in error["errors"][0]["message"] and "Traceback" not in reply.text
        assert local_port(reply) == local_port(good)
    assert one_connection.post(backend.run_url(), json=RUN).status_code == 200


def test_a_body_over_the_cap_is_413(backend: Backend, one_connection: httpx.Client) -> None:
    reply = one_connection.post(backend.run_url(), content=b" " * (10 * 1024 * 1024 + 1))
    assert reply.status_code == 413 and reply.json()["errors"][0]["code"] == 3006


async def test_each_bad_websocket_frame_gets_one_error_frame_and_the_socket_stays_open(backend: Backend) -> None:
    url = backend.run_url().replace("http://", "ws://")
    async with websockets.connect(url, additional_headers=backend.headers(), max_size=None) as socket:
        for frame, code, message in [
            ('{"prompt": ' + DEEP, 5006, "each frame nests arrays and objects more than 64 levels deep"),
            (body(RUN, seed=HUGE_INT).decode(), 5006, "integer literal of more than 20 digits"),
            (json.dumps({"prompt": "\ud800"}), 5006, "'prompt' has a lone UTF-16 surrogate"),
            ('"' + "x" * (10 * 1024 * 1024) + '"', 3006, "Frame is too large"),
        ]:
            await socket.send(frame)
            reply = json.loads(await asyncio.wait_for(socket.recv(), 30))
            assert reply["done"] is True and reply["error"]["code"] == code and message in reply["error"]["message"]
        await socket.send(json.dumps(RUN))
        frames = [json.loads(await asyncio.wait_for(socket.recv(), 30))]
        while not frames[-1].get("done"):
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), 30)))
        assert "error" not in frames[-1] and frames[-1]["usage"]["completion_tokens"] == 2
