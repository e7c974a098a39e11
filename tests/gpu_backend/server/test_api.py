"""Service behaviour across routes: client disconnects free KV blocks at once, the bounded queue, /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend_fixtures import MODEL, OPTIONS, TOKEN, Backend, metric, serving
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines

LONG = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 230, "ignore_eos": True}


def wait_for_free_blocks(backend: Backend, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while backend.engines.stats()[MODEL]["kv_blocks_used"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.engines.stats()[MODEL] | {"kv_blocks_free": 0} == {
        "num_running": 0, "num_waiting": 0, "kv_blocks_used": 0, "kv_blocks_free": 0, "num_preemptions": 0}


def test_a_stream_whose_client_leaves_is_aborted_and_frees_its_blocks(backend: Backend) -> None:
    aborted = metric(backend.url, "edgewise_requests_aborted_total")
    with httpx.stream("POST", backend.run_url(), json={**LONG, "stream": True}, headers=backend.headers()) as reply:
        chunks = reply.iter_raw()
        assert next(chunks).startswith(b"data: ")
        assert backend.engines.stats()[MODEL]["kv_blocks_used"] > 0  # still generating when the client leaves
    wait_for_free_blocks(backend)
    assert metric(backend.url, "edgewise_requests_aborted_total") == aborted + 1
    assert metric(backend.url, "edgewise_kv_blocks_used") == 0


def test_a_waiting_non_streaming_client_that_leaves_is_aborted(backend: Backend) -> None:
    aborted = metric(backend.url, "edgewise_requests_aborted_total")
    host, port = backend.url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(f"POST /client/v4/accounts/a/ai/run/{MODEL} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                    f"{TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 5
        while not backend.engines.stats()[MODEL]["kv_blocks_used"] and time.monotonic() < deadline:
            time.sleep(0.002)
    wait_for_free_blocks(backend)
    assert metric(backend.url, "edgewise_requests_aborted_total") == aborted + 1


def test_metrics_count_requests_tokens_and_latency(backend: Backend) -> None:
    before = metric(backend.url, "edgewise_generation_tokens_total")
    ttft = metric(backend.url, "edgewise_time_to_first_token_seconds_count")
    reply = httpx.post(backend.run_url(), json={**LONG, "max_tokens": 5}, headers=backend.headers())
    assert reply.status_code == 200
    assert metric(backend.url, "edgewise_generation_tokens_total") == before + 5
    assert metric(backend.url, "edgewise_time_to_first_token_seconds_count") == ttft + 1
    text = httpx.get(f"{backend.url}/metrics", headers=backend.headers()).text
    for name in ("edgewise_inter_token_latency_seconds_bucket", "edgewise_queue_depth", "edgewise_kv_blocks_free",
                 "edgewise_requests_running", 'edgewise_requests_total{model="@cf/test/llama",route="workers-ai",'
                 'status="200"}'):
        assert name in text


@pytest.fixture(scope="module")
def single_seat(checkpoints: dict[str, Path]) -> Iterator[Backend]:
    """A model that runs one request at a time and queues none."""
    options = {**OPTIONS, "max_num_seqs": 1, "max_model_len": 4096, "num_kv_blocks": 300}
    engines = LocalEngines({MODEL: checkpoints["llama"]}, **options)
    try:
        with serving(create_app(engines, TOKEN, max_queue=0)) as url:
            yield Backend(url, engines)
    finally:
        engines.shutdown()


async def test_past_the_queue_requests_get_429_with_retry_after(single_seat: Backend) -> None:
    async with httpx.AsyncClient(headers=single_seat.headers(), timeout=10) as client:
        hold = {**LONG, "max_tokens": 4000, "stream": True}  # still running while the others arrive
        async with client.stream("POST", single_seat.run_url(), json=hold) as holding:
            chunks = holding.aiter_raw()  # kept: a collected iterator would close the stream
            await anext(chunks)
            refused = await client.post(single_seat.run_url(), json={"prompt": "hi"})
            openai = await client.post(f"{single_seat.url}/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["errors"][0]["code"] == 3040
        assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
        assert metric(single_seat.url, "edgewise_requests_rejected_total") == 2
        for _ in range(100):  # the seat frees once the stream was aborted
            if single_seat.engines.stats()[MODEL]["num_running"] == 0:
                break
            await asyncio.sleep(0.02)
        again = await client.post(single_seat.run_url(), json={"prompt": "hi", "max_tokens": 2})
        assert again.status_code == 200


async def test_an_engine_that_stops_fails_its_streams_and_health(checkpoints: dict[str, Path]) -> None:
    engines = LocalEngines({MODEL: checkpoints["llama"]}, **OPTIONS)
    try:
        with serving(create_app(engines, TOKEN)) as url:
            backend = Backend(url, engines)
            async with httpx.AsyncClient(headers=backend.headers(), timeout=10) as client:
                hold = {**LONG, "max_tokens": 200, "stream": True}
                async with client.stream("POST", backend.run_url(), json=hold) as reply:
                    chunks = reply.aiter_raw()
                    await anext(chunks)
                    engines.engine(MODEL).shutdown()  # the engine stops under a running stream
                    rest = b"".join([chunk async for chunk in chunks]).decode()
                health = await client.get(f"{url}/healthz")
                refused = await client.post(backend.run_url(), json={"prompt": "hi"})
        last = rest.strip().split("\n\n")[-1]
        assert last.startswith("data: {\"error\"") and "[DONE]" not in rest  # cut, and says so
        assert json.loads(last.removeprefix("data: "))["error"]["code"] == 3043
        assert health.status_code == 503 and MODEL in health.json()["failed"]
        assert refused.status_code == 500 and refused.json()["errors"][0]["code"] == 3043
    finally:
        engines.shutdown()
