"""The WebSocket endpoint: JSON frames per piece of text, a done frame, errors that keep the socket open."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from backend_fixtures import MODEL, Backend, metric
from gpu_backend import LLM, SamplingParams

GREEDY = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 12}


def ws_url(backend: Backend) -> str:
    return backend.run_url().replace("http://", "ws://")


async def frames_until_done(socket: websockets.ClientConnection) -> list[dict]:
    frames = []
    while not frames or not frames[-1].get("done"):
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), 10)))
    return frames


async def test_frames_carry_the_greedy_text_then_usage(backend: Backend, offline: LLM) -> None:
    expected = offline.generate(GREEDY["prompt"], SamplingParams(temperature=0, max_tokens=12))[0].text
    async with websockets.connect(ws_url(backend), additional_headers=backend.headers()) as socket:
        for _ in range(2):  # one connection serves one generation after another
            await socket.send(json.dumps(GREEDY))
            frames = await frames_until_done(socket)
            assert all(set(frame) == {"response"} for frame in frames[:-1])
            assert frames[-1]["usage"]["completion_tokens"] == 12 and frames[-1]["response"] == ""
            assert "".join(frame["response"] for frame in frames) == expected


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(backend: Backend) -> None:
    async with websockets.connect(ws_url(backend), additional_headers=backend.headers()) as socket:
        await socket.send("{not json")
        (error,) = await frames_until_done(socket)
        assert error["error"]["code"] == 5006 and "JSON object" in error["error"]["message"]
        await socket.send(json.dumps({"prompt": "hi", "temperature": -1}))
        (error,) = await frames_until_done(socket)
        assert "'temperature' must be between 0 and 5" in error["error"]["message"]
        await socket.send(json.dumps({**GREEDY, "max_tokens": 200, "ignore_eos": True}))
        await socket.send(json.dumps(GREEDY))  # while the first runs
        frames = await frames_until_done(socket)
        busy = [frame for frame in frames if "error" in frame]
        assert busy and "one generation at a time" in busy[0]["error"]["message"]


async def test_unknown_model_and_missing_token(backend: Backend) -> None:
    url = ws_url(backend).replace(MODEL, "@cf/meta/nope")
    async with websockets.connect(url, additional_headers=backend.headers()) as socket:
        await socket.send(json.dumps(GREEDY))
        (error,) = await frames_until_done(socket)
        assert error["error"]["code"] == 5007
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(backend)):
            pass
    assert refused.value.response.status_code == 403


async def test_closing_the_socket_mid_stream_frees_the_kv_blocks(backend: Backend) -> None:
    aborted = metric(backend.url, "edgewise_requests_aborted_total")
    async with websockets.connect(ws_url(backend), additional_headers=backend.headers()) as socket:
        await socket.send(json.dumps({**GREEDY, "max_tokens": 230, "ignore_eos": True}))
        await asyncio.wait_for(socket.recv(), 10)
        assert backend.engines.stats()[MODEL]["kv_blocks_used"] > 0
    for _ in range(200):
        if backend.engines.stats()[MODEL]["kv_blocks_used"] == 0:
            break
        await asyncio.sleep(0.01)
    assert backend.engines.stats()[MODEL]["kv_blocks_used"] == 0
    assert backend.engines.stats()[MODEL]["num_running"] == 0
    assert metric(backend.url, "edgewise_requests_aborted_total") == aborted + 1
