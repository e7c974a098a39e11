"""Serving: on CPU an overloaded backend answers 429 at once instead of queueing for tens of seconds; clients
too slow to send their headers or body get 408 (Workers AI's 3007) and a closed connection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend_fixtures import MODEL, OPTIONS, TOKEN, Backend, serving
from gpu_backend import config as config_module
from gpu_backend.server.api import DEFAULT_MAX_QUEUE, create_app
from gpu_backend.server.background import local_backend
from gpu_backend.server.read_timeouts import ReadTimeouts
from gpu_backend.server.serve import default_max_queue
from slow_clients import dribble, request_head

NUM_CLIENTS = 40
HOLD = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 200, "ignore_eos": True}


def test_the_queue_defaults_to_one_batch_on_cpu_and_256_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_cpus", lambda: 2)
    assert default_max_queue("cpu") == 8
    assert default_max_queue("cuda") == DEFAULT_MAX_QUEUE == 256


async def test_cpu_defaults_refuse_the_overload_at_once(checkpoints: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One core: 4 run, 4 wait, and the other clients get 429 + Retry-After within seconds."""
    monkeypatch.setattr(config_module, "available_cpus", lambda: 1)
    options = {key: value for key, value in OPTIONS.items() if key != "max_num_seqs"}
    with local_backend({MODEL: checkpoints["llama"]}, **options) as (url, token):
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60,
                                     limits=httpx.Limits(max_connections=NUM_CLIENTS)) as client:

            async def ask() -> tuple[int, float, str | None]:
                started = time.monotonic()
                reply = await client.post(f"{url}/client/v4/accounts/a/ai/run/{MODEL}", json=HOLD)
                return reply.status_code, time.monotonic() - started, reply.headers.get("retry-after")

            answers = await asyncio.gather(*(ask() for _ in range(NUM_CLIENTS)))
    refused = [answer for answer in answers if answer[0] == 429]
    assert {status for status, _, _ in answers} <= {200, 429}
    assert len(refused) >= NUM_CLIENTS - 2 * 8, "at most 4 running + 4 queued at a time (and a few after them)"
    assert all(retry_after == "1" for _, _, retry_after in refused)
    assert max(elapsed for _, elapsed, _ in refused) < 10.0


@pytest.fixture(scope="module")
def impatient(backend: Backend) -> Iterator[Backend]:
    """The test backend's engines behind a second app whose server waits 0.5 s for headers and for a body."""
    with serving(create_app(backend.engines, TOKEN, max_queue=8), read_timeouts=ReadTimeouts(0.5, 0.5)) as url:
        yield Backend(url, backend.engines)


def _port(backend: Backend) -> int:
    return int(backend.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("path", [f"/client/v4/accounts/a/ai/run/{MODEL}", "/v1/chat/completions"])
async def test_a_body_too_slow_gets_408_with_the_error_body_of_its_route(impatient: Backend, path: str) -> None:
    head = request_head("POST", path, f"authorization: Bearer {TOKEN}", "content-type: application/json", length=200)
    answer = await dribble(_port(impatient), head, b" " * 200)
    assert answer.status == 408 and b"connection: close" in answer.data.lower()
    body = json.loads(answer.data.split(b"\r\n\r\n", 1)[1])
    if path.startswith("/v1/"):
        assert body["error"]["type"] == "timeout" and body["error"]["code"] == 3007
    else:
        assert body["success"] is False and body["errors"][0]["code"] == 3007
    assert "did not arrive within 0.5 s" in json.dumps(body)


async def test_slow_headers_are_cut_off_and_the_backend_serves_on(impatient: Backend) -> None:
    answer = await dribble(_port(impatient), b"", request_head("GET", "/healthz", "x-padding: " + "a" * 100))
    assert answer.status == 408
    async with httpx.AsyncClient(headers=impatient.headers(), timeout=30) as client:
        stream = {"prompt": "Once upon a time", "raw": True, "max_tokens": 40, "ignore_eos": True, "stream": True}
        async with client.stream("POST", impatient.run_url(), json=stream) as reply:
            events = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert reply.status_code == 200 and events[-1] == "data: [DONE]"
